//! Whether a text document is UTF-8: in its first bytes, and across the
//! chunks it streams in.

/// Whether `bytes` is valid UTF-8, allowing a sequence cut at the end when
/// more bytes follow.
pub(super) fn utf8_prefix_valid(bytes: &[u8], complete: bool) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => !complete && e.error_len().is_none(),
    }
}

/// Checks UTF-8 across chunk boundaries while a text document streams.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    /// Feeds the next bytes; `false` as soon as they cannot be UTF-8.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let joined;
        let bytes = if self.carry.is_empty() {
            chunk
        } else {
            joined = [self.carry.as_slice(), chunk].concat();
            joined.as_slice()
        };
        match std::str::from_utf8(bytes) {
            Ok(_) => {
                self.carry.clear();
                true
            }
            Err(e) if e.error_len().is_none() => {
                self.carry = bytes[e.valid_up_to()..].to_vec();
                true
            }
            Err(_) => false,
        }
    }

    /// Whether the stream ended on a whole character.
    pub fn finish(&self) -> bool {
        self.carry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_checked_across_chunks() {
        let text = "añb€c".as_bytes();
        let mut s = Utf8Stream::default();
        for b in text {
            assert!(s.feed(&[*b]));
        }
        assert!(s.finish());
        let mut s = Utf8Stream::default();
        assert!(s.feed(&text[..2]));
        assert!(!s.feed(b"\xff"));
    }
}

/// Properties over generated inputs (proptest), bounded to a few thousand
/// cases each so that they run with every `cargo test`.
#[cfg(test)]
mod fuzz {
    use proptest::{collection::vec, prelude::*};

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(4000)))]

        /// The streaming UTF-8 check agrees with std's over the whole
        /// bytes, however they are cut, and carries at most 3 bytes.
        #[test]
        fn the_streamed_utf8_check_agrees_with_the_whole_one(
            bytes in prop_oneof![
                vec(any::<u8>(), 0..300),
                any::<String>().prop_map(String::into_bytes),
                (any::<String>(), any::<usize>(), any::<u8>()).prop_map(|(s, i, b)| {
                    let mut v = s.into_bytes();
                    if !v.is_empty() {
                        let i = i % v.len();
                        v[i] = b;
                    }
                    v
                }),
            ],
            cuts in vec(1usize..8, 1..6),
        ) {
            let mut stream = Utf8Stream::default();
            let mut ok = true;
            let (mut at, mut i) = (0, 0);
            while at < bytes.len() && ok {
                let end = (at + cuts[i % cuts.len()]).min(bytes.len());
                ok = stream.feed(&bytes[at..end]);
                prop_assert!(stream.carry.len() <= 3);
                at = end;
                i += 1;
            }
            prop_assert_eq!(ok && stream.finish(), std::str::from_utf8(&bytes).is_ok());
        }
    }
}
