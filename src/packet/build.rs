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

const TCP_MIN_HEADER: usize = 20;

fn is_v4(meta: &FrameMeta) -> bool {
    meta.src.is_ipv4()
}

/// Build an Ethernet/IP/TCP frame carrying `payload` (no TCP options).
/// `template` must be a frame `meta` was parsed from (only its headers up to
/// `meta.l4_off` and the TCP ports are read).
pub fn tcp_segment(
    template: &[u8],
    meta: &FrameMeta,
    spec: &SegmentSpec,
    payload: &[u8],
) -> Vec<u8> {
    let l4 = meta.l4_off;
    let mut f = Vec::with_capacity(l4 + TCP_MIN_HEADER + payload.len());
    f.extend_from_slice(template.get(..l4).unwrap_or_default());
    f.resize(l4, 0);
    let l3 = meta.l3_off.min(l4);
    let ip_hlen = l4 - l3;
    let l4_len = TCP_MIN_HEADER + payload.len();
    if spec.reverse && f.len() >= 12 {
        let (dst, src) = f.split_at_mut(6);
        dst[..6].swap_with_slice(&mut src[..6]);
    }
    if is_v4(meta) && ip_hlen >= 20 {
        let ip = &mut f[l3..l4];
        let total = (ip_hlen + l4_len).min(usize::from(u16::MAX)) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        // Keep DF, clear MF and the offset: this is a whole datagram.
        ip[6] &= 0x40;
        ip[7] = 0;
        if spec.reverse {
            let (a, b) = ip[12..20].split_at_mut(4);
            a.swap_with_slice(b);
        }
        ip[10] = 0;
        ip[11] = 0;
        let c = fold(sum(0, ip));
        ip[10..12].copy_from_slice(&(!c).to_be_bytes());
    } else if !is_v4(meta) && ip_hlen >= 40 {
        let ip = &mut f[l3..l4];
        let plen = (ip_hlen - 40 + l4_len).min(usize::from(u16::MAX)) as u16;
        ip[4..6].copy_from_slice(&plen.to_be_bytes());
        if spec.reverse {
            let (a, b) = ip[8..40].split_at_mut(16);
            a.swap_with_slice(b);
        }
    }
    let (sport, dport) = if spec.reverse {
        (meta.dport, meta.sport)
    } else {
        (meta.sport, meta.dport)
    };
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&spec.seq.to_be_bytes());
    f.extend_from_slice(&spec.ack.to_be_bytes());
    f.push((TCP_MIN_HEADER as u8 / 4) << 4);
    f.push(spec.flags);
    f.extend_from_slice(&spec.window.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    let csum = tcp_checksum(&f, meta, l3, l4);
    f[l4 + 16..l4 + 18].copy_from_slice(&csum.to_be_bytes());
    f
}

/// Rewrite seq and ack of a TCP frame in place and fix the checksum.
pub fn set_seq_ack(frame: &mut [u8], meta: &FrameMeta, seq: u32, ack: u32) {
    let l4 = meta.l4_off;
    let Some(h) = frame.get_mut(l4..l4 + TCP_MIN_HEADER) else {
        return;
    };
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    fix_tcp_checksum(frame, meta);
}

/// Replace every SACK-permitted and SACK option by NOPs (the peer's view of
/// the stream differs from ours once bytes were removed or inserted, so its
/// SACK blocks would be wrong). Returns true when something changed; the
/// caller fixes the checksum (`set_seq_ack` does).
pub fn strip_sack(frame: &mut [u8], meta: &FrameMeta) -> bool {
    let Some(t) = meta.tcp() else { return false };
    let start = meta.l4_off + TCP_MIN_HEADER;
    let end = (meta.l4_off + t.header_len).min(frame.len());
    let mut i = start;
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
                if kind == 4 || kind == 5 {
                    frame[i..i + len].fill(1);
                    changed = true;
                }
                i += len;
            }
        }
    }
    changed
}

