//! enforcer: an inline L7 network policy enforcer.
//!
//! Layers depend downward only:
//! shells (`dataplane`, `replay`) → `engine` → `stream` → `policy` / `l7` / `packet`.
//! Nothing below the shells performs I/O or reads a clock: time is passed in.

pub mod engine;
pub mod l7;
pub mod log;
pub mod packet;
pub mod policy;
pub mod stream;

pub mod dataplane;
pub mod hostmode;
pub mod replay;
