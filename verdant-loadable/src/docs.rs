//! Long-form documentation: what crosses the `dlopen` boundary and what
//! breaks there (with the measurements), and how to embed Verdant in a
//! service. The same text is in `docs/` at the root of the repository.

#[doc = include_str!("../../docs/boundary.md")]
pub mod boundary {}

#[doc = include_str!("../../docs/embedding.md")]
pub mod embedding {}
