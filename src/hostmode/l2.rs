//! MAC addresses in host mode. Frames re-entering the kernel get the TAP's
//! MAC as destination; frames the host sends get `--iface`'s MAC as source
//! and the next hop's MAC as destination: learned from the peer's own frames
//! (the client of an inbound connection), else the kernel's neighbour table
//! (a snapshot the control thread keeps current from rtnetlink), else the
//! default gateway's for destinations that are not on the link.

use std::collections::HashMap;
use std::net::IpAddr;

use super::rtnl::Rtnl;

pub type Mac = [u8; 6];

/// Bounded: a full table is cleared wholesale (it refills from traffic).
const MAX_LEARNED: usize = 65_536;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Neighbors {
    pub by_ip: HashMap<IpAddr, Mac>,
    pub gateway: Option<Mac>,
    /// Prefixes on `--iface`: an unknown next hop inside them is resolved by
    /// the kernel (ARP/ND), never sent to the gateway.
    pub onlink: Vec<ipnet::IpNet>,
    /// The default gateway's address, to follow its MAC as it changes.
    pub gateway_ip: Option<IpAddr>,
}

impl Neighbors {
    /// Whether a frame to `dst` can be addressed with this snapshot alone
    /// (as `L2::to_wire` decides, without learned MACs).
    pub fn resolves(&self, dst: &IpAddr) -> bool {
        self.by_ip.contains_key(dst)
            || (self.gateway.is_some() && !self.onlink.iter().any(|n| n.contains(dst)))
    }

    /// The kernel says `ip` is at `mac` now, or (None) no longer trusts
    /// what it had. Whether that changed anything.
    pub fn update(&mut self, ip: IpAddr, mac: Option<Mac>) -> bool {
        let before = match mac {
            Some(m) => self.by_ip.insert(ip, m),
            None => self.by_ip.remove(&ip),
        };
        if self.gateway_ip == Some(ip) {
            self.gateway = mac;
        }
        before != mac
    }
}

pub struct L2 {
    iface_mac: Mac,
    tap_mac: Mac,
    learned: HashMap<IpAddr, Mac>,
}

fn src_ip(frame: &[u8]) -> Option<IpAddr> {
    let (et, off) = ethertype(frame)?;
    ip_at(frame, et, off, true)
}

fn dst_ip(frame: &[u8]) -> Option<IpAddr> {
    let (et, off) = ethertype(frame)?;
    ip_at(frame, et, off, false)
}

fn ethertype(frame: &[u8]) -> Option<(u16, usize)> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    while et == 0x8100 || et == 0x88a8 {
        off += 4;
        et = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    }
    Some((et, off + 2))
}