/// The window-scale shift a SYN or SYN-ACK announces (RFC 7323 2.2; at most
/// 14), or None when it carries no window-scale option.
pub fn tcp_wscale(frame: &[u8], meta: &FrameMeta) -> Option<u8> {
    let t = meta.tcp()?;
    let start = meta.l4_off + TCP_MIN_HEADER;
    let end = (meta.l4_off + t.header_len).min(frame.len());
    let mut i = start;
    while i < end {
        match frame[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(*frame.get(i + 1)?);
                if len < 2 || i + len > end {
                    break;
                }
                if kind == 3 && len == 3 {
                    return Some(frame[i + 2].min(14));
                }
                i += len;
            }
        }
    }
    None
}

/// Set the TCP window field (the caller fixes the checksum, or calls
/// `fix_tcp_checksum`). False when the frame has no room for it.
pub fn set_window(frame: &mut [u8], meta: &FrameMeta, window: u16) -> bool {
    match frame.get_mut(meta.l4_off + 14..meta.l4_off + 16) {
        Some(w) if meta.tcp().is_some() => {
            w.copy_from_slice(&window.to_be_bytes());
            true
        }
        _ => false,
    }
}

/// Write `new` (whole 16-bit words) at `at`, an even offset into the TCP
/// header outside the checksum field, and update the checksum for the
/// change alone (RFC 1624: HC' = ~(~HC + ~m + m')), so that rewriting a
/// window or an ack costs the same whatever the payload's size. The frame's
/// checksum must have been right (the engine checks it on L7 flows).
pub fn patch_tcp(frame: &mut [u8], meta: &FrameMeta, at: usize, new: &[u8]) -> bool {
    let l4 = meta.l4_off;
    let end = at + new.len();
    let clear_of_checksum = end <= 16 || at >= 18;
    if !at.is_multiple_of(2)
        || !new.len().is_multiple_of(2)
        || !clear_of_checksum
        || l4 + end.max(18) > frame.len()
    {
        return false;
    }
    let mut c = u32::from(!u16::from_be_bytes([frame[l4 + 16], frame[l4 + 17]]));
    for (i, w) in new.chunks_exact(2).enumerate() {
        let o = l4 + at + 2 * i;
        let old = u16::from_be_bytes([frame[o], frame[o + 1]]);
        c += u32::from(!old) + u32::from(u16::from_be_bytes([w[0], w[1]]));
        frame[o..o + 2].copy_from_slice(w);
    }
    while c >> 16 != 0 {
        c = (c & 0xffff) + (c >> 16);
    }
    frame[l4 + 16..l4 + 18].copy_from_slice(&(!(c as u16)).to_be_bytes());
    true
}

/// Recompute the TCP checksum of a frame in place.
pub fn fix_tcp_checksum(frame: &mut [u8], meta: &FrameMeta) {
    let (l3, l4, end) = (meta.l3_off, meta.l4_off, meta.payload_end);
    if end > frame.len() || l4 + TCP_MIN_HEADER > end || l3 > l4 {
        return;
    }
    frame[l4 + 16] = 0;
    frame[l4 + 17] = 0;
    let c = tcp_checksum(&frame[..end], meta, l3, l4);
    frame[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// Whether the TCP checksum of a frame (or of a reassembled L4 datagram,
/// `meta.l3_off == meta.l4_off == 0`) is right. The pseudo-header comes from
/// `meta`'s addresses, so it works on both.
pub fn tcp_checksum_ok(frame: &[u8], meta: &FrameMeta) -> bool {
    let Some(seg) = frame.get(meta.l4_off..meta.payload_end) else {
        return false;
    };
    let len = seg.len() as u32;
    let mut s: u32 = 0;
    match (meta.src, meta.dst) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
            s = sum(s, &a.octets());
            s = sum(s, &b.octets());
        }
        (a, b) => {
            let v6 = |x: std::net::IpAddr| match x {
                std::net::IpAddr::V6(v) => v.octets(),
                std::net::IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            };
            s = sum(s, &v6(a));
            s = sum(s, &v6(b));
        }
    }
    s = s
        .wrapping_add(6)
        .wrapping_add(len >> 16)
        .wrapping_add(len & 0xffff);
    s = sum(s, seg);
    // The field included, a right checksum sums to all ones.
    fold(s) == 0xffff
}

