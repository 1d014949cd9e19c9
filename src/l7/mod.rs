//! L7 protocols: incremental request/reply parsers and the rule languages.
//! Parsers are pure: they look at contiguous bytes and report boundaries and
//! attributes, or `NeedMore`. The `stream` layer owns buffering and TCP.

pub mod http;
pub mod memcache;
#[cfg(test)]
mod props;
mod scan;

/// Result of an incremental parse over the bytes available so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    NeedMore,
    Complete(T),
    /// Not this protocol, or a shape we refuse (smuggling, bad lengths).
    Invalid(&'static str),
}

/// Bytes that belong to a request after its head (`head_len`). The head is
/// held until decided; the body flows (allowed) or is discarded (denied)
/// without being held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    /// HTTP chunked: use `http::ChunkedDecoder` to find the end.
    Chunked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<R> {
    pub head_len: usize,
    pub body: Body,
    pub req: R,
}

/// Framing of one reply unit on the server→client stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyBody {
    None,
    Length(u64),
    Chunked,
    /// Ends when the server closes.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHead {
    pub head_len: usize,
    pub body: ReplyBody,
    /// False when more reply units follow for the same request (HTTP 1xx,
    /// memcached `VALUE` lines before `END`).
    pub last: bool,
    /// The unit answers a request that expects no reply (binary quiet
    /// opcodes that did produce one): it does not complete a pending request.
    pub unsolicited: bool,
}

/// What the stream layer needs from a protocol. One value per connection
/// (it may keep state: memcached's text/binary mode, HTTP's last method).
pub trait Protocol: Send {
    type Request: Send + std::fmt::Debug;
    /// The protocol's compiled rule: a request only ever meets rules of its
    /// own protocol, so there is no "wrong protocol" case to handle.
    type Rule: Send + Sync + std::fmt::Debug;

    fn parse_request(&mut self, buf: &[u8]) -> Parse<RequestHead<Self::Request>>;
    /// Whether `parse_request` (or `parse_reply`) may answer other than
    /// `NeedMore` for `buf` when it did for `buf[..old]`: the stream
    /// re-parses a held head only then, so a head sent one byte per segment
    /// costs linear time, not quadratic. Must never be false where the
    /// answer could change.
    fn head_may_end(&self, buf: &[u8], old: usize) -> bool {
        let _ = (buf, old);
        true
    }
    /// Parse the next reply unit, for the oldest request still awaiting one.
    fn parse_reply(&mut self, buf: &[u8], req: Option<&Self::Request>) -> Parse<ReplyHead>;
    /// The denial the client gets, with the contents `reply` sets, or None
    /// when the request expects no reply.
    fn deny_reply(&self, req: &Self::Request, reply: &crate::config::DenyReply) -> Option<Vec<u8>>;
    /// What the client gets when its request head did not arrive in time
    /// (`EngineConfig::l7_head_timeout_ns`) before the connection ends;
    /// None: the connection is reset without a word.
    fn timeout_reply(&self) -> Option<Vec<u8>> {
        None
    }
    /// False for `noreply` / quiet requests.
    fn expects_reply(&self, req: &Self::Request) -> bool;
    /// Request attributes for the verdict log.
    fn subject(&self, req: &Self::Request) -> crate::log::Subject;
    /// The log subject of bytes that did not parse as a request.
    fn unparsed_subject(&self) -> crate::log::Subject;
    /// Whether one compiled rule accepts the request.
    fn rule_matches(&self, req: &Self::Request, rule: &Self::Rule) -> bool;
}
