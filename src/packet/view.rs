//! A borrowed reading of one Ethernet frame: offsets and the few header fields
//! the engine needs. Parse once per frame; everything else reads `FrameMeta`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;
/// QinQ is two tags; anything deeper is not something we forward blindly.
const MAX_VLAN_TAGS: usize = 2;
/// Enough for every legitimate chain (RFC 8200 order has at most ~6).
const MAX_V6_EXT_HEADERS: usize = 8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Read an Ethernet frame. Never panics, whatever the bytes.
///
/// For an IP fragment, `l4` is `Other`, ports are 0, `l4_off..payload_end`
/// is the fragment's data, and `fragment` says where it goes: the engine
/// learns the L4 header by reassembling (`parse_l4` on the datagram).
/// An IPv6 "atomic" fragment (offset 0, no more fragments) is read as a whole
/// datagram (RFC 6946).
#[inline(always)]
pub fn parse(frame: &[u8]) -> Result<FrameMeta, ParseError> {
    match parse_fast(frame) {
        Some(m) => Ok(m),
        None => parse_general(frame),
    }
}

#[inline(always)]
fn be16(f: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([f[i], f[i + 1]])
}

#[inline(always)]
fn be32(f: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]])
}

/// Nearly every frame on the wire: untagged Ethernet, IPv4 without options
/// and not fragmented (or IPv6 with no extension header), carrying TCP or
/// UDP. Read at fixed offsets, this costs a few loads and compares where the
/// general path walks header slices. It gives exactly what `parse_general`
/// gives for such a frame (a property test holds them to it) and None for
/// anything else, errors included, which the general path then reads and
/// reports: the fast path may only ever decline, never decide differently.
#[inline(always)]
pub fn parse_fast(f: &[u8]) -> Option<FrameMeta> {
    const V4_L4: usize = ETH_HEADER_LEN + 20;
    const V6_L4: usize = ETH_HEADER_LEN + 40;
    if f.len() < V4_L4 + 8 {
        return None;
    }
    let (l4_off, end, src, dst, proto) = match be16(f, 12) {
        ETHERTYPE_IPV4 if f[14] == 0x45 => {
            let total = usize::from(be16(f, 16));
            // MF and fragment offset: fragments take the general path.
            if be16(f, 20) & 0x3fff != 0 || total < 20 || ETH_HEADER_LEN + total > f.len() {
                return None;
            }
            // Whole-word loads and stores: the engine reads these back at
            // once, and a value assembled byte by byte stalls that read.
            (
                V4_L4,
                ETH_HEADER_LEN + total,
                IpAddr::V4(Ipv4Addr::from_bits(be32(f, 26))),
                IpAddr::V4(Ipv4Addr::from_bits(be32(f, 30))),
                f[23],
            )
        }
        ETHERTYPE_IPV6 if f[14] >> 4 == 6 && f.len() >= V6_L4 + 8 => {
            let end = V6_L4 + usize::from(be16(f, 18));
            if end > f.len() {
                return None;
            }
            let a = u128::from_be_bytes(f[22..38].try_into().ok()?);
            let b = u128::from_be_bytes(f[38..54].try_into().ok()?);
            (
                V6_L4,
                end,
                IpAddr::V6(Ipv6Addr::from_bits(a)),
                IpAddr::V6(Ipv6Addr::from_bits(b)),
                f[20],
            )
        }
        _ => return None,
    };
    let data = end.checked_sub(l4_off)?;
    let (l4, header_len, l4_end) = match proto {
        IPPROTO_TCP if data >= 20 => {
            let header_len = usize::from((f[l4_off + 12] & 0xf0) >> 2);
            if header_len < 20 || header_len > data {
                return None;
            }
            let t = TcpMeta {
                seq: be32(f, l4_off + 4),
                ack: be32(f, l4_off + 8),
                flags: f[l4_off + 13],
                window: be16(f, l4_off + 14),
                header_len,
            };
            (L4Meta::Tcp(t), header_len, end)
        }
        IPPROTO_UDP if data >= 8 => {
            let len = usize::from(be16(f, l4_off + 4));
            if len < 8 || len > data {
                return None;
            }
            (L4Meta::Udp, 8, l4_off + len)
        }
        _ => return None,
    };
    Some(FrameMeta {
        l3_off: ETH_HEADER_LEN,
        l4_off,
        payload_off: l4_off + header_len,
        payload_end: l4_end,
        src,
        dst,
        proto,
        sport: be16(f, l4_off),
        dport: be16(f, l4_off + 2),
        l4,
        fragment: None,
    })
}

