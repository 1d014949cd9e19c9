//! rtnetlink: how host mode reads and changes the kernel's routing state
//! (links, addresses, neighbours, routes, rules) without running iproute2.
//! The rust-netlink crates build and parse the messages; this module holds
//! the request socket (blocking, one request at a time, control thread
//! only), turns the kernel's answers into errors that name the object, and
//! the subscription socket that tells the control thread when `--iface`'s
//! neighbours, routes or addresses change.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub type Mac = [u8; 6];

/// `FIB_RULE_FIND_SADDR` (linux/fib_rules.h; the crate has no name for
/// it): the rule also applies to a route lookup that has no source address
/// yet, when the source the kernel would pick for the rule's route is the
/// rule's `from` (why host mode needs it: `routes::HostRouting`).
pub const FIB_RULE_FIND_SADDR: u32 = 0x0001_0000;

/// A datagram from the kernel fits: dumps come in parts of at most a few
/// pages, events one message each.
const RECV_BUF: usize = 64 * 1024;

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn host_len(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// One request as the bytes sent to the kernel.
pub fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    hdr.sequence_number = seq;
    let mut m = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// The messages in one datagram from the kernel. One the crate cannot
/// parse is left out (nothing host mode uses is in it); a datagram whose
/// lengths do not add up ends where they stop making sense.
pub fn decode(mut buf: &[u8]) -> Vec<NetlinkMessage<RouteNetlinkMessage>> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]) {
            out.push(m);
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// `from ADDR lookup TABLE priority PRIO`. IPv6 rules carry
/// `FIB_RULE_FIND_SADDR`; IPv4 routes again once a source is chosen, so
/// its rules stay plain.
pub fn rule(addr: IpAddr, table: u32, priority: u32) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family(&addr);
    m.header.src_len = host_len(&addr);
    m.header.action = RuleAction::ToTable;
    if addr.is_ipv6() {
        m.header.flags = RuleFlags::from_bits_retain(FIB_RULE_FIND_SADDR);
    }
    m.attributes = vec![
        RuleAttribute::Source(addr),
        RuleAttribute::Table(table),
        RuleAttribute::Priority(priority),
    ];
    m
}

/// The table a rule points at (the header holds only tables below 256).
pub fn rule_table(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(m.header.table as u32)
}

/// `default via GW dev OIF table TABLE` (IPv4: `onlink`, the gateway is
/// in no prefix of the device).
pub fn default_route(gw: IpAddr, oif: u32, table: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(&gw);
    m.header.table = RouteHeader::RT_TABLE_UNSPEC;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    if gw.is_ipv4() {
        m.header.flags = RouteFlags::Onlink;
    }
    m.attributes = vec![
        RouteAttribute::Table(table),
        RouteAttribute::Gateway(RouteAddress::from(gw)),
        RouteAttribute::Oif(oif),
    ];
    m
}

pub fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(m.header.table as u32)
}

fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// The gateway of a default route of the main table through `ifindex`.
pub fn default_gateway(m: &RouteMessage, ifindex: u32) -> Option<IpAddr> {
    if m.header.destination_prefix_length != 0
        || m.header.kind != RouteType::Unicast
        || route_table(m) != RouteHeader::RT_TABLE_MAIN as u32
        || route_oif(m) != Some(ifindex)
    {
        return None;
    }
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Gateway(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

fn neighbour(ifindex: u32, ip: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(&ip);
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.attributes = vec![NeighbourAttribute::Destination(match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    })];
    m
}

/// `IP lladdr MAC dev IFINDEX nud permanent`.
pub fn permanent_neighbour(ifindex: u32, ip: IpAddr, mac: Mac) -> NeighbourMessage {
    let mut m = neighbour(ifindex, ip);
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

/// `IP dev IFINDEX use`: the kernel resolves IP (ARP/ND) as if a packet
/// were waiting for it; an entry it knows already is left as it is.
pub fn use_neighbour(ifindex: u32, ip: IpAddr) -> NeighbourMessage {
    let mut m = neighbour(ifindex, ip);
    m.header.flags = NeighbourFlags::Use;
    m
}

/// A neighbour entry of `ifindex` as the kernel reports it: its address,
/// and its MAC while the kernel holds one it trusts (NDA_LLADDR comes only
/// with a valid state: reachable, stale, delay, probe, permanent).
pub fn neighbour_entry(m: &NeighbourMessage, ifindex: u32) -> Option<(IpAddr, Option<Mac>)> {
    if m.header.ifindex != ifindex {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    Some((ip?, mac))
}

/// An address of a link: (address, prefix length, global scope).
pub fn address(m: &AddressMessage) -> Option<(IpAddr, u8, bool)> {
    // IPv4 names the local address IFA_LOCAL (IFA_ADDRESS is the peer's on
    // point-to-point links); IPv6 has IFA_ADDRESS only.
    let mut local = None;
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => addr = Some(*a),
            _ => {}
        }
    }
    Some((
        local.or(addr)?,
        m.header.prefix_len,
        m.header.scope == AddressScope::Universe,
    ))
}

/// The link `ifindex` with `attributes`, `up` if asked.
pub fn link(ifindex: u32, up: bool, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    if up {
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
    }
    m.attributes = attributes;
    m
}

/// A veth pair `name` / `peer`, both with `queues` RX and TX queues (a
/// socket on a veth needs its peer to have no more TX queues than it has
/// RX queues). Created down, in this namespace.
pub fn veth(name: &str, peer: &str, queues: u32) -> LinkMessage {
    use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo};
    let q = |n: &str| {
        vec![
            LinkAttribute::IfName(n.to_string()),
            LinkAttribute::NumTxQueues(queues),
            LinkAttribute::NumRxQueues(queues),
        ]
    };
    let mut far = LinkMessage::default();
    far.attributes = q(peer);
    let mut m = LinkMessage::default();
    m.attributes = q(name);
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(far))),
    ]));
    m
}

