//! Frames the enforcer writes: TCP segments with payload (injected replies,
//! re-segmented released bytes), RSTs, and in-place seq/ack rewrites. All
//! checksums are computed here.

use super::view::FrameMeta;

/// Header fields for a TCP segment built from the headers of a frame of the
/// same flow (MACs, IPs, ports, TTL, IP version are taken from `template`).
#[derive(Debug, Clone, Copy)]
pub struct SegmentSpec {
    /// Build it in the template's direction (false) or the reverse one (true):
    /// MACs, addresses and ports swapped.
    pub reverse: bool,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Ones-complement sum of the TCP/UDP pseudo header.
fn pseudo(frame: &[u8], l3: usize, v6: bool, proto: u8, l4_len: usize) -> u32 {
    let mut acc = 0;
    if v6 {
        acc = sum16(acc, &frame[l3 + 8..l3 + 40]);
    } else {
        acc = sum16(acc, &frame[l3 + 12..l3 + 20]);
    }
    acc + u32::from(proto) + l4_len as u32
}

fn is_v6(frame: &[u8], meta: &FrameMeta) -> bool {
    frame.get(meta.l3_off).is_some_and(|b| b >> 4 == 6)
}

/// Recompute the TCP checksum of a frame whose TCP segment runs from
/// `l4_off` to `end`.
fn tcp_checksum(frame: &mut [u8], l3: usize, l4: usize, end: usize, v6: bool) {
    frame[l4 + 16] = 0;
    frame[l4 + 17] = 0;
    let acc = pseudo(frame, l3, v6, 6, end - l4);
    let c = fold(sum16(acc, &frame[l4..end]));
    frame[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// Build an Ethernet/IP/TCP frame carrying `payload` (no TCP options).
/// `template` must hold at least the headers up to `meta.l4_off + 20`.
pub fn tcp_segment(
    template: &[u8],
    meta: &FrameMeta,
    spec: &SegmentSpec,
    payload: &[u8],
) -> Vec<u8> {
    let l3 = meta.l3_off;
    let l4 = meta.l4_off;
    let v6 = is_v6(template, meta);
    let mut f = Vec::with_capacity(l4 + 20 + payload.len());
    f.extend_from_slice(&template[..l4]);
    f.extend_from_slice(&template[l4..l4 + 4]);
    f.extend_from_slice(&[0; 16]);
    f.extend_from_slice(payload);
    if spec.reverse {
        let (dst, src) = f[..12].split_at_mut(6);
        dst.swap_with_slice(src);
        if v6 {
            for i in 0..16 {
                f.swap(l3 + 8 + i, l3 + 24 + i);
            }
        } else {
            for i in 0..4 {
                f.swap(l3 + 12 + i, l3 + 16 + i);
            }
        }
        f.swap(l4, l4 + 2);
        f.swap(l4 + 1, l4 + 3);
    }
    let end = f.len();
    if v6 {
        let plen = (end - l3 - 40) as u16;
        f[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        // Extension headers of the template are kept; a routing header
        // would be wrong in reverse, but segments of an L7 flow carry none.
        if l4 == l3 + 40 {
            f[l3 + 6] = 6;
        }
    } else {
        let ihl = usize::from(f[l3] & 0x0f) * 4;
        let tot = (end - l3) as u16;
        f[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
        f[l3 + 4..l3 + 6].copy_from_slice(&[0, 0]); // id
        f[l3 + 6..l3 + 8].copy_from_slice(&[0x40, 0]); // DF, no fragment
        f[l3 + 9] = 6;
        f[l3 + 10] = 0;
        f[l3 + 11] = 0;
        let c = fold(sum16(0, &f[l3..l3 + ihl]));
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    f[l4 + 4..l4 + 8].copy_from_slice(&spec.seq.to_be_bytes());
    f[l4 + 8..l4 + 12].copy_from_slice(&spec.ack.to_be_bytes());
    f[l4 + 12] = 5 << 4;
    f[l4 + 13] = spec.flags;
    f[l4 + 14..l4 + 16].copy_from_slice(&spec.window.to_be_bytes());
    tcp_checksum(&mut f, l3, l4, end, v6);
    f
}

/// Rewrite seq and ack of a TCP frame in place and fix the checksum
/// (incrementally, so the cost does not grow with the payload).
pub fn set_seq_ack(frame: &mut [u8], meta: &FrameMeta, seq: u32, ack: u32) {
    let l4 = meta.l4_off;
    if frame.len() < l4 + 18 {
        return;
    }
    let mut c = !u16::from_be_bytes([frame[l4 + 16], frame[l4 + 17]]) as u32;
    for (off, new) in [(4, seq), (8, ack)] {
        let old = u32::from_be_bytes([
            frame[l4 + off],
            frame[l4 + off + 1],
            frame[l4 + off + 2],
            frame[l4 + off + 3],
        ]);
        // RFC 1624: HC' = ~(~HC + ~m + m')
        for (o, n) in [(old >> 16, new >> 16), (old & 0xffff, new & 0xffff)] {
            c += (!o & 0xffff) + n;
        }
        frame[l4 + off..l4 + off + 4].copy_from_slice(&new.to_be_bytes());
    }
    let c = fold(c);
    frame[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// Replace SACK blocks (option 5) by NOPs: after bytes were removed or
/// inserted, the peer's SACK blocks would name the wrong bytes.
pub fn strip_sack(frame: &mut [u8], meta: &FrameMeta) -> bool {
    let l4 = meta.l4_off;
    let Some(t) = meta.tcp() else { return false };
    let end = l4 + t.header_len;
    if frame.len() < end {
        return false;
    }
    let mut i = l4 + 20;
    let mut changed = false;
    while i < end {
        match frame[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = frame.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > end {
                    break;
                }
                if kind == 5 {
                    frame[i..i + len].fill(1);
                    changed = true;
                }
                i += len;
            }
        }
    }
    if changed {
        let v6 = is_v6(frame, meta);
        let l3 = meta.l3_off;
        let seg_end = meta.payload_end;
        tcp_checksum(frame, l3, l4, seg_end, v6);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::view::{parse, TCP_ACK, TCP_PSH};
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn frame(v6: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let b = PacketBuilder::ethernet2([1, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2]);
        let b = if v6 {
            b.ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        b.tcp(40000, 80, 1000, 500)
            .ack(77)
            .write(&mut v, payload)
            .unwrap();
        v
    }

    fn checks_ok(f: &[u8]) -> bool {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            return false;
        };
        match &p.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                t.to_header()
                    .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                    .unwrap()
                    == t.checksum()
                    && ip.header().header_checksum()
                        == ip.header().to_header().calc_header_checksum()
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                t.to_header()
                    .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                    .unwrap()
                    == t.checksum()
            }
            _ => false,
        }
    }

    #[test]
    fn built_segments_have_valid_checksums_both_ways() {
        for v6 in [false, true] {
            let t = frame(v6, b"hello");
            let m = parse(&t).unwrap();
            for reverse in [false, true] {
                let spec = SegmentSpec {
                    reverse,
                    seq: 5,
                    ack: 9,
                    flags: TCP_ACK | TCP_PSH,
                    window: 100,
                };
                let f = tcp_segment(&t, &m, &spec, b"denied!");
                assert!(checks_ok(&f), "v6={v6} reverse={reverse}");
                let m2 = parse(&f).unwrap();
                assert_eq!(m2.payload(&f), b"denied!");
                let tc = m2.tcp().unwrap();
                assert_eq!((tc.seq, tc.ack, tc.window), (5, 9, 100));
                if reverse {
                    assert_eq!((m2.sport, m2.dport), (80, 40000));
                    assert_eq!(m2.src, m.dst);
                    assert_eq!(&f[..6], &[1, 1, 1, 1, 1, 1]);
                } else {
                    assert_eq!((m2.sport, m2.dport), (40000, 80));
                }
            }
        }
    }

    #[test]
    fn incremental_rewrite_matches_a_full_checksum() {
        for v6 in [false, true] {
            let mut f = frame(v6, b"some payload bytes");
            let m = parse(&f).unwrap();
            set_seq_ack(&mut f, &m, 0xdead_beef, 0x0102_0304);
            assert!(checks_ok(&f));
            let tc = *parse(&f).unwrap().tcp().unwrap();
            assert_eq!((tc.seq, tc.ack), (0xdead_beef, 0x0102_0304));
        }
    }

    #[test]
    fn sack_blocks_become_nops() {
        let mut v = Vec::new();
        let opts = [
            etherparse::TcpOptionElement::Noop,
            etherparse::TcpOptionElement::Noop,
            etherparse::TcpOptionElement::SelectiveAcknowledgement((1, 2), [None, None, None]),
        ];
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 3, 4)
            .ack(5)
            .options(&opts)
            .unwrap()
            .write(&mut v, b"x")
            .unwrap();
        let m = parse(&v).unwrap();
        assert!(strip_sack(&mut v, &m));
        assert!(checks_ok(&v));
        let hl = m.tcp().unwrap().header_len;
        assert!(v[m.l4_off + 20..m.l4_off + hl].iter().all(|b| *b == 1));
    }
}
