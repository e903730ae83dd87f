//! A borrow returned by the library may point into its memory, which is
//! unmapped when its version is unloaded; `'static` there means as long as
//! the library. Refused with any lifetime, and raw pointers with them.

#[verdant_loadable::interface]
pub trait Borrowed: Send + Sync {
    fn name(&self) -> &str;
}

#[verdant_loadable::interface]
pub trait StaticBorrow: Send + Sync {
    fn table(&self) -> Result<&'static [u8], std::io::Error>;
}

#[verdant_loadable::interface]
pub trait BorrowInside: Send + Sync {
    fn label(&self) -> std::borrow::Cow<'static, str>;
}

#[verdant_loadable::interface]
pub trait RawPointer: Send + Sync {
    fn buffer(&self) -> *const u8;
}

fn main() {}
