//! Fixture: a well-behaved library built with a different tokio feature set
//! than the host; the host must refuse it at the Check step.
fixture_api::fixture_loadable!(version: 21);
