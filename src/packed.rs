//! Short byte strings held in the value that owns them: one string
//! (`Inline`) or a list of them back to back (`Packed`), up to `N` bytes in
//! place and on the heap beyond. A parsed request and its log event carry
//! their head, host, path and keys this way, so that the usual request is
//! parsed and logged without allocating.

use smallvec::SmallVec;

/// One byte string: up to `N` bytes in place, longer on the heap.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Inline<const N: usize>(SmallVec<[u8; N]>);

impl<const N: usize> Inline<N> {
    pub fn new(b: &[u8]) -> Self {
        Inline(SmallVec::from_slice(b))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// On the heap, not in place.
    pub fn spilled(&self) -> bool {
        self.0.spilled()
    }
}

impl<const N: usize> std::fmt::Debug for Inline<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.bytes().escape_ascii().to_string())
    }
}

/// A list of byte strings back to back in one buffer, each after its
/// length: one byte below 255, else 255 and eight bytes, little endian.
/// Up to `N` bytes of that encoding in place; a longer list moves to the
/// heap whole. Equal lists have equal encodings, wherever they are held.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Packed<const N: usize>(SmallVec<[u8; N]>);

impl<const N: usize> Packed<N> {
    pub const fn new() -> Self {
        Packed(SmallVec::new_const())
    }

    /// A list of the one string `s`: what `push` on an empty list makes, in
    /// one copy when it fits in place (a push is a length check and a
    /// `reserve` per part, as costly as the rest of a memcached `set`'s parse).
    #[inline]
    pub fn one(s: &[u8]) -> Self {
        let n = s.len();
        if n < N && n < usize::from(u8::MAX) {
            let mut buf = [0u8; N];
            buf[0] = n as u8;
            buf[1..=n].copy_from_slice(s);
            return Packed(SmallVec::from_buf_and_len(buf, n + 1));
        }
        let mut p = Self::new();
        p.push(s);
        p
    }

    pub fn push(&mut self, s: &[u8]) {
        match u8::try_from(s.len()) {
            Ok(n) if n < u8::MAX => self.0.push(n),
            _ => {
                self.0.push(u8::MAX);
                self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
            }
        }
        self.0.extend_from_slice(s);
    }

    pub fn iter(&self) -> PackedIter<'_> {
        PackedIter(&self.0)
    }

    /// The number of strings.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The strings of a `Packed`, in order.
#[derive(Debug, Clone)]
pub struct PackedIter<'a>(&'a [u8]);

impl<'a> Iterator for PackedIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&n, rest) = self.0.split_first()?;
        let (n, rest) = if n < u8::MAX {
            (usize::from(n), rest)
        } else {
            let (len, rest) = rest.split_at_checked(8)?;
            (u64::from_le_bytes(len.try_into().ok()?) as usize, rest)
        };
        let (s, rest) = rest.split_at_checked(n)?;
        self.0 = rest;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_a_push_on_an_empty_list() {
        for n in [0, 1, 6, 7, 8, 9, 254, 255, 300] {
            let b: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut pushed = Packed::<8>::new();
            pushed.push(&b);
            let one = Packed::<8>::one(&b);
            assert!(one == pushed, "{n}");
            assert_eq!(one.iter().collect::<Vec<_>>(), [&b[..]], "{n}");
            assert_eq!(one.0.spilled(), n + 1 > 8, "{n}");
        }
    }

    #[test]
    fn inline_holds_any_length() {
        for n in [0, 7, 8, 9, 300] {
            let b = vec![b'x'; n];
            let i = Inline::<8>::new(&b);
            assert_eq!(i.bytes(), &b[..]);
            assert_eq!(i.spilled(), n > 8, "{n}");
        }
    }
}
