//! A trait object the library makes carries a vtable into library code that
//! no guard covers: `#[verdant_loadable::interface]` refuses it anywhere in a
//! return type, and says what to return instead.

#[verdant_loadable::interface]
pub trait BoxedError: Send + Sync {
    fn load(&self) -> Result<u32, Box<dyn std::error::Error + Send + Sync>>;
}

#[verdant_loadable::interface]
pub trait BoxedFuture: Send + Sync {
    fn later(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = u32> + Send>>;
}

#[verdant_loadable::interface]
pub trait BoxedClosure: Send + Sync {
    fn callback(&self) -> Option<Box<dyn Fn(u32) -> u32 + Send>>;
}

#[verdant_loadable::interface]
pub trait BoxedIterator: Send + Sync {
    async fn items(&self) -> Box<dyn Iterator<Item = u32> + Send>;
}

fn main() {}
