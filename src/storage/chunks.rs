//! A queue of byte chunks that a writer holds back until a part is full
//! (the S3 part writer, a resumable upload's unstored bytes). This module
//! alone decides how the queue is cut at any byte: the chunk that straddles
//! the cut is split, never copied.

use std::collections::VecDeque;

use bytes::Bytes;

/// Chunks in order, and how many bytes they hold.
#[derive(Debug, Default)]
pub struct Chunks {
    queue: VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    /// The bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.queue.iter()
    }

    /// Appends a chunk.
    pub fn push_back(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.queue.push_back(chunk);
    }

    /// Puts a chunk back in front (bytes taken that could not be used).
    pub fn push_front(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.queue.push_front(chunk);
    }

    /// Takes the first `n` bytes (all of them, if fewer are held).
    pub fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut need = n.min(self.len);
        self.len -= need;
        while need > 0 {
            let Some(first) = self.queue.front_mut() else {
                break;
            };
            if first.len() <= need {
                need -= first.len();
                if let Some(chunk) = self.queue.pop_front() {
                    out.push(chunk);
                }
            } else {
                out.push(first.split_to(need));
                need = 0;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(parts: &[&'static [u8]]) -> Chunks {
        let mut chunks = Chunks::default();
        for p in parts {
            chunks.push_back(Bytes::from_static(p));
        }
        chunks
    }

    fn joined(taken: Vec<Bytes>) -> Vec<u8> {
        taken.concat()
    }

    #[test]
    fn a_cut_splits_the_straddling_chunk_and_keeps_the_order() {
        let mut chunks = of(&[b"abc", b"defg", b"h"]);
        assert_eq!(chunks.len(), 8);
        let first = chunks.take(5);
        assert_eq!(first.len(), 2, "one whole chunk and a piece of the next");
        assert_eq!(joined(first), b"abcde");
        assert_eq!(chunks.len(), 3);
        chunks.push_front(Bytes::from_static(b"E"));
        assert_eq!(joined(chunks.take(100)), b"Efgh");
        assert!(chunks.is_empty());
        assert!(chunks.take(1).is_empty());
    }
}
