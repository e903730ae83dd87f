//! The greeter library: rebuilt and reloaded while the host runs.

use greeter_api::{Greeter, GreeterContext};
use verdant_loadable::{AttachError, Loadable};

/// The text that tells which build answered; the test builds a second
/// edition with `GREETER_EDITION` set (cargo rebuilds when it changes).
const EDITION: &str = match option_env!("GREETER_EDITION") {
    Some(edition) => edition,
    None => "edition 1",
};

/// The greeter.
pub struct GreeterV1 {
    greeting: String,
}

impl Greeter for GreeterV1 {
    fn greet(&self, who: &str) -> String {
        format!("{}, {who}! ({EDITION})", self.greeting)
    }

    fn router(&self) -> axum::Router {
        let greeting = self.greet("web");
        axum::Router::new().route("/hello", axum::routing::get(move || async move { greeting }))
    }
}

impl Loadable for GreeterV1 {
    type Context = GreeterContext;
    type Interface = dyn Greeter;

    fn attach(ctx: &GreeterContext) -> Result<Self, AttachError> {
        Ok(GreeterV1 { greeting: ctx.greeting.clone() })
    }
}

verdant_loadable::export!(GreeterV1);
