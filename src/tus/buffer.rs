//! The bytes of a resumable upload not stored yet: the tail read back and
//! the body since, up to one part. This module alone decides where they
//! wait (in memory, or the first of them in a [`Spill`] while their part is
//! in flight) and how a part is cut off their front.

use std::collections::VecDeque;

use bytes::Bytes;

use super::spill::Spill;

/// The bytes not stored yet. The first of them may be in a [`Spill`] while
/// their part is in flight; the rest are in memory, in order after them.
#[derive(Default)]
pub(super) struct Buffer {
    spill: Option<Spill>,
    chunks: VecDeque<Bytes>,
    /// All of them, spilled or not.
    len: usize,
}

impl Buffer {
    /// All the bytes held, spilled or not.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The chunks in memory, in order.
    pub(super) fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.chunks.iter()
    }

    /// Appends a chunk.
    pub(super) fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// The bytes in the spill.
    pub(super) fn spilled(&self) -> usize {
        self.spill.as_ref().map_or(0, Spill::len)
    }

    /// Moves the first `n` bytes held in memory (those right after the
    /// spilled ones) into the spill. Bytes that cannot be written stay in
    /// memory, in their place: the buffer is the same either way.
    pub(super) fn spill_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.spill.is_none() {
            match Spill::open() {
                Ok(spill) => self.spill = Some(spill),
                Err(e) => {
                    tracing::warn!(error = %e, "could not open a temporary file; the part stays in memory");
                    return;
                }
            }
        }
        let mut moved = self.take(n);
        self.len += n;
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let mut written = 0;
        for chunk in &moved {
            if let Err(e) = spill.append(chunk) {
                tracing::warn!(error = %e, "could not write to a temporary file; the part stays in memory");
                break;
            }
            written += 1;
        }
        for chunk in moved.drain(written..).rev() {
            self.chunks.push_front(chunk);
        }
    }

    /// Drops the first `n` bytes (a part storage has).
    pub(super) fn drop_front(&mut self, n: usize) {
        let spilled = self.spill.take().map_or(0, |s| s.len());
        self.len -= spilled;
        self.take(n - spilled);
    }

    /// Reads the spilled bytes back into memory (their part failed).
    pub(super) fn unspill(&mut self) -> std::io::Result<()> {
        if let Some(spill) = self.spill.take() {
            self.chunks.push_front(Bytes::from(spill.read_all()?));
        }
        Ok(())
    }

    /// The first `n` bytes, without taking them.
    pub(super) fn head(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        for c in &self.chunks {
            let want = n - out.len();
            if want == 0 {
                break;
            }
            out.extend_from_slice(&c[..want.min(c.len())]);
        }
        out
    }

    /// The byte at `i`, if it is in memory.
    pub(super) fn byte_at(&self, mut i: usize) -> Option<u8> {
        for c in &self.chunks {
            if i < c.len() {
                return Some(c[i]);
            }
            i -= c.len();
        }
        None
    }

    /// Takes exactly `n` bytes off the front of those in memory (a chunk
    /// straddling the cut is split, not copied).
    pub(super) fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut need = n;
        while need > 0 {
            let Some(first) = self.chunks.front_mut() else {
                break;
            };
            if first.len() <= need {
                need -= first.len();
                if let Some(c) = self.chunks.pop_front() {
                    out.push(c);
                }
            } else {
                out.push(first.split_to(need));
                need = 0;
            }
        }
        self.len -= n - need;
        out
    }
}