/// Every frame `parse_fast` declines: VLAN tags, IPv4 options, IPv6
/// extension headers, fragments, ICMP, other protocols, and every error.
fn parse_general(frame: &[u8]) -> Result<FrameMeta, ParseError> {
    let eth = etherparse::Ethernet2HeaderSlice::from_slice(frame)
        .map_err(|_| ParseError::Malformed("short ethernet header"))?;
    let mut ethertype = eth.ether_type().0;
    let mut off = ETH_HEADER_LEN;
    let mut tags = 0;
    while matches!(
        ethertype,
        ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD
    ) {
        if tags == MAX_VLAN_TAGS {
            return Err(ParseError::Malformed("too many vlan tags"));
        }
        let rest = frame.get(off..).unwrap_or_default();
        let vlan = etherparse::SingleVlanHeaderSlice::from_slice(rest)
            .map_err(|_| ParseError::Malformed("short vlan tag"))?;
        ethertype = vlan.ether_type().0;
        off += vlan.slice().len();
        tags += 1;
    }
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(frame, off),
        ETHERTYPE_IPV6 => parse_ipv6(frame, off),
        other => Err(ParseError::NotIp { ethertype: other }),
    }
}

/// IP layer of a frame or an ICMP error's quoted datagram.
struct IpPart {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Offset of the upper-layer data.
    l4_off: usize,
    /// End of the IP datagram (total length), never beyond the buffer.
    end: usize,
    fragment: Option<FragmentMeta>,
}

fn ipv4_part(buf: &[u8], l3: usize, truncated_ok: bool) -> Result<IpPart, ParseError> {
    let rest = buf.get(l3..).unwrap_or_default();
    let ip = etherparse::Ipv4HeaderSlice::from_slice(rest)
        .map_err(|_| ParseError::Malformed("bad ipv4 header"))?;
    let hlen = ip.slice().len();
    let total = usize::from(ip.total_len());
    if total < hlen {
        return Err(ParseError::Malformed(
            "ipv4 total length below header length",
        ));
    }
    let end = if total > rest.len() {
        if !truncated_ok {
            return Err(ParseError::Malformed("ipv4 total length beyond frame"));
        }
        buf.len()
    } else {
        l3 + total
    };
    let frag_off = u32::from(ip.fragments_offset().value()) * 8;
    let fragment = (ip.more_fragments() || frag_off != 0).then(|| FragmentMeta {
        id: u32::from(ip.identification()),
        offset: frag_off,
        more: ip.more_fragments(),
    });
    Ok(IpPart {
        src: IpAddr::from(ip.source()),
        dst: IpAddr::from(ip.destination()),
        proto: ip.protocol().0,
        l4_off: l3 + hlen,
        end,
        fragment,
    })
}

