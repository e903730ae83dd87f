//! What `#[verdant_loadable::interface]` refuses at compile time: return
//! types that would hand the host library code no guard covers (trait
//! objects, `impl Trait`, boxed futures and streams, boxed errors, function
//! pointers, borrows) and routers anywhere but as the whole return type.
//! Each case in `compile-fail/` has its expected compiler output beside it
//! (`*.stderr`); the error must say what to return instead.
//!
//! trybuild compiles the cases as binaries depending on this package's
//! dependencies, with its own target directory (`target/tests/trybuild`).
//! After changing a message, regenerate the expected output with
//! `TRYBUILD=overwrite cargo nextest run -p verdant-tests -E 'binary(compile_fail)'`
//! and review the diff.

#[test]
fn unguarded_return_types_are_refused() {
    // Relative to this package's directory, where test binaries run.
    trybuild::TestCases::new().compile_fail("compile-fail/*.rs");
}
