//! Symmetric flow hash: both directions of a flow get the same value, so one
//! worker owns all of a flow's frames whatever queue the NIC chose.

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// FNV-1a over a byte slice, continuing from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Hash of (endpoint a, endpoint b, proto) that does not depend on their order.
fn symmetric(a_ip: &[u8], a_port: u16, b_ip: &[u8], b_port: u16, proto: u8) -> u64 {
    let a = (a_ip, a_port);
    let b = (b_ip, b_port);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = fnv(FNV_OFFSET, &[proto]);
    h = fnv(h, lo.0);
    h = fnv(h, &lo.1.to_be_bytes());
    h = fnv(h, hi.0);
    h = fnv(h, &hi.1.to_be_bytes());
    // fold so that the low bits used by `% workers` see every input bit
    h ^ (h >> 29) ^ (h >> 47)
}

/// The flow hash of an Ethernet frame, or `None` for non-IP and truncated
/// frames (those stay with the worker that received them).
///
/// TCP and UDP use addresses and ports. Fragments and other protocols use
/// addresses and protocol only, so that every fragment of a datagram lands
/// on one worker (ports are only in the first fragment).
pub fn flow_hash(frame: &[u8]) -> Option<u64> {
    let mut ethertype = be16(frame, 12)?;
    let mut off = 14usize;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(frame, off + 2)?;
        off += 4;
    }
    match ethertype {
        ETH_P_IPV4 => {
            let ip = frame.get(off..)?;
            let ihl = (*ip.first()? & 0x0f) as usize * 4;
            if ihl < 20 || ip.len() < ihl {
                return None;
            }
            let proto = ip[9];
            let frag = be16(ip, 6)? & 0x3fff; // MF flag + offset
            let (src, dst) = (&ip[12..16], &ip[16..20]);
            let (sp, dp) = if frag == 0 {
                ports(proto, &ip[ihl..])
            } else {
                (0, 0)
            };
            Some(symmetric(src, sp, dst, dp, proto))
        }
        ETH_P_IPV6 => {
            let ip = frame.get(off..off + 40)?;
            let (src, dst) = (&ip[8..24], &ip[24..40]);
            let rest = frame.get(off + 40..)?;
            // Extension headers are not walked: such frames hash by address.
            let next = ip[6];
            let (sp, dp) = ports(next, rest);
            Some(symmetric(src, sp, dst, dp, next))
        }
        _ => None,
    }
}

fn ports(proto: u8, l4: &[u8]) -> (u16, u16) {
    match proto {
        6 | 17 | 132 => match (be16(l4, 0), be16(l4, 2)) {
            (Some(s), Some(d)) => (s, d),
            _ => (0, 0),
        },
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, sp: u16, dp: u16, frag: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[14 + 6..14 + 8].copy_from_slice(&frag.to_be_bytes());
        f[14 + 9] = proto;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sp.to_be_bytes());
        f[36..38].copy_from_slice(&dp.to_be_bytes());
        f
    }

    fn v6(src: u8, dst: u8, proto: u8, sp: u16, dp: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        f[14] = 0x60;
        f[14 + 6] = proto;
        f[14 + 8] = 0xfd;
        f[14 + 23] = src;
        f[14 + 24] = 0xfd;
        f[14 + 39] = dst;
        f[54..56].copy_from_slice(&sp.to_be_bytes());
        f[56..58].copy_from_slice(&dp.to_be_bytes());
        f
    }

    #[test]
    fn both_directions_hash_equal_v4_and_v6() {
        let a = v4([10, 66, 0, 11], [10, 66, 0, 2], 6, 40000, 11211, 0);
        let b = v4([10, 66, 0, 2], [10, 66, 0, 11], 6, 11211, 40000, 0);
        assert_eq!(flow_hash(&a), flow_hash(&b));
        assert!(flow_hash(&a).is_some());
        let a = v6(0x11, 0x02, 17, 5000, 53);
        let b = v6(0x02, 0x11, 17, 53, 5000);
        assert_eq!(flow_hash(&a), flow_hash(&b));
    }

    #[test]
    fn different_flows_usually_differ() {
        let mut seen = std::collections::HashSet::new();
        for sp in 40000..40064u16 {
            seen.insert(flow_hash(&v4([10, 66, 0, 11], [10, 66, 0, 2], 6, sp, 80, 0)).unwrap() % 2);
        }
        // 64 source ports over two workers: both workers get some
        assert_eq!(seen.len(), 2);
        let tcp = flow_hash(&v4([1, 1, 1, 1], [2, 2, 2, 2], 6, 1, 2, 0));
        let udp = flow_hash(&v4([1, 1, 1, 1], [2, 2, 2, 2], 17, 1, 2, 0));
        assert_ne!(tcp, udp);
    }

    #[test]
    fn fragments_ignore_ports() {
        let first = v4([10, 0, 0, 1], [10, 0, 0, 2], 17, 1111, 2222, 0x2000);
        let later = v4([10, 0, 0, 1], [10, 0, 0, 2], 17, 0x4142, 0x4344, 0x00b9);
        assert_eq!(flow_hash(&first), flow_hash(&later));
    }

    #[test]
    fn vlan_tagged_is_parsed() {
        let plain = v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 1, 2, 0);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(flow_hash(&plain), flow_hash(&tagged));
    }

    #[test]
    fn non_ip_and_truncated_frames_have_no_hash() {
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(flow_hash(&arp), None);
        let f = v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 1, 2, 0);
        for n in 0..34 {
            assert_eq!(flow_hash(&f[..n]), None, "len {n}");
        }
        // bad IHL
        let mut bad = f.clone();
        bad[14] = 0x41;
        assert_eq!(flow_hash(&bad), None);
        // truncated L4 still hashes (by address), never panics
        assert!(flow_hash(&f[..35]).is_some());
    }
}
