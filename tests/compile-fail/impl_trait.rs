//! `impl Trait` cannot be returned through a trait object, and would hide
//! library code: refused, wherever it appears in the return type.

#[verdant_loadable::interface]
pub trait ImplFuture: Send + Sync {
    fn later(&self) -> impl std::future::Future<Output = u32> + Send;
}

#[verdant_loadable::interface]
pub trait NestedImpl: Send + Sync {
    fn items(&self) -> Vec<impl Iterator<Item = u32>>;
}

fn main() {}
