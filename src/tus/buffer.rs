//! The bytes of a resumable upload's request not stored yet (what came
//! after the tail), up to about one part. This module alone decides where
//! they wait (in memory, or the first of them in a [`Spill`] while their
//! part is in flight) and how a part is cut off their front.

use bytes::Bytes;

use super::spill::Spill;
use crate::storage::chunks::Chunks;

/// The bytes not stored yet. The first of them may be in a [`Spill`] while
/// their part is in flight; the rest are in memory, in order after them.
#[derive(Default)]
pub(super) struct Buffer {
    spill: Option<Spill>,
    /// Those in memory.
    mem: Chunks,
}

impl Buffer {
    /// All the bytes held, spilled or not.
    pub(super) fn len(&self) -> usize {
        self.spilled() + self.mem.len()
    }

    /// The chunks in memory, in order.
    pub(super) fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.mem.iter()
    }

    /// Appends a chunk.
    pub(super) fn push(&mut self, chunk: Bytes) {
        self.mem.push_back(chunk);
    }

    /// Puts bytes in front of all the others (the end of a tail that a
    /// part did not take); nothing may be spilled.
    pub(super) fn push_front(&mut self, chunk: Bytes) {
        debug_assert!(self.spill.is_none());
        self.mem.push_front(chunk);
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
        let mut moved = self.mem.take(n);
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
            self.mem.push_front(chunk);
        }
    }

    /// Drops the first `n` bytes (a part storage has).
    pub(super) fn drop_front(&mut self, n: usize) {
        let spilled = self.spill.take().map_or(0, |s| s.len());
        self.mem.take(n - spilled);
    }

    /// Reads the spilled bytes back into memory (their part failed).
    pub(super) fn unspill(&mut self) -> std::io::Result<()> {
        if let Some(spill) = self.spill.take() {
            self.mem.push_front(Bytes::from(spill.read_all()?));
        }
        Ok(())
    }

    /// A copy of `range` of the bytes in memory (as far as they go),
    /// without taking them.
    pub(super) fn copy(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(range.len().min(self.mem.len()));
        let mut start = 0;
        for chunk in self.mem.iter() {
            let end = start + chunk.len();
            let (from, to) = (range.start.max(start), range.end.min(end));
            if from < to {
                out.extend_from_slice(&chunk[from - start..to - start]);
            }
            if end >= range.end {
                break;
            }
            start = end;
        }
        out
    }

    /// Takes exactly `n` bytes off the front of those in memory.
    pub(super) fn take(&mut self, n: usize) -> Vec<Bytes> {
        self.mem.take(n)
    }
}
