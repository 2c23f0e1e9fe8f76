//! Runnable examples of embedding kproxy; see `examples/README.md`.