fn ipv6_part(buf: &[u8], l3: usize, truncated_ok: bool) -> Result<IpPart, ParseError> {
    let rest = buf.get(l3..).unwrap_or_default();
    let ip = etherparse::Ipv6HeaderSlice::from_slice(rest)
        .map_err(|_| ParseError::Malformed("bad ipv6 header"))?;
    let plen = usize::from(ip.payload_length());
    let hlen = ip.slice().len();
    if plen == 0 && ip.next_header().0 == 0 {
        // Jumbograms need a hop-by-hop option we do not support.
        return Err(ParseError::Malformed("ipv6 jumbogram"));
    }
    let end = if hlen + plen > rest.len() {
        if !truncated_ok {
            return Err(ParseError::Malformed("ipv6 payload length beyond frame"));
        }
        buf.len()
    } else {
        l3 + hlen + plen
    };
    let mut next = ip.next_header().0;
    let mut off = l3 + hlen;
    let mut fragment = None;
    for _ in 0..MAX_V6_EXT_HEADERS {
        let ext = buf.get(off..end).unwrap_or_default();
        match next {
            // hop-by-hop, routing, destination options
            0 | 43 | 60 => {
                let h = etherparse::Ipv6RawExtHeaderSlice::from_slice(ext)
                    .map_err(|_| ParseError::Malformed("bad ipv6 extension header"))?;
                next = h.next_header().0;
                off += h.slice().len();
            }
            44 => {
                let h = etherparse::Ipv6FragmentHeaderSlice::from_slice(ext)
                    .map_err(|_| ParseError::Malformed("bad ipv6 fragment header"))?;
                next = h.next_header().0;
                off += h.slice().len();
                if fragment.is_some() {
                    return Err(ParseError::Malformed("two ipv6 fragment headers"));
                }
                let offset = u32::from(h.fragment_offset().value()) * 8;
                if h.more_fragments() || offset != 0 {
                    fragment = Some(FragmentMeta {
                        id: h.identification(),
                        offset,
                        more: h.more_fragments(),
                    });
                    // The rest is fragment data, not headers.
                    break;
                }
            }
            51 => {
                let h = etherparse::IpAuthHeaderSlice::from_slice(ext)
                    .map_err(|_| ParseError::Malformed("bad ipv6 authentication header"))?;
                next = h.next_header().0;
                off += h.slice().len();
            }
            _ => {
                return Ok(IpPart {
                    src: IpAddr::from(ip.source()),
                    dst: IpAddr::from(ip.destination()),
                    proto: next,
                    l4_off: off,
                    end,
                    fragment,
                })
            }
        }
    }
    if fragment.is_some() {
        return Ok(IpPart {
            src: IpAddr::from(ip.source()),
            dst: IpAddr::from(ip.destination()),
            proto: next,
            l4_off: off,
            end,
            fragment,
        });
    }
    Err(ParseError::Malformed("too many ipv6 extension headers"))
}

fn parse_ipv4(frame: &[u8], l3: usize) -> Result<FrameMeta, ParseError> {
    finish(frame, l3, ipv4_part(frame, l3, false)?)
}

fn parse_ipv6(frame: &[u8], l3: usize) -> Result<FrameMeta, ParseError> {
    finish(frame, l3, ipv6_part(frame, l3, false)?)
}

fn finish(frame: &[u8], l3: usize, ip: IpPart) -> Result<FrameMeta, ParseError> {
    let mut meta = FrameMeta {
        l3_off: l3,
        l4_off: ip.l4_off,
        payload_off: ip.l4_off,
        payload_end: ip.end,
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        sport: 0,
        dport: 0,
        l4: L4Meta::Other,
        fragment: ip.fragment,
    };
    if meta.fragment.is_some() {
        return Ok(meta);
    }
    let l4 = parse_l4(ip.proto, frame.get(ip.l4_off..ip.end).unwrap_or_default())?;
    meta.l4 = l4.meta;
    meta.sport = l4.sport;
    meta.dport = l4.dport;
    meta.payload_off = ip.l4_off + l4.header_len;
    meta.payload_end = ip.l4_off + l4.end;
    Ok(meta)
}

/// An upper-layer header read from the start of an IP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Header {
    pub meta: L4Meta,
    pub sport: u16,
    pub dport: u16,
    /// Header length; payload starts here (relative to the L4 header).
    pub header_len: usize,
    /// End of the L4 data relative to the L4 header (UDP length applied).
    pub end: usize,
}

