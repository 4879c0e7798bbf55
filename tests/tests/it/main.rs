//! End-to-end tests (placeholder until the suite lands).
fn main() {}
