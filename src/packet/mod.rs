//! Packets: `view` reads a received frame without copying (etherparse);
//! `build` makes the frames the enforcer sends itself and rewrites TCP
//! headers in place, checksums included.

pub mod build;
pub mod view;

pub use view::{parse, FrameMeta, L4Meta, ParseError, TcpMeta};
