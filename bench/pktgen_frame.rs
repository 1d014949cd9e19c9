//! The frames the packet generator sends: Ethernet + IPv4 + UDP or TCP, a
//! marker and a flow index in the payload, checksums filled. Shared with the
//! generator's test, which parses them with the enforcer's own packet view.

/// First bytes of every generated payload; the sink counts only these.
pub const MAGIC: &[u8; 8] = b"ENFPKTGN";
/// Ethernet + IPv4 + UDP; the smallest payload holds MAGIC and a flow index.
const MIN_UDP: usize = 14 + 20 + 8 + 12;
const MIN_TCP: usize = 14 + 20 + 20 + 12;
/// Flows differ in the source port: BASE_PORT + flow.
pub const BASE_PORT: u16 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub dport: u16,
    pub proto: Proto,
    /// Frame size on the wire, the 4-byte FCS included (64 = minimum frame).
    pub size: usize,
}

/// Buffer length of a frame of `size` on the wire (no FCS), at least the
/// headers and the marker.
pub fn frame_len(spec: &Spec) -> usize {
    let min = match spec.proto {
        Proto::Udp => MIN_UDP,
        Proto::Tcp => MIN_TCP,
    };
    spec.size.saturating_sub(4).max(min).max(60)
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut it = data.chunks_exact(2);
    for c in &mut it {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = it.remainder() {
        sum += (*b as u32) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frame of flow `flow` (source port BASE_PORT + flow % 50 000).
pub fn build(spec: &Spec, flow: u32) -> Vec<u8> {
    let len = frame_len(spec);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&spec.dst_mac);
    f[6..12].copy_from_slice(&spec.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let (l4_len, proto) = match spec.proto {
        Proto::Udp => (8, 17u8),
        Proto::Tcp => (20, 6u8),
    };
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&spec.src);
        ip[16..20].copy_from_slice(&spec.dst);
        let c = csum_fold(csum_add(0, ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let sport = BASE_PORT + (flow % 50_000) as u16;
    let l4 = 34;
    let pay = l4 + l4_len;
    f[pay..pay + 8].copy_from_slice(MAGIC);
    f[pay + 8..pay + 12].copy_from_slice(&flow.to_be_bytes());
    f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&spec.dport.to_be_bytes());
    match spec.proto {
        // UDP over IPv4 may leave its checksum 0: the sink does not check it
        // and the generator saves the work.
        Proto::Udp => {
            let ul = (len - l4) as u16;
            f[l4 + 4..l4 + 6].copy_from_slice(&ul.to_be_bytes());
        }
        Proto::Tcp => {
            // An established flow's data segment (ACK|PSH): what an L4 policy
            // forwards after picking the flow up mid-stream.
            f[l4 + 4..l4 + 8].copy_from_slice(&1u32.to_be_bytes());
            f[l4 + 8..l4 + 12].copy_from_slice(&1u32.to_be_bytes());
            f[l4 + 12] = 5 << 4;
            f[l4 + 13] = 0x18;
            f[l4 + 14..l4 + 16].copy_from_slice(&65535u16.to_be_bytes());
            let tl = (len - l4) as u16;
            let mut s = csum_add(0, &spec.src);
            s = csum_add(s, &spec.dst);
            s += 6 + tl as u32;
            s = csum_add(s, &f[l4..]);
            let c = csum_fold(s);
            f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        }
    }
    f
}

/// The flow index of a generated frame, or None for any other frame.
pub fn flow_of(frame: &[u8]) -> Option<u32> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    let l4 = 14 + ihl;
    let pay = match frame[14 + 9] {
        17 => l4 + 8,
        6 => l4 + ((*frame.get(l4 + 12)? >> 4) as usize) * 4,
        _ => return None,
    };
    let m = frame.get(pay..pay + 12)?;
    (m[..8] == MAGIC[..]).then(|| u32::from_be_bytes([m[8], m[9], m[10], m[11]]))
}
