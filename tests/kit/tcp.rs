//! The kit's TCP endpoint: a minimal TCP that sends with its own sequence
//! numbers and keeps the bytes it received in order, the way its
//! application would read them (out-of-order bytes wait, duplicates are
//! dropped). An endpoint that ends with the right bytes and everything
//! acknowledged saw a consistent connection, whatever the middle rewrote.
//! `Conn` is two of them that always agree (a capture's conversation).
//!
//! Also compiled into unit tests (`src/stream`, `src/engine`), next to the
//! frame builders (`super::frames`).
#![allow(dead_code)]

use std::collections::BTreeMap;

use enforcer::packet::view::parse;

use super::frames::{ep, rec, tcp, Ep, Rec, ACK, FIN, PSH, RST, SYN};

/// One end of the connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub me: Ep,
    pub peer: Ep,
    /// Next seq it sends (its own space).
    pub snd_nxt: u32,
    /// Next seq it expects from the peer (as it sees the peer's space).
    pub rcv_nxt: u32,
    /// Bytes received in order.
    pub data: Vec<u8>,
    /// Bytes beyond a gap, by seq; a FIN is kept as an empty entry in `fin_at`.
    ooo: BTreeMap<u32, Vec<u8>>,
    fin_at: Option<u32>,
    pub fin: bool,
    pub rst: bool,
    /// An RST arrived exactly at the next expected seq (acceptable per RFC 5961).
    pub rst_in_window: bool,
    /// Highest ack it got.
    pub acked: u32,
    /// Segments that arrived beyond a gap.
    pub out_of_order: usize,
}

impl Endpoint {
    /// An endpoint past the handshake: `snd_nxt` is its first data seq.
    pub fn new(me: Ep, peer: Ep, snd_nxt: u32, rcv_nxt: u32) -> Endpoint {
        Endpoint {
            me,
            peer,
            snd_nxt,
            rcv_nxt,
            data: Vec::new(),
            ooo: BTreeMap::new(),
            fin_at: None,
            fin: false,
            rst: false,
            rst_in_window: false,
            acked: snd_nxt,
            out_of_order: 0,
        }
    }

    /// A segment at its current seq and ack; SYN, FIN and payload advance
    /// `snd_nxt`.
    pub fn segment(&mut self, flags: u8, payload: &[u8]) -> Vec<u8> {
        let f = tcp(
            self.me,
            self.peer,
            self.snd_nxt,
            self.rcv_nxt,
            flags,
            payload,
        );
        let len = payload.len() as u32 + u32::from(flags & (SYN | FIN) != 0);
        self.snd_nxt = self.snd_nxt.wrapping_add(len);
        f
    }

    pub fn data_segment(&mut self, payload: &[u8]) -> Vec<u8> {
        self.segment(ACK | PSH, payload)
    }

    /// A pure ACK of what it received.
    pub fn ack(&self) -> Vec<u8> {
        tcp(self.me, self.peer, self.snd_nxt, self.rcv_nxt, ACK, &[])
    }

