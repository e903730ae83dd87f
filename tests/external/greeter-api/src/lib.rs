//! The interface between the greeter host and the greeter library.

/// What the greeter library offers the host.
#[verdant_loadable::interface]
pub trait Greeter: Send + Sync {
    /// A greeting for `who`.
    fn greet(&self, who: &str) -> String;
    /// The greeter's own routes, served by the host under `/greeter/`.
    fn router(&self) -> axum::Router;
}

/// What the host hands every attach hook.
pub struct GreeterContext {
    /// The word to greet with.
    pub greeting: String,
}
