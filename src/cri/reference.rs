//! The CRI's name for the one image reference parser, `crate::images::reference` (where
//! server-side pulls use it too).

pub use crate::images::reference::*;