/// Checksum of the TCP segment `frame[l4..]` (checksum field zero) with the
/// pseudo-header taken from the IP header at `l3`.
fn tcp_checksum(frame: &[u8], meta: &FrameMeta, l3: usize, l4: usize) -> u16 {
    let seg = frame.get(l4..).unwrap_or_default();
    let len = seg.len() as u32;
    let mut s: u32 = 0;
    if is_v4(meta) {
        s = sum(s, frame.get(l3 + 12..l3 + 20).unwrap_or_default());
    } else {
        s = sum(s, frame.get(l3 + 8..l3 + 40).unwrap_or_default());
    }
    s = s
        .wrapping_add(6)
        .wrapping_add(len >> 16)
        .wrapping_add(len & 0xffff);
    s = sum(s, seg);
    !fold(s)
}

/// One's-complement sum of `data` (16-bit big-endian words) onto `s`,
/// folded to at most 16 bits so that callers may add small values to it.
/// Every payload byte of an L7 flow passes here once for the check and
/// once more when the segment is rewritten, and on a shared machine those
/// cycles are taken from the endpoints: the bulk is summed as native 32-bit
/// words into 64 bits (a loop the compiler vectorises) and byte-swapped
/// once at the end, which gives the big-endian 16-bit sum (RFC 1071 §2:
/// the sum is independent of byte order, and 2^16 = 1 modulo 0xffff).
fn sum(s: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(4);
    let mut acc: u64 = 0;
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    }
    let mut native = fold64(acc);
    if cfg!(target_endian = "little") {
        native = native.swap_bytes();
    }
    let mut t = u64::from(s) + u64::from(native);
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        t += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = rest.remainder() {
        t += u64::from(*b) << 8;
    }
    u32::from(fold64(t))
}

