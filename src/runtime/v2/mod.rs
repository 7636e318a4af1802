//! The runtime v2 shim manager.
