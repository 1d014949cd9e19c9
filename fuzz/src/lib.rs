//! Helpers shared by the fuzz targets (and, through `#[path]`, by the smoke
//! tests of the normal suite).

pub mod policy_input;
pub mod scenario;
