//! Runtime domain types and traits (no I/O). The v2 shim manager is in [`v2`].

pub mod v2;