/// Fold a 64-bit one's-complement accumulator to 16 bits.
fn fold64(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::view::{parse, TCP_ACK, TCP_PSH};

    /// The word-wise sum against the plain 16-bit one, on every length and
    /// starting value class.
    #[test]
    fn sum_matches_the_plain_sixteen_bit_sum() {
        fn plain(mut s: u32, data: &[u8]) -> u32 {
            for c in data.chunks(2) {
                let hi = u32::from(c[0]) << 8;
                s += hi | c.get(1).map_or(0, |&b| u32::from(b));
                s = (s & 0xffff) + (s >> 16);
            }
            s
        }
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            for start in [0u32, 1, 0xfffe, 0x1_2345] {
                let d = &data[..len];
                assert_eq!(
                    fold(sum(start, d)),
                    fold(plain(start, d)),
                    "len {len} start {start}"
                );
            }
        }
        assert_eq!(fold(sum(0, &[0xff; 64])), 0xffff);
    }

    fn v4_frame(payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1234, 80, 1000, 4096)
            .ack(77);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn v6_frame(payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6([1; 16], [2; 16], 64)
            .tcp(1234, 80, 1000, 4096)
            .ack(77);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn check_valid(frame: &[u8]) -> etherparse::SlicedPacket<'_> {
        let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
        let ok = match (&p.net, &p.transport) {
            (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(t))) => {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum());
                t.calc_checksum_ipv4(h.source, h.destination).unwrap() == t.checksum()
            }
            (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Tcp(t))) => {
                let h = ip.header().to_header();
                t.calc_checksum_ipv6(h.source, h.destination).unwrap() == t.checksum()
            }
            _ => false,
        };
        assert!(ok, "bad checksum");
        p
    }

    #[test]
    fn patched_words_keep_the_checksum_right() {
        for (mut f, payload) in [(v4_frame(b"hello!"), 6), (v6_frame(&[0xab; 1401]), 1401)] {
            let m = parse(&f).unwrap();
            assert_eq!(m.payload_end - m.payload_off, payload);
            for w in [0u16, 1, 0x7fff, 0xffff, 4096] {
                assert!(patch_tcp(&mut f, &m, 14, &w.to_be_bytes()));
                let p = check_valid(&f);
                let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
                    panic!("tcp")
                };
                assert_eq!(t.window_size(), w);
            }
            assert!(patch_tcp(&mut f, &m, 8, &0xdead_beef_u32.to_be_bytes()));
            check_valid(&f);
            // Never the checksum field itself, never an odd offset.
            assert!(!patch_tcp(&mut f, &m, 16, &[0, 0]));
            assert!(!patch_tcp(&mut f, &m, 15, &[0, 0]));
        }
    }

    #[test]
    fn segment_v4_forward_and_reverse() {
        let t = v4_frame(b"hello");
        let m = parse(&t).unwrap();
        let spec = SegmentSpec {
            reverse: false,
            seq: 5,
            ack: 6,
            flags: TCP_ACK | TCP_PSH,
            window: 100,
        };
        let f = tcp_segment(&t, &m, &spec, b"abcdefg");
        check_valid(&f);
        let m2 = parse(&f).unwrap();
        assert_eq!(m2.payload(&f), b"abcdefg");
        assert_eq!((m2.sport, m2.dport), (1234, 80));
        assert_eq!(m2.tcp().unwrap().seq, 5);
        let r = tcp_segment(
            &t,
            &m,
            &SegmentSpec {
                reverse: true,
                ..spec
            },
            b"",
        );
        check_valid(&r);
        let m3 = parse(&r).unwrap();
        assert_eq!((m3.sport, m3.dport), (80, 1234));
        assert_eq!(m3.src, m.dst);
        assert_eq!(&r[0..6], &[1; 6]);
        assert_eq!(m3.payload(&r), b"");
    }

    #[test]
    fn segment_v6_odd_payload() {
        let t = v6_frame(b"x");
        let m = parse(&t).unwrap();
        let spec = SegmentSpec {
            reverse: true,
            seq: u32::MAX,
            ack: 1,
            flags: TCP_ACK,
            window: 1,
        };
        let f = tcp_segment(&t, &m, &spec, b"abc");
        check_valid(&f);
        let m2 = parse(&f).unwrap();
        assert_eq!(m2.payload(&f), b"abc");
        assert_eq!(m2.dst, m.src);
    }

    #[test]
    fn seq_ack_rewrite_keeps_checksum_valid() {
        let mut f = v4_frame(b"some bytes");
        let m = parse(&f).unwrap();
        set_seq_ack(&mut f, &m, 0xdead_beef, 42);
        check_valid(&f);
        let m2 = parse(&f).unwrap();
        assert_eq!(m2.tcp().unwrap().seq, 0xdead_beef);
        assert_eq!(m2.tcp().unwrap().ack, 42);
        let mut g = v6_frame(b"odd");
        let m = parse(&g).unwrap();
        set_seq_ack(&mut g, &m, 1, 2);
        check_valid(&g);
    }

    #[test]
    fn sack_is_replaced_by_nops() {
        use etherparse::TcpOptionElement::*;
        let b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 3, 4)
            .ack(1)
            .options(&[
                Noop,
                Noop,
                SelectiveAcknowledgement((10, 20), [None, None, None]),
            ])
            .unwrap();
        let mut f = Vec::new();
        b.write(&mut f, b"p").unwrap();
        let m = parse(&f).unwrap();
        assert!(strip_sack(&mut f, &m));
        fix_tcp_checksum(&mut f, &m);
        check_valid(&f);
        let hl = m.tcp().unwrap().header_len;
        assert!(f[m.l4_off + 20..m.l4_off + hl].iter().all(|&b| b == 1));
        assert!(!strip_sack(&mut f, &m));
    }
}