/// No IPv6 link-local address (so no DAD, no router solicitations).
pub fn no_addrgen(ifindex: u32) -> LinkMessage {
    link(
        ifindex,
        false,
        vec![LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )])],
    )
}

/// The index of link `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("bad interface name {name:?}"))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("interface {name}: {}", io::Error::last_os_error())),
        i => Ok(i),
    }
}

fn open(groups: &[u32]) -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    for g in groups {
        s.add_membership(*g)?;
    }
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

/// The request socket.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, String> {
        let sock = open(&[]).map_err(|e| format!("rtnetlink socket: {e}"))?;
        // The kernel answers a request at once; a bound on the wait keeps a
        // start or a stop from hanging on a lost answer all the same.
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a timeval of the stated size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = encode(msg, flags, self.seq);
        self.sock.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// The next datagram's messages that answer `seq`.
    fn recv(&mut self, seq: u32) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        loop {
            self.buf.clear();
            // MSG_TRUNC: the length returned is the datagram's, so that one
            // cut short by the buffer is seen, not parsed in part.
            let n = self.sock.recv(&mut self.buf, libc::MSG_TRUNC)?;
            if n > self.buf.len() {
                return Err(io::Error::other("netlink answer larger than the buffer"));
            }
            let ms: Vec<_> = decode(&self.buf)
                .into_iter()
                .filter(|m| m.header.sequence_number == seq)
                .collect();
            if !ms.is_empty() {
                return Ok(ms);
            }
        }
    }

    /// A request that changes something; Ok once the kernel acknowledged
    /// it, else the kernel's error.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        loop {
            for m in self.recv(seq)? {
                if let NetlinkPayload::Error(e) = m.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
            }
        }
    }

    /// Everything a dump request returns. A dump that a change interrupted
    /// (the kernel flags it) is asked again, a few times.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..3 {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'parts: loop {
                for m in self.recv(seq)? {
                    interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
                    match m.payload {
                        NetlinkPayload::Done(_) => break 'parts,
                        NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                        NetlinkPayload::InnerMessage(i) => out.push(i),
                        _ => {}
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(io::Error::other("dump interrupted by changes three times"))
    }

    /// Add a rule; it must not exist yet.
    pub fn add_rule(&mut self, m: RuleMessage) -> io::Result<()> {
        self.request(RouteNetlinkMessage::NewRule(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Delete every rule of both families that points at `table`; returns
    /// how many went.
    pub fn delete_rules(&mut self, table: u32) -> io::Result<usize> {
        let mut n = 0;
        for m in self.dump(RouteNetlinkMessage::GetRule(RuleMessage::default()))? {
            if let RouteNetlinkMessage::NewRule(r) = m {
                if rule_table(&r) == table {
                    // The rule as dumped names it exactly (as `ip rule flush`).
                    self.request(RouteNetlinkMessage::DelRule(r), 0)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Add or replace a route.
    pub fn replace_route(&mut self, m: RouteMessage) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Delete every route of `table` (both families); returns how many.
    pub fn flush_table(&mut self, table: u32) -> io::Result<usize> {
        let mut n = 0;
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = fam;
            for m in self.dump(RouteNetlinkMessage::GetRoute(q))? {
                if let RouteNetlinkMessage::NewRoute(r) = m {
                    if route_table(&r) == table {
                        match self.request(RouteNetlinkMessage::DelRoute(r), 0) {
                            Ok(()) => n += 1,
                            // Gone with another (a device's routes go with it).
                            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        Ok(n)
    }

    /// Add or replace a neighbour entry.
    pub fn replace_neighbour(&mut self, m: NeighbourMessage) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    pub fn set_link(&mut self, m: LinkMessage) -> io::Result<()> {
        self.request(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Create a link; it must not exist yet.
    pub fn new_link(&mut self, m: LinkMessage) -> io::Result<()> {
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    pub fn delete_link(&mut self, ifindex: u32) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::DelLink(link(ifindex, false, vec![])),
            0,
        )
    }

    /// The neighbour entries of `ifindex` (both families).
    pub fn neighbours(&mut self, ifindex: u32) -> io::Result<Vec<(IpAddr, Option<Mac>)>> {
        Ok(self
            .dump(RouteNetlinkMessage::GetNeighbour(
                NeighbourMessage::default(),
            ))?
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => neighbour_entry(n, ifindex),
                _ => None,
            })
            .collect())
    }

    /// The default gateway through `ifindex`: IPv4's if it has one, else
    /// IPv6's.
    pub fn default_gateway(&mut self, ifindex: u32) -> io::Result<Option<IpAddr>> {
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = fam;
            let gw = self
                .dump(RouteNetlinkMessage::GetRoute(q))?
                .iter()
                .find_map(|m| match m {
                    RouteNetlinkMessage::NewRoute(r) => default_gateway(r, ifindex),
                    _ => None,
                });
            if gw.is_some() {
                return Ok(gw);
            }
        }
        Ok(None)
    }

    /// The addresses of `ifindex`: (address, prefix length, global scope).
    pub fn addresses(&mut self, ifindex: u32) -> io::Result<Vec<(IpAddr, u8, bool)>> {
        Ok(self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == ifindex => address(a),
                _ => None,
            })
            .collect())
    }
}

/// What changed on a link, as the subscription tells it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Neighbour entries, in order: the MAC now trusted, or None (the
    /// entry went, or is not valid any more).
    pub neighbours: Vec<(IpAddr, Option<Mac>)>,
    /// Routes or addresses of the link changed, or messages were lost:
    /// read everything again.
    pub reread: bool,
}

/// Sort one event into `c`: the link's neighbours one by one, its routes
/// and addresses as "read again", anything of another link not at all.
pub fn classify(m: &RouteNetlinkMessage, ifindex: u32, c: &mut Changes) {
    match m {
        RouteNetlinkMessage::NewNeighbour(n) => {
            if let Some(e) = neighbour_entry(n, ifindex) {
                c.neighbours.push(e);
            }
        }
        RouteNetlinkMessage::DelNeighbour(n) => {
            if let Some((ip, _)) = neighbour_entry(n, ifindex) {
                c.neighbours.push((ip, None));
            }
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            c.reread |= route_oif(r) == Some(ifindex)
                && route_table(r) == RouteHeader::RT_TABLE_MAIN as u32;
        }
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            c.reread |= a.header.index == ifindex;
        }
        _ => {}
    }
}

/// The subscription: neighbours, routes and addresses of both families.
pub struct Watch {
    sock: Socket,
    buf: Vec<u8>,
}

impl Watch {
    pub fn open() -> Result<Watch, String> {
        let sock = open(&[
            libc::RTNLGRP_NEIGH,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_IPV6_ROUTE,
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV6_IFADDR,
        ])
        .map_err(|e| format!("rtnetlink subscription: {e}"))?;
        sock.set_non_blocking(true)
            .map_err(|e| format!("rtnetlink subscription: {e}"))?;
        Ok(Watch {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// For poll(): readable when events wait.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Every event waiting, sorted for `ifindex`.
    pub fn changes(&mut self, ifindex: u32) -> Changes {
        let mut c = Changes::default();
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                // An event cut short by the buffer: read everything again.
                Ok(n) if n > self.buf.len() => c.reread = true,
                Ok(_) => {
                    for m in decode(&self.buf) {
                        if let NetlinkPayload::InnerMessage(i) = &m.payload {
                            classify(i, ifindex, &mut c);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return c,
                // ENOBUFS: the kernel dropped events for us; any other
                // error leaves us as unsure. Either way, read again.
                Err(_) => {
                    c.reread = true;
                    return c;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn hdr(len: usize, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v
    }

    fn attr(v: &mut Vec<u8>, kind: u16, val: &[u8]) {
        v.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(val);
        v.resize(v.len().next_multiple_of(4), 0);
    }

    /// The IPv6 rule, byte for byte as linux/fib_rules.h lays it out:
    /// struct fib_rule_hdr (family, dst_len, src_len, tos, table, res1,
    /// res2, action, flags), then FRA_SRC (2), FRA_TABLE (15),
    /// FRA_PRIORITY (6).
    #[test]
    fn the_ipv6_rule_carries_find_saddr() {
        let a: Ipv6Addr = "fd66::2".parse().unwrap();
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let got = encode(
            RouteNetlinkMessage::NewRule(rule(IpAddr::V6(a), 0xe7f0, 90)),
            flags,
            7,
        );
        let mut body = vec![libc::AF_INET6 as u8, 0, 128, 0, 0, 0, 0, 1];
        body.extend_from_slice(&FIB_RULE_FIND_SADDR.to_ne_bytes());
        attr(&mut body, 2, &a.octets());
        attr(&mut body, 15, &0xe7f0u32.to_ne_bytes());
        attr(&mut body, 6, &90u32.to_ne_bytes());
        let mut want = hdr(16 + body.len(), 32, flags, 7); // RTM_NEWRULE
        want.extend_from_slice(&body);
        assert_eq!(got, want);
    }

    #[test]
    fn the_ipv4_rule_is_plain() {
        let got = encode(
            RouteNetlinkMessage::NewRule(rule("10.66.0.2".parse().unwrap(), 0xe7f0, 90)),
            NLM_F_REQUEST,
            1,
        );
        // family, dst_len, src_len … action, then flags 0.
        assert_eq!(&got[16..24], &[libc::AF_INET as u8, 0, 32, 0, 0, 0, 0, 1]);
        assert_eq!(&got[24..28], &0u32.to_ne_bytes());
        assert_eq!(&got[28..36], &[8, 0, 2, 0, 10, 66, 0, 2]);
    }

    /// struct rtmsg: family, dst_len, src_len, tos, table, protocol,
    /// scope, type, flags; then RTA_TABLE (15), RTA_GATEWAY (5), RTA_OIF (4).
    /// A veth pair: the host end's name and queues, and inside
    /// IFLA_LINKINFO (18) the kind and VETH_INFO_PEER with the far end's
    /// name and the same queues.
    #[test]
    fn a_veth_pair_names_both_ends_and_their_queues() {
        let b = encode(RouteNetlinkMessage::NewLink(veth("enf2", "enfx2", 3)), 0, 1);
        let find = |needle: &[u8]| b.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(find(b"enf2\0"), 1);
        assert_eq!(find(b"enfx2\0"), 1);
        assert_eq!(find(b"veth\0"), 1);
        // IFLA_NUM_TX_QUEUES (31) and IFLA_NUM_RX_QUEUES (32), both ends.
        for t in [31u16, 32] {
            let mut attr = vec![8u8, 0];
            attr.extend(t.to_ne_bytes());
            attr.extend(3u32.to_ne_bytes());
            assert_eq!(find(&attr), 2, "attribute {t}");
        }
    }

    #[test]
    fn the_default_route_into_the_tap() {
        let got = encode(
            RouteNetlinkMessage::NewRoute(default_route(
                "169.254.231.1".parse().unwrap(),
                9,
                0xe7f0,
            )),
            NLM_F_REQUEST,
            1,
        );
        let mut body = vec![libc::AF_INET as u8, 0, 0, 0, 0, 3, 0, 1];
        body.extend_from_slice(&4u32.to_ne_bytes()); // RTNH_F_ONLINK
        attr(&mut body, 15, &0xe7f0u32.to_ne_bytes());
        attr(&mut body, 5, &[169, 254, 231, 1]);
        attr(&mut body, 4, &9u32.to_ne_bytes());
        assert_eq!(&got[4..6], &24u16.to_ne_bytes(), "RTM_NEWROUTE");
        assert_eq!(&got[16..], &body[..]);
    }

    /// A kernel RTM_NEWNEIGH as it arrives: struct ndmsg (family, pad,
    /// ifindex, state, flags, type), NDA_DST (1), NDA_LLADDR (2),
    /// NDA_CACHEINFO (3), an attribute from a newer kernel (99).
    fn newneigh(ifindex: u32, state: u16, lladdr: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![libc::AF_INET6 as u8, 0, 0, 0];
        body.extend_from_slice(&ifindex.to_ne_bytes());
        body.extend_from_slice(&state.to_ne_bytes());
        body.extend_from_slice(&[0, 1]);
        attr(
            &mut body,
            1,
            &"fd66::11".parse::<Ipv6Addr>().unwrap().octets(),
        );
        if let Some(l) = lladdr {
            attr(&mut body, 2, l);
        }
        attr(&mut body, 3, &[0; 16]);
        attr(&mut body, 99, &[1, 2, 3, 4]);
        let mut m = hdr(16 + body.len(), 28, 0, 0);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn neighbour_events_are_parsed_and_sorted_by_link() {
        let ip: IpAddr = "fd66::11".parse().unwrap();
        let mac = [2, 0, 0, 0, 0, 0x11];
        // Two messages in one datagram, and a third for another link.
        let mut dgram = newneigh(4, 0x02, Some(&mac)); // NUD_REACHABLE
        dgram.extend(newneigh(4, 0x20, None)); // NUD_FAILED
        dgram.extend(newneigh(5, 0x02, Some(&mac)));
        let ms = decode(&dgram);
        assert_eq!(ms.len(), 3);
        let mut c = Changes::default();
        for m in &ms {
            if let NetlinkPayload::InnerMessage(i) = &m.payload {
                classify(i, 4, &mut c);
            }
        }
        assert_eq!(
            c,
            Changes {
                neighbours: vec![(ip, Some(mac)), (ip, None)],
                reread: false
            }
        );
    }

    #[test]
    fn a_route_or_address_change_of_the_link_means_read_again() {
        let mut r = RouteMessage::default();
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.attributes = vec![RouteAttribute::Oif(4)];
        let mut c = Changes::default();
        classify(&RouteNetlinkMessage::NewRoute(r.clone()), 5, &mut c);
        assert!(!c.reread, "another link's route");
        // Our own table's routes (on the TAP) are not `--iface`'s either.
        let mut ours = r.clone();
        ours.attributes.push(RouteAttribute::Table(0xe7f0));
        classify(&RouteNetlinkMessage::NewRoute(ours), 4, &mut c);
        assert!(!c.reread);
        classify(&RouteNetlinkMessage::DelRoute(r), 4, &mut c);
        assert!(c.reread);
        let mut c = Changes::default();
        let mut a = AddressMessage::default();
        a.header.index = 4;
        classify(&RouteNetlinkMessage::NewAddress(a), 4, &mut c);
        assert!(c.reread);
    }

    #[test]
    fn default_gateway_only_from_the_main_table_of_the_link() {
        let gw: IpAddr = "10.66.0.1".parse().unwrap();
        let mut r = RouteMessage::default();
        r.header.kind = RouteType::Unicast;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::from(gw)),
            RouteAttribute::Oif(4),
        ];
        assert_eq!(default_gateway(&r, 4), Some(gw));
        assert_eq!(default_gateway(&r, 5), None);
        let mut net = r.clone();
        net.header.destination_prefix_length = 24;
        assert_eq!(default_gateway(&net, 4), None);
        let ours = default_route(gw, 4, 0xe7f0);
        assert_eq!(default_gateway(&ours, 4), None);
    }

    /// An ack and a refusal, as the kernel sends them: NLMSG_ERROR (2)
    /// with 0 or a negative errno, then the request's header.
    #[test]
    fn acks_and_errors_decode() {
        for (errno, want) in [(0i32, None), (-libc::EEXIST, Some(libc::EEXIST))] {
            let mut m = hdr(36, 2, 0, 3);
            m.extend_from_slice(&errno.to_ne_bytes());
            m.extend(hdr(16, 32, 0, 3));
            let ms = decode(&m);
            assert_eq!(ms.len(), 1);
            match &ms[0].payload {
                NetlinkPayload::Error(e) => {
                    assert_eq!(e.code.map(|c| -c.get()), want);
                }
                p => panic!("{p:?}"),
            }
        }
        // Garbage and a truncated message decode to nothing, not a panic.
        assert!(decode(&[0xff; 7]).is_empty());
        let mut short = hdr(64, 28, 0, 0);
        short.extend_from_slice(&[0; 8]);
        assert!(decode(&short).is_empty());
    }
}
