//! Frame and capture builders for tests (also compiled into the engine's unit
//! tests). Frames are built with etherparse's `PacketBuilder`; fragments and
//! ICMP errors are cut from whole frames so their bytes stay consistent.
#![allow(dead_code)]
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use etherparse::PacketBuilder;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// One side of a conversation.
#[derive(Debug, Clone, Copy)]
pub struct Ep {
    pub ip: IpAddr,
    pub port: u16,
}

pub fn ep(addr: &str, port: u16) -> Ep {
    Ep { ip: ip(addr), port }
}

/// A stable MAC per address keeps captures readable.
pub fn mac(a: IpAddr) -> [u8; 6] {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            [0x02, 0x04, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(v) => {
            let o = v.octets();
            [0x02, 0x06, o[12], o[13], o[14], o[15]]
        }
    }
}

fn ip_step(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    ip_step_ttl(src, dst, 64)
}

fn ip_step_ttl(
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(mac(src), mac(dst));
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), ttl),
        _ => panic!("mixed address families"),
    }
}

/// A TCP segment with the given flags (SYN, ACK, ...).
pub fn tcp(src: Ep, dst: Ep, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_frame(
        src.ip, dst.ip, src.port, dst.port, seq, ack, flags, 64, 0, payload,
    )
}

/// A TCP segment with every field the evasion and fuzz scenarios vary: any
/// flag combination (URG, ECE, CWR too), the TTL/hop limit and the urgent
/// pointer.
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    ttl: u8,
    urgent: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = ip_step_ttl(src, dst, ttl).tcp(sport, dport, seq, 64240);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(ack);
    }
    if flags & FIN != 0 {
        b = b.fin();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    if flags & PSH != 0 {
        b = b.psh();
    }
    if flags & URG != 0 {
        b = b.urg(urgent);
    }
    if flags & ECE != 0 {
        b = b.ece();
    }
    if flags & CWR != 0 {
        b = b.cwr();
    }
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("tcp frame");
    v
}

pub fn udp(src: Ep, dst: Ep, payload: &[u8]) -> Vec<u8> {
    let b = ip_step(src.ip, dst.ip).udp(src.port, dst.port);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("udp frame");
    v
}

/// ICMP (v4 or v6 by address family) echo request or reply.
pub fn echo(src: &str, dst: &str, id: u16, seq: u16, request: bool, payload: &[u8]) -> Vec<u8> {
    let (s, d) = (ip(src), ip(dst));
    let step = ip_step(s, d);
    let mut v = Vec::new();
    let r = match (s, request) {
        (IpAddr::V4(_), true) => step.icmpv4_echo_request(id, seq).write(&mut v, payload),
        (IpAddr::V4(_), false) => step.icmpv4_echo_reply(id, seq).write(&mut v, payload),
        (IpAddr::V6(_), true) => step.icmpv6_echo_request(id, seq).write(&mut v, payload),
        (IpAddr::V6(_), false) => step.icmpv6_echo_reply(id, seq).write(&mut v, payload),
    };
    r.expect("icmp frame");
    v
}

/// ICMP destination unreachable (port unreachable) from `from` to `to`,
/// quoting the IP datagram of `quoted` (an Ethernet frame), cut to 28 bytes
/// of IPv4 or 48 of IPv6 as routers do.
pub fn unreachable(from: &str, to: &str, quoted: &[u8]) -> Vec<u8> {
    let (s, d) = (ip(from), ip(to));
    let step = ip_step(s, d);
    let cut = if s.is_ipv4() { 28 } else { 48 };
    let inner = &quoted[14..(14 + cut).min(quoted.len())];
    let mut v = Vec::new();
    let r = match s {
        IpAddr::V4(_) => step.icmpv4_raw(3, 3, [0; 4]).write(&mut v, inner),
        IpAddr::V6(_) => step.icmpv6_raw(1, 4, [0; 4]).write(&mut v, inner),
    };
    r.expect("icmp error frame");
    v
}

/// An ICMPv6 message with raw type/code (neighbour solicitation = 135).
pub fn icmpv6_raw(src: &str, dst: &str, kind: u8, code: u8) -> Vec<u8> {
    let b = ip_step(ip(src), ip(dst)).icmpv6_raw(kind, code, [0; 4]);
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 20]).expect("icmpv6 frame");
    v
}

/// A gratuitous ARP request frame.
pub fn arp() -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&[0x08, 0x06]);
    v.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&[10, 66, 0, 11]);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&[10, 66, 0, 11]);
    v
}

