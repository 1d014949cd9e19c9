//! Host mode (`--iface` alone): the enforcer protects this host's own
//! addresses. Inbound IP frames for them are steered to AF_XDP by our XDP
//! program; what the engine forwards re-enters the kernel through a TAP
//! device the enforcer owns (or a veth pair whose far end has AF_XDP
//! sockets, `veth.rs`); the host's own traffic from those addresses is
//! policy-routed into the same TAP, so both directions of every flow pass
//! the engine, then leave on `--iface` with the flow's MAC addresses.

pub mod bpfobj;
pub mod ethtool;
pub mod l2;
pub mod routes;
pub mod rtnl;
pub mod steer;
pub mod tap;
pub mod unresolved;
pub mod veth;
