//! Code of this crate that runs **in the host**: the support of the proxies
//! `#[interface]` generates (how a caught panic reaches the caller, how a
//! library router is served), and the tables of host functions a library
//! forwards its allocations and logs to. It never calls library code except
//! through the guards of `crate::library`.

pub(crate) mod deliver;
pub(crate) mod hold;
pub(crate) mod middleware;
pub(crate) mod router;
pub(crate) mod tables;
