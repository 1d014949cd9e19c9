//! A borrowed reading of one Ethernet frame: offsets and the few header fields
//! the engine needs. Parse once per frame; everything else reads `FrameMeta`.

use std::net::IpAddr;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMeta {
    pub seq: u32,
    pub ack: u32,
    /// FIN|SYN|RST|PSH|ACK|URG|ECE|CWR as in the header's low byte.
    pub flags: u8,
    pub window: u16,
    /// TCP header length in bytes (options included).
    pub header_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Meta {
    Tcp(TcpMeta),
    Udp,
    /// ICMP / ICMPv6 type and code; `id` is the echo identifier (0 for others).
    Icmp {
        kind: u8,
        code: u8,
        id: u16,
    },
    Other,
}

/// Where things are in the frame, and the fields the engine decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Offset of the IP header (after Ethernet and any VLAN tags).
    pub l3_off: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// Payload (after the L4 header) as `payload_off..payload_end`; IP padding excluded.
    pub payload_off: usize,
    pub payload_end: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4Meta,
    /// Some when this is an IP fragment (the engine reassembles or drops it).
    pub fragment: Option<FragmentMeta>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentMeta {
    pub id: u32,
    /// Offset in bytes of this fragment's data in the original datagram.
    pub offset: u32,
    pub more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4/IPv6 (ARP, ND is IPv6 so it is not here, LLDP, ...).
    NotIp { ethertype: u16 },
    /// Too short, bad lengths, bad version, ...
    Malformed(&'static str),
}

impl FrameMeta {
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.payload_off..self.payload_end]
    }

    pub fn tcp(&self) -> Option<&TcpMeta> {
        match &self.l4 {
            L4Meta::Tcp(t) => Some(t),
            _ => None,
        }
    }
}

/// Read an Ethernet frame. Never panics, whatever the bytes.
pub fn parse(frame: &[u8]) -> Result<FrameMeta, ParseError> {
    let _ = frame;
    todo!("packet::view::parse")
}