fn ip_at(frame: &[u8], et: u16, off: usize, src: bool) -> Option<IpAddr> {
    match et {
        0x0800 => {
            let at = off + if src { 12 } else { 16 };
            let b: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        0x86dd => {
            let at = off + if src { 8 } else { 24 };
            let b: [u8; 16] = frame.get(at..at + 16)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

impl L2 {
    pub fn new(iface_mac: Mac, tap_mac: Mac) -> L2 {
        L2 {
            iface_mac,
            tap_mac,
            learned: HashMap::new(),
        }
    }

    /// Remember who sent a frame that arrived on `--iface`.
    pub fn learn(&mut self, frame: &[u8]) {
        let (Some(ip), Some(mac)) = (src_ip(frame), frame.get(6..12)) else {
            return;
        };
        let Ok(mac) = Mac::try_from(mac) else { return };
        if self.learned.get(&ip) == Some(&mac) {
            return;
        }
        if self.learned.len() >= MAX_LEARNED {
            self.learned.clear();
        }
        self.learned.insert(ip, mac);
    }

    /// Address a frame to the kernel through the TAP.
    pub fn to_host(&self, frame: &mut [u8]) {
        L2::address_to(frame, &self.tap_mac);
    }

    /// Set a frame's destination MAC.
    pub fn address_to(frame: &mut [u8], mac: &Mac) {
        if frame.len() >= 6 {
            frame[..6].copy_from_slice(mac);
        }
    }

    /// Address a frame the host sent to its next hop on `--iface`. Err when
    /// none is known: with the destination when the kernel should resolve it
    /// (on-link, not yet in its neighbour table, or off-link with no gateway
    /// resolved yet), None when it cannot be addressed at all (not IP,
    /// multicast). The link holds a frame of the first kind until the
    /// neighbour snapshot has its next hop (see `unresolved`), and drops
    /// one of the second.
    pub fn to_wire(&self, frame: &mut [u8], neighbors: &Neighbors) -> Result<(), Option<IpAddr>> {
        let Some(dst) = dst_ip(frame) else {
            return Err(None);
        };
        if dst.is_multicast() || dst == IpAddr::from([255, 255, 255, 255]) {
            return Err(None);
        }
        let known = self
            .learned
            .get(&dst)
            .or_else(|| neighbors.by_ip.get(&dst))
            .copied();
        let mac = match known {
            Some(m) => m,
            None if neighbors.onlink.iter().any(|n| n.contains(&dst)) => return Err(Some(dst)),
            None => neighbors.gateway.ok_or(Some(dst))?,
        };
        if frame.len() < 12 {
            return Err(None);
        }
        frame[..6].copy_from_slice(&mac);
        frame[6..12].copy_from_slice(&self.iface_mac);
        Ok(())
    }
}

/// Read the kernel's neighbours, default gateway and prefixes of link
/// `ifindex` (control thread only: a few dumps over rtnetlink).
pub fn read_neighbors(nl: &mut Rtnl, ifindex: u32) -> Result<Neighbors, String> {
    let e = |what: &str, err: std::io::Error| format!("read the {what} of link {ifindex}: {err}");
    let mut n = Neighbors::default();
    for (ip, mac) in nl.neighbours(ifindex).map_err(|x| e("neighbours", x))? {
        if let Some(mac) = mac {
            n.by_ip.insert(ip, mac);
        }
    }
    n.gateway_ip = nl
        .default_gateway(ifindex)
        .map_err(|x| e("default route", x))?;
    n.gateway = n.gateway_ip.and_then(|g| n.by_ip.get(&g).copied());
    for (a, len, _) in nl.addresses(ifindex).map_err(|x| e("addresses", x))? {
        if let Ok(net) = ipnet::IpNet::new(a, len) {
            n.onlink.push(net.trunc());
        }
    }
    Ok(n)
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in m.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn frame(src_mac: Mac, dst_mac: Mac, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(src, dst, 64)
            .udp(1, 2)
            .write(&mut v, b"x")
            .unwrap();
        v
    }

    #[test]
    fn replies_go_to_the_learned_client_mac() {
        let iface = [2, 0, 0, 0, 0, 1];
        let tap = [2, 0, 0, 0, 0, 2];
        let client = [2, 0, 0, 0, 0, 9];
        let mut l2 = L2::new(iface, tap);
        let mut inbound = frame(client, iface, [10, 0, 0, 9], [10, 0, 0, 1]);
        l2.learn(&inbound);
        l2.to_host(&mut inbound);
        assert_eq!(&inbound[..6], &tap);
        let mut reply = frame(tap, [2, 0xe7, 0, 0, 0, 0], [10, 0, 0, 1], [10, 0, 0, 9]);
        assert_eq!(l2.to_wire(&mut reply, &Neighbors::default()), Ok(()));
        assert_eq!(&reply[..6], &client);
        assert_eq!(&reply[6..12], &iface);
    }

    #[test]
    fn unknown_next_hop_uses_neighbours_then_gateway_then_fails() {
        let l2 = L2::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut f = frame([0; 6], [0; 6], [10, 0, 0, 1], [10, 0, 0, 7]);
        let seven: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(l2.to_wire(&mut f, &Neighbors::default()), Err(Some(seven)));
        let mut n = Neighbors::default();
        n.by_ip.insert(seven, [2, 0, 0, 0, 0, 7]);
        assert_eq!(l2.to_wire(&mut f, &n), Ok(()));
        assert_eq!(&f[..6], &[2, 0, 0, 0, 0, 7]);
        let mut n = Neighbors {
            by_ip: HashMap::new(),
            gateway: Some([2, 0, 0, 0, 0, 0xfe]),
            ..Default::default()
        };
        assert_eq!(l2.to_wire(&mut f, &n), Ok(()));
        assert_eq!(&f[..6], &[2, 0, 0, 0, 0, 0xfe]);
        // On the link: the kernel resolves it, the gateway is not a next hop.
        n.onlink.push("10.0.0.0/24".parse().unwrap());
        assert_eq!(l2.to_wire(&mut f, &n), Err(Some(seven)));
        let mut far = frame([0; 6], [0; 6], [10, 0, 0, 1], [192, 0, 2, 1]);
        assert_eq!(l2.to_wire(&mut far, &n), Ok(()));
        assert_eq!(&far[..6], &[2, 0, 0, 0, 0, 0xfe]);
        // Multicast never leaves through a unicast next hop.
        let mut mc = frame([0; 6], [0; 6], [10, 0, 0, 1], [224, 0, 0, 22]);
        assert_eq!(l2.to_wire(&mut mc, &n), Err(None));
    }

    /// The control thread's test of a snapshot agrees with `to_wire`.
    #[test]
    fn a_snapshot_resolves_what_to_wire_can_address() {
        let l2 = L2::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut n = Neighbors {
            onlink: vec!["10.0.0.0/24".parse().unwrap()],
            ..Default::default()
        };
        for (dst, in_table) in [
            ([10, 0, 0, 7], true),
            ([10, 0, 0, 8], false),
            ([192, 0, 2, 1], false),
        ] {
            let ip = IpAddr::from(dst);
            if in_table {
                n.by_ip.insert(ip, [2, 0, 0, 0, 0, 7]);
            }
            for gw in [None, Some([2, 0, 0, 0, 0, 0xfe])] {
                n.gateway = gw;
                let mut f = frame([0; 6], [0; 6], [10, 0, 0, 1], dst);
                assert_eq!(
                    n.resolves(&ip),
                    l2.to_wire(&mut f, &n).is_ok(),
                    "{ip} {gw:?}"
                );
            }
        }
    }

    #[test]
    fn events_keep_the_snapshot_and_the_gateway_current() {
        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.7".parse().unwrap();
        let mut n = Neighbors {
            gateway_ip: Some(gw),
            ..Default::default()
        };
        assert!(n.update(other, Some([2, 0, 0, 0, 0, 7])));
        assert_eq!(n.gateway, None);
        assert!(n.update(gw, Some([2, 0, 0, 0, 0, 1])));
        assert_eq!(n.gateway, Some([2, 0, 0, 0, 0, 1]));
        assert!(!n.update(gw, Some([2, 0, 0, 0, 0, 1])), "the same again");
        assert!(n.update(gw, Some([2, 0, 0, 0, 0, 2])), "a new MAC");
        assert_eq!(n.gateway, Some([2, 0, 0, 0, 0, 2]));
        assert!(n.update(gw, None));
        assert_eq!(n.gateway, None);
        assert!(!n.by_ip.contains_key(&gw));
        assert!(!n.update("10.0.0.9".parse().unwrap(), None), "never known");
    }

    #[test]
    fn garbage_frames_are_ignored() {
        let mut l2 = L2::new([0; 6], [0; 6]);
        l2.learn(&[1, 2, 3]);
        let mut short = [0u8; 4];
        l2.to_host(&mut short);
        assert_eq!(l2.to_wire(&mut short, &Neighbors::default()), Err(None));
        assert_eq!(parse_mac("02:00:00:00:00:0g"), None);
        assert_eq!(parse_mac("02:00:00:00:00:01"), Some([2, 0, 0, 0, 0, 1]));
    }
}
