//! A router crosses only as the whole return type of a plain `fn`, where
//! Verdant wraps it.

#[verdant_loadable::interface]
pub trait MaybeRouter: Send + Sync {
    fn router(&self) -> Option<axum::Router>;
}

#[verdant_loadable::interface]
pub trait AsyncRouter: Send + Sync {
    async fn router(&self) -> axum::Router;
}

fn main() {}
