//! Types that box a trait object under a name the macro knows: futures and
//! streams of the `futures` crate, and `anyhow`'s and `eyre`'s errors. (The
//! macro refuses them before any name is resolved, so these crates need not
//! be dependencies.)

#[verdant_loadable::interface]
pub trait NamedFuture: Send + Sync {
    fn later(&self) -> futures::future::BoxFuture<'static, u32>;
}

#[verdant_loadable::interface]
pub trait NamedLocalFuture: Send + Sync {
    fn later(&self) -> LocalBoxFuture<'static, u32>;
}

#[verdant_loadable::interface]
pub trait NamedStream: Send + Sync {
    fn items(&self) -> BoxStream<'static, u32>;
}

#[verdant_loadable::interface]
pub trait AnyhowError: Send + Sync {
    fn load(&self) -> anyhow::Result<u32>;
}

#[verdant_loadable::interface]
pub trait EyreError: Send + Sync {
    async fn load(&self) -> Result<u32, eyre::Report>;
}

fn main() {}