    pub fn got(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// Take a frame the middle sent towards it. True when the frame carried
    /// data or a FIN, which a real stack acknowledges.
    pub fn receive(&mut self, frame: &[u8]) -> bool {
        let m = parse(frame).expect("the middle sent an unparsable frame");
        let t = *m.tcp().expect("a TCP segment");
        assert_eq!(m.dst, self.me.ip, "addressed to this endpoint");
        if t.flags & RST != 0 {
            self.rst = true;
            self.rst_in_window = t.seq == self.rcv_nxt;
            return false;
        }
        if t.flags & ACK != 0 && (t.ack.wrapping_sub(self.acked) as i32) > 0 {
            self.acked = t.ack;
        }
        if t.flags & SYN != 0 {
            return false;
        }
        let p = m.payload(frame);
        if p.is_empty() && t.flags & FIN == 0 {
            return false;
        }
        // Anything but the next byte, or bytes entirely old (a retransmission
        // a real stack acknowledges again), is out of order.
        let end = t.seq.wrapping_add(p.len() as u32);
        if !p.is_empty() && t.seq != self.rcv_nxt && (end.wrapping_sub(self.rcv_nxt) as i32) > 0 {
            self.out_of_order += 1;
        }
        if !p.is_empty() {
            self.ooo.insert(t.seq, p.to_vec());
        }
        if t.flags & FIN != 0 {
            self.fin_at = Some(t.seq.wrapping_add(p.len() as u32));
        }
        self.reassemble();
        true
    }

    /// Move every byte that now continues the stream into `data`.
    fn reassemble(&mut self) {
        loop {
            let mut progressed = false;
            let keys: Vec<u32> = self.ooo.keys().copied().collect();
            for k in keys {
                let off = self.rcv_nxt.wrapping_sub(k) as i32;
                if off < 0 {
                    continue;
                }
                let d = self.ooo.remove(&k).unwrap_or_default();
                if (off as usize) < d.len() {
                    self.data.extend_from_slice(&d[off as usize..]);
                    self.rcv_nxt = self.rcv_nxt.wrapping_add((d.len() - off as usize) as u32);
                    progressed = true;
                }
            }
            if !self.fin && self.fin_at == Some(self.rcv_nxt) {
                self.fin = true;
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }
}

/// A TCP conversation as a capture holds it: each side's segments carry its
/// own seq and acknowledge everything the other sent so far.
pub struct Conn {
    pub client: Endpoint,
    pub server: Endpoint,
}

impl Conn {
    /// Before the handshake: client ISN 1000, server ISN 50 000.
    pub fn new(client: Ep, server: Ep) -> Conn {
        Conn {
            client: Endpoint::new(client, server, 1000, 0),
            server: Endpoint::new(server, client, 50_000, 0),
        }
    }

    pub fn syn(&self) -> Vec<u8> {
        tcp(
            self.client.me,
            self.server.me,
            self.client.snd_nxt,
            0,
            SYN,
            &[],
        )
    }

    pub fn syn_ack(&self) -> Vec<u8> {
        let (c, s) = (&self.client, &self.server);
        tcp(s.me, c.me, s.snd_nxt, c.snd_nxt + 1, SYN | ACK, &[])
    }

    /// SYN, SYN-ACK, ACK; afterwards seqs point past the SYNs.
    pub fn handshake(&mut self) -> Vec<Vec<u8>> {
        let (syn, syn_ack) = (self.syn(), self.syn_ack());
        self.client.snd_nxt += 1;
        self.server.snd_nxt += 1;
        vec![syn, syn_ack, self.from(true, ACK, &[])]
    }

    /// The handshake as capture records: 0, 1, 2 ns, on the sender's side.
    pub fn handshake_recs(&mut self) -> Vec<Rec> {
        let hs = self.handshake();
        hs.into_iter()
            .enumerate()
            .map(|(i, f)| rec(i as u64, (i % 2) as u8, f))
            .collect()
    }

    /// A segment from one side, acknowledging all the other sent.
    fn from(&mut self, client: bool, flags: u8, data: &[u8]) -> Vec<u8> {
        let (me, peer) = if client {
            (&mut self.client, &self.server)
        } else {
            (&mut self.server, &self.client)
        };
        me.rcv_nxt = peer.snd_nxt;
        me.segment(flags, data)
    }

    /// A segment to the server with any seq and ack (nothing advances).
    pub fn to_server(&self, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        tcp(self.client.me, self.server.me, seq, ack, flags, data)
    }

    pub fn to_client(&self, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        tcp(self.server.me, self.client.me, seq, ack, flags, data)
    }

    pub fn client_data(&mut self, data: &[u8]) -> Vec<u8> {
        self.from(true, ACK | PSH, data)
    }

    pub fn server_data(&mut self, data: &[u8]) -> Vec<u8> {
        self.from(false, ACK | PSH, data)
    }

    pub fn client_fin(&mut self) -> Vec<u8> {
        self.from(true, FIN | ACK, &[])
    }

    pub fn server_fin(&mut self) -> Vec<u8> {
        self.from(false, FIN | ACK, &[])
    }
}

/// A scripted conversation for replay captures: each side sends with its
/// own seq and acks what it received (the client's view includes injected
/// denials, the server's excludes denied requests).
pub struct Talk {
    pub c: Endpoint,
    pub s: Endpoint,
    pub frames: Vec<Vec<u8>>,
}

pub const TALK_C_ISN: u32 = 1000;
pub const TALK_S_ISN: u32 = 50_000;

impl Talk {
    /// The handshake of `client`:40000 with `server`:`port`.
    pub fn new(client: &str, server: &str, port: u16) -> Talk {
        let (ce, se) = (ep(client, 40_000), ep(server, port));
        let mut c = Endpoint::new(ce, se, TALK_C_ISN, 0);
        let mut s = Endpoint::new(se, ce, TALK_S_ISN, TALK_C_ISN + 1);
        let mut frames = vec![c.segment(SYN, &[]), s.segment(SYN | ACK, &[])];
        c.rcv_nxt = TALK_S_ISN + 1;
        frames.push(c.ack());
        Talk { c, s, frames }
    }

    /// A request the server receives.
    pub fn allowed(&mut self, req: &[u8], reply: &[u8]) {
        self.frames.push(self.c.data_segment(req));
        self.s.rcv_nxt += req.len() as u32;
        self.frames.push(self.s.data_segment(reply));
        self.c.rcv_nxt += reply.len() as u32;
        self.frames.push(self.c.ack());
    }

    /// A request the enforcer answers with a denial of `denial_len` bytes.
    pub fn denied(&mut self, req: &[u8], denial_len: usize) {
        self.frames.push(self.c.data_segment(req));
        self.c.rcv_nxt += denial_len as u32;
        self.frames.push(self.c.ack());
    }

    pub fn close(&mut self) {
        self.frames.push(self.c.segment(FIN | ACK, &[]));
        self.s.rcv_nxt += 1;
        self.frames.push(self.s.segment(FIN | ACK, &[]));
        self.c.rcv_nxt += 1;
        self.frames.push(self.c.ack());
    }
}
