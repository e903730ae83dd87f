//! A function pointer made by the library points into library code: calling
//! it runs no guard, and it dangles once the library is unloaded.

#[verdant_loadable::interface]
pub trait Pointer: Send + Sync {
    fn handler(&self) -> fn(u32) -> u32;
}

#[verdant_loadable::interface]
pub trait NestedPointer: Send + Sync {
    async fn handler(&self) -> Option<fn(&str)>;
}

fn main() {}