/// Read the L4 header of `proto` at the start of `data` (an IP payload).
/// Protocols we do not look into yield `Other` with ports 0.
pub fn parse_l4(proto: u8, data: &[u8]) -> Result<L4Header, ParseError> {
    match proto {
        IPPROTO_TCP => {
            let t = etherparse::TcpHeaderSlice::from_slice(data)
                .map_err(|_| ParseError::Malformed("bad tcp header"))?;
            let raw = t.slice();
            let header_len = raw.len();
            Ok(L4Header {
                meta: L4Meta::Tcp(TcpMeta {
                    seq: t.sequence_number(),
                    ack: t.acknowledgment_number(),
                    flags: raw.get(13).copied().unwrap_or(0),
                    window: t.window_size(),
                    header_len,
                }),
                sport: t.source_port(),
                dport: t.destination_port(),
                header_len,
                end: data.len(),
            })
        }
        IPPROTO_UDP => {
            let u = etherparse::UdpHeaderSlice::from_slice(data)
                .map_err(|_| ParseError::Malformed("short udp header"))?;
            let len = usize::from(u.length());
            if len < 8 || len > data.len() {
                return Err(ParseError::Malformed("bad udp length"));
            }
            Ok(L4Header {
                meta: L4Meta::Udp,
                sport: u.source_port(),
                dport: u.destination_port(),
                header_len: 8,
                end: len,
            })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let h = data
                .get(..8)
                .ok_or(ParseError::Malformed("short icmp header"))?;
            let (kind, code) = (h[0], h[1]);
            let echo = if proto == IPPROTO_ICMP {
                matches!(kind, 0 | 8)
            } else {
                matches!(kind, 128 | 129)
            };
            let id = if echo {
                u16::from_be_bytes([h[4], h[5]])
            } else {
                0
            };
            Ok(L4Header {
                meta: L4Meta::Icmp { kind, code, id },
                sport: 0,
                dport: 0,
                header_len: 8,
                end: data.len(),
            })
        }
        _ => Ok(L4Header {
            meta: L4Meta::Other,
            sport: 0,
            dport: 0,
            header_len: 0,
            end: data.len(),
        }),
    }
}

/// True for ICMP / ICMPv6 error messages, which quote the datagram they
/// are about.
pub fn icmp_is_error(proto: u8, kind: u8) -> bool {
    match proto {
        // dest unreachable, source quench, redirect, time exceeded, parameter problem
        IPPROTO_ICMP => matches!(kind, 3 | 4 | 5 | 11 | 12),
        // dest unreachable, packet too big, time exceeded, parameter problem
        IPPROTO_ICMPV6 => matches!(kind, 1..=4),
        _ => false,
    }
}

/// The flow an ICMP error is about, read from the datagram it quotes, as
/// that datagram's sender saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedFlow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// ICMP echo id when the quoted datagram is an echo.
    pub icmp: Option<(u8, u16)>,
}

/// Read the quoted datagram of an ICMP error frame. Quotes are usually cut
/// short, so the quoted IP length may exceed what is present; the first 8
/// bytes of its L4 header must be there.
pub fn icmp_quoted(frame: &[u8], meta: &FrameMeta) -> Option<QuotedFlow> {
    let inner_off = meta.payload_off;
    let first = *frame.get(inner_off)?;
    let ip = match (meta.proto, first >> 4) {
        (IPPROTO_ICMP, 4) => ipv4_part(frame, inner_off, true).ok()?,
        (IPPROTO_ICMPV6, 6) => ipv6_part(frame, inner_off, true).ok()?,
        _ => return None,
    };
    let l4 = frame.get(ip.l4_off..ip.l4_off.checked_add(8)?)?;
    if ip.fragment.is_some_and(|f| f.offset != 0) {
        return None;
    }
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    let (sport, dport, icmp) = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => (port(0), port(2), None),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => (0, 0, Some((l4[0], port(4)))),
        _ => (0, 0, None),
    };
    Some(QuotedFlow {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        sport,
        dport,
        icmp,
    })
}