/// Insert a VLAN tag (TPID `tpid`) after the MACs of a frame.
pub fn vlan_tag(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut v = frame[..12].to_vec();
    v.extend_from_slice(&tpid.to_be_bytes());
    v.extend_from_slice(&vid.to_be_bytes());
    v.extend_from_slice(&frame[12..]);
    v
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Cut a whole (unfragmented, option-less) IPv4 or IPv6 frame into fragments
/// covering the given byte ranges of its IP payload. Ranges may overlap or
/// leave gaps: the "more fragments" flag is set unless a range ends at the
/// payload's end.
pub fn fragments(frame: &[u8], id: u32, ranges: &[(usize, usize)]) -> Vec<Vec<u8>> {
    let eth = &frame[..14];
    match frame[14] >> 4 {
        4 => {
            let hdr = &frame[14..34];
            let payload = &frame[34..];
            ranges
                .iter()
                .map(|&(s, e)| {
                    let more = e < payload.len();
                    let mut h = hdr.to_vec();
                    let total = (20 + e - s) as u16;
                    h[2..4].copy_from_slice(&total.to_be_bytes());
                    h[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                    let ff = (if more { 0x2000 } else { 0 }) | (s / 8) as u16;
                    h[6..8].copy_from_slice(&ff.to_be_bytes());
                    h[10..12].copy_from_slice(&[0, 0]);
                    let c = ipv4_checksum(&h);
                    h[10..12].copy_from_slice(&c.to_be_bytes());
                    let mut v = eth.to_vec();
                    v.extend_from_slice(&h);
                    v.extend_from_slice(&payload[s..e]);
                    v
                })
                .collect()
        }
        6 => {
            let hdr = &frame[14..54];
            let next = hdr[6];
            let payload = &frame[54..];
            ranges
                .iter()
                .map(|&(s, e)| {
                    let more = e < payload.len();
                    let mut h = hdr.to_vec();
                    h[4..6].copy_from_slice(&((8 + e - s) as u16).to_be_bytes());
                    h[6] = 44;
                    let mut v = eth.to_vec();
                    v.extend_from_slice(&h);
                    let off = ((s / 8) as u16) << 3 | u16::from(more);
                    v.extend_from_slice(&[next, 0]);
                    v.extend_from_slice(&off.to_be_bytes());
                    v.extend_from_slice(&id.to_be_bytes());
                    v.extend_from_slice(&payload[s..e]);
                    v
                })
                .collect()
        }
        _ => panic!("not an IP frame"),
    }
}

/// Cut a frame's IP payload into `chunk`-byte fragments (chunk % 8 == 0).
pub fn fragment_evenly(frame: &[u8], id: u32, chunk: usize) -> Vec<Vec<u8>> {
    let hlen = if frame[14] >> 4 == 4 { 20 } else { 40 };
    let plen = frame.len() - 14 - hlen;
    let ranges: Vec<_> = (0..plen)
        .step_by(chunk)
        .map(|s| (s, (s + chunk).min(plen)))
        .collect();
    fragments(frame, id, &ranges)
}

/// A frame in a capture: time in ns, and the side (the pcapng interface).
#[derive(Debug, Clone)]
pub struct Rec {
    pub ts_ns: u64,
    pub side: u8,
    pub frame: Vec<u8>,
}

pub fn rec(ts_ns: u64, side: u8, frame: Vec<u8>) -> Rec {
    Rec { ts_ns, side, frame }
}

/// Write an Ethernet pcap (nanosecond timestamps); sides are not recorded.
pub fn write_pcap(path: &Path, recs: &[Rec]) {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let f = std::fs::File::create(path).expect("create pcap");
    let header = PcapHeader {
        ts_resolution: pcap_file::TsResolution::NanoSecond,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(f, header).expect("pcap header");
    for r in recs {
        let p = PcapPacket::new(
            Duration::from_nanos(r.ts_ns),
            r.frame.len() as u32,
            &r.frame,
        );
        w.write_packet(&p).expect("pcap packet");
    }
}

/// Write a pcapng with two Ethernet interfaces; `Rec::side` is the interface id.
pub fn write_pcapng(path: &Path, recs: &[Rec]) {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::{
        InterfaceDescriptionBlock, InterfaceDescriptionOption,
    };
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::DataLink;
    let f = std::fs::File::create(path).expect("create pcapng");
    let mut w = PcapNgWriter::new(f).expect("pcapng header");
    for _ in 0..2 {
        let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, 65535);
        // Timestamps below are nanoseconds (the default unit is microseconds).
        idb.options.push(InterfaceDescriptionOption::IfTsResol(9));
        w.write_pcapng_block(idb).expect("idb");
    }
    for r in recs {
        let b = EnhancedPacketBlock {
            interface_id: u32::from(r.side),
            timestamp: Duration::from_nanos(r.ts_ns),
            original_len: r.frame.len() as u32,
            data: std::borrow::Cow::Borrowed(&r.frame),
            options: vec![],
        };
        w.write_pcapng_block(b).expect("epb");
    }
}

/// Frames of a pcap file, in order.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let f = std::fs::File::open(path).expect("open pcap");
    let mut r = pcap_file::pcap::PcapReader::new(f).expect("pcap header");
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.expect("pcap packet").data.into_owned());
    }
    out
}

/// A memcached binary request (magic 0x80).
pub fn bin_req(opcode: u8, opaque: u32, key: &[u8], extras: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, opcode];
    v.extend_from_slice(&(key.len() as u16).to_be_bytes());
    v.push(extras.len() as u8);
    v.extend_from_slice(&[0, 0, 0]);
    v.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    v.extend_from_slice(&opaque.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(extras);
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v
}

/// A memcached binary response (magic 0x81).
pub fn bin_resp(opcode: u8, opaque: u32, status: u16, extras: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x81, opcode, 0, 0, extras.len() as u8, 0];
    v.extend_from_slice(&status.to_be_bytes());
    v.extend_from_slice(&((extras.len() + value.len()) as u32).to_be_bytes());
    v.extend_from_slice(&opaque.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(extras);
    v.extend_from_slice(value);
    v
}
