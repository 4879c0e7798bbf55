//! `examples/embed.rs` runs in the test suite: the same file, compiled in here as a module,
//! so the test does not depend on cargo having built the example binary first (it does for
//! `cargo test --workspace`, not for `cargo test --test embed`).

#[path = "../examples/embed.rs"]
mod embed;

/// What the README's "Embedded" section promises, end to end: the example ends with every
/// message acknowledged, or fails.
#[test]
fn the_embedding_example_ends_with_every_message_acknowledged() {
    if let Err(e) = embed::main() {
        panic!("examples/embed.rs failed: {e}");
    }
}