/// The frame builders and TCP endpoints of the integration tests' kit,
/// shared with unit tests (`testkit::*`, `testkit_tcp::*`).
#[cfg(test)]
#[path = "../../tests/kit/frames.rs"]
pub(crate) mod testkit;
#[cfg(test)]
use testkit as frames;
#[cfg(test)]
#[path = "../../tests/kit/tcp.rs"]
pub(crate) mod testkit_tcp;

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tcp_v4_fields_and_offsets() {
        let f = tcp(
            ep("10.66.0.11", 40000),
            ep("10.66.0.2", 80),
            7,
            9,
            SYN | ACK,
            b"hi",
        );
        let m = parse(&f).unwrap();
        assert_eq!(
            (m.l3_off, m.l4_off, m.payload_off, m.payload_end),
            (14, 34, 54, 56)
        );
        assert_eq!(
            (m.src, m.dst, m.proto, m.sport, m.dport),
            (ip("10.66.0.11"), ip("10.66.0.2"), 6, 40000, 80)
        );
        let t = m.tcp().unwrap();
        assert_eq!(
            (t.seq, t.ack, t.flags, t.header_len),
            (7, 9, TCP_SYN | TCP_ACK, 20)
        );
        assert_eq!(m.payload(&f), b"hi");
        assert!(m.fragment.is_none());
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut f = udp(ep("10.66.0.11", 5000), ep("10.66.0.2", 53), b"q");
        f.extend_from_slice(&[0u8; 20]);
        let m = parse(&f).unwrap();
        assert_eq!(m.payload(&f), b"q");
        assert_eq!(m.l4, L4Meta::Udp);
    }

    #[test]
    fn vlan_and_qinq() {
        let f = tcp(ep("10.66.0.11", 1), ep("10.66.0.2", 2), 0, 0, SYN, &[]);
        let one = vlan_tag(&f, 0x8100, 5);
        assert_eq!(parse(&one).unwrap().l3_off, 18);
        let two = vlan_tag(&one, 0x88a8, 6);
        let m = parse(&two).unwrap();
        assert_eq!((m.l3_off, m.dport), (22, 2));
        let three = vlan_tag(&two, 0x88a8, 7);
        assert!(matches!(parse(&three), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let f = udp(ep("10.66.0.11", 5000), ep("10.66.0.2", 53), b"abc");
        // Rebuild with 4 bytes of options (NOPs): IHL 6.
        let mut g = f[..14].to_vec();
        let mut h = f[14..34].to_vec();
        h[0] = 0x46;
        let total = u16::from_be_bytes([h[2], h[3]]) + 4;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        g.extend_from_slice(&h);
        g.extend_from_slice(&[1, 1, 1, 1]);
        g.extend_from_slice(&f[34..]);
        let m = parse(&g).unwrap();
        assert_eq!((m.l4_off, m.dport), (38, 53));
        assert_eq!(m.payload(&g), b"abc");
    }

    #[test]
    fn ipv6_with_extension_headers() {
        let f = tcp(ep("fd66::11", 1234), ep("fd66::2", 80), 1, 0, SYN, &[]);
        // Insert an 8-byte destination-options header.
        let mut g = f[..54].to_vec();
        g[14 + 6] = 60;
        let plen = u16::from_be_bytes([g[18], g[19]]) + 8;
        g[18..20].copy_from_slice(&plen.to_be_bytes());
        g.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        g.extend_from_slice(&f[54..]);
        let m = parse(&g).unwrap();
        assert_eq!((m.proto, m.l4_off, m.dport), (6, 62, 80));
        assert_eq!(m.src, ip("fd66::11"));
    }

    #[test]
    fn fragments_carry_no_l4() {
        let f = udp(ep("10.66.0.11", 5000), ep("10.66.0.2", 53), &[7u8; 40]);
        let frags = fragment_evenly(&f, 99, 24);
        let m0 = parse(&frags[0]).unwrap();
        assert_eq!(
            m0.fragment,
            Some(FragmentMeta {
                id: 99,
                offset: 0,
                more: true
            })
        );
        assert_eq!(
            (m0.l4, m0.sport, m0.payload_end - m0.l4_off),
            (L4Meta::Other, 0, 24)
        );
        let m1 = parse(&frags[1]).unwrap();
        assert_eq!(
            m1.fragment,
            Some(FragmentMeta {
                id: 99,
                offset: 24,
                more: false
            })
        );

        let f6 = udp(ep("fd66::11", 5000), ep("fd66::2", 53), &[7u8; 40]);
        let frags6 = fragment_evenly(&f6, 0x1234_5678, 16);
        let m = parse(&frags6[1]).unwrap();
        assert_eq!(
            m.fragment,
            Some(FragmentMeta {
                id: 0x1234_5678,
                offset: 16,
                more: true
            })
        );
        assert_eq!((m.proto, m.l4_off), (17, 62));
    }

    #[test]
    fn bad_lengths_are_malformed_not_ip_is_reported() {
        let f = tcp(ep("10.66.0.11", 1), ep("10.66.0.2", 2), 0, 0, SYN, b"data");
        for cut in [0, 10, 14, 20, 33, 40, f.len() - 1] {
            assert!(
                matches!(parse(&f[..cut]), Err(ParseError::Malformed(_))),
                "cut at {cut}"
            );
        }
        let mut g = f.clone();
        g[17] = 10; // total length below the header
        assert!(matches!(parse(&g), Err(ParseError::Malformed(_))));
        let mut g = f.clone();
        g[14 + 20 + 12] = 0x40; // TCP data offset 4
        assert!(matches!(parse(&g), Err(ParseError::Malformed(_))));
        let u = udp(ep("10.66.0.11", 1), ep("10.66.0.2", 2), b"x");
        let mut g = u.clone();
        g[14 + 20 + 5] = 50; // UDP length beyond the datagram
        assert!(matches!(parse(&g), Err(ParseError::Malformed(_))));
        assert_eq!(parse(&arp()), Err(ParseError::NotIp { ethertype: 0x0806 }));
    }

    #[test]
    fn icmp_echo_and_quoted_flow() {
        let e = echo("10.66.0.12", "10.66.0.2", 77, 1, true, b"ping");
        let m = parse(&e).unwrap();
        assert_eq!(
            m.l4,
            L4Meta::Icmp {
                kind: 8,
                code: 0,
                id: 77
            }
        );
        let e6 = echo("fd66::12", "fd66::2", 78, 1, false, b"pong");
        assert_eq!(
            parse(&e6).unwrap().l4,
            L4Meta::Icmp {
                kind: 129,
                code: 0,
                id: 78
            }
        );

        let orig = udp(ep("10.66.0.11", 5000), ep("10.66.0.2", 53), b"q");
        let err = unreachable("10.66.0.2", "10.66.0.11", &orig);
        let m = parse(&err).unwrap();
        assert!(icmp_is_error(m.proto, 3));
        let q = icmp_quoted(&err, &m).unwrap();
        assert_eq!(
            (q.src, q.dst, q.proto, q.sport, q.dport),
            (ip("10.66.0.11"), ip("10.66.0.2"), 17, 5000, 53)
        );

        let orig6 = tcp(ep("fd66::11", 4000), ep("fd66::2", 80), 0, 0, SYN, &[]);
        let err6 = unreachable("fd66::2", "fd66::11", &orig6);
        let m6 = parse(&err6).unwrap();
        let q6 = icmp_quoted(&err6, &m6).unwrap();
        assert_eq!((q6.proto, q6.sport, q6.dport), (6, 4000, 80));
    }

    #[test]
    fn common_frames_take_the_fast_path() {
        let frames = [
            tcp(
                ep("10.66.0.11", 40000),
                ep("10.66.0.2", 80),
                7,
                9,
                ACK,
                b"hi",
            ),
            tcp(ep("fd66::11", 40000), ep("fd66::2", 80), 7, 9, SYN, &[]),
            udp(ep("10.66.0.11", 5000), ep("10.66.0.2", 53), b"q"),
            udp(ep("fd66::11", 5000), ep("fd66::2", 53), b""),
        ];
        for f in &frames {
            assert_eq!(parse_fast(f), parse_general(f).ok(), "{f:02x?}");
            assert!(parse_fast(f).is_some(), "{f:02x?}");
        }
        // And what it must leave to the general path.
        let t = tcp(ep("10.66.0.11", 1), ep("10.66.0.2", 2), 0, 0, SYN, &[]);
        let declined = [
            vlan_tag(&t, 0x8100, 5),
            echo("10.66.0.12", "10.66.0.2", 77, 1, true, b"ping"),
            fragment_evenly(
                &udp(ep("10.66.0.11", 1), ep("10.66.0.2", 2), &[0; 40]),
                1,
                16,
            )
            .remove(1),
            t[..40].to_vec(),
            arp(),
        ];
        for f in &declined {
            assert_eq!(parse_fast(f), None, "{f:02x?}");
        }
    }

    /// The fast path's output for a frame, when it gives one, is the general
    /// path's: it may decline, never differ.
    fn fast_agrees(f: &[u8]) -> Result<(), TestCaseError> {
        if let Some(m) = parse_fast(f) {
            prop_assert_eq!(Ok(m), parse_general(f));
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_the_general_one(
            kind in 0usize..4,
            flips in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            pad in 0usize..24,
            cut in 0usize..120,
        ) {
            let mut f = match kind {
                0 => tcp(ep("10.66.0.11", 1), ep("10.66.0.2", 2), 5, 6, ACK, b"payload"),
                1 => tcp(ep("fd66::11", 1), ep("fd66::2", 2), 5, 6, ACK, b"payload"),
                2 => udp(ep("10.66.0.11", 1), ep("10.66.0.2", 2), b"payload"),
                _ => udp(ep("fd66::11", 1), ep("fd66::2", 2), b"payload"),
            };
            f.extend(std::iter::repeat_n(0u8, pad));
            for (i, b) in flips {
                if let Some(x) = f.get_mut(i) {
                    *x = b;
                }
            }
            f.truncate(cut);
            fast_agrees(&f)?;
        }

        #[test]
        fn fast_path_agrees_on_random_bytes(
            head in prop_oneof![Just([0x08u8, 0x00, 0x45]), Just([0x86, 0xdd, 0x60])],
            proto in prop_oneof![Just(6u8), Just(17u8), any::<u8>()],
            ip_len in 0u16..130,
            udp_len in 0u16..100,
            mut bytes in proptest::collection::vec(any::<u8>(), 42..120),
        ) {
            // Random bytes in the fields that decide, but with lengths near
            // the frame's and (IPv4) no fragment bits, so that most cases
            // get past the first checks.
            bytes[12..15].copy_from_slice(&head);
            let l4 = if head[0] == 0x08 {
                bytes[16..18].copy_from_slice(&ip_len.to_be_bytes());
                bytes[20] &= 0x40;
                bytes[21] = 0;
                bytes[23] = proto;
                34
            } else {
                bytes[18..20].copy_from_slice(&ip_len.to_be_bytes());
                bytes[20] = proto;
                54
            };
            if proto == 17 && bytes.len() >= l4 + 6 {
                bytes[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
            }
            fast_agrees(&bytes)?;
        }

        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(m) = parse(&bytes) {
                prop_assert!(m.payload_off <= m.payload_end && m.payload_end <= bytes.len());
                let _ = icmp_quoted(&bytes, &m);
            }
        }

        #[test]
        fn never_panics_on_mutated_frames(
            kind in 0usize..4,
            flips in proptest::collection::vec((0usize..120, any::<u8>()), 1..8),
            cut in 0usize..130,
        ) {
            let mut f = match kind {
                0 => tcp(ep("10.66.0.11", 1), ep("10.66.0.2", 2), 0, 0, SYN, b"payload"),
                1 => udp(ep("fd66::11", 1), ep("fd66::2", 2), b"payload"),
                2 => unreachable("10.66.0.2", "10.66.0.11", &udp(ep("10.66.0.11", 1), ep("10.66.0.2", 2), b"x")),
                _ => fragment_evenly(&udp(ep("fd66::11", 1), ep("fd66::2", 2), &[0; 40]), 1, 16).remove(0),
            };
            for (i, b) in flips {
                if let Some(x) = f.get_mut(i) {
                    *x = b;
                }
            }
            f.truncate(cut);
            if let Ok(m) = parse(&f) {
                prop_assert!(m.l4_off <= m.payload_off && m.payload_off <= m.payload_end && m.payload_end <= f.len());
                let _ = icmp_quoted(&f, &m);
            }
        }
    }
}
