//! The bytes of a resumable upload not stored yet: the tail read back and
//! the body since, up to one part. This module alone decides where they
//! wait (in memory, or the first of them in a [`Spill`] while their part is
//! in flight) and how a part is cut off their front.

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

    /// The first `n` bytes in memory, without taking them.
    pub(super) fn head(&self, n: usize) -> Vec<u8> {
        self.mem.head(n)
    }

    /// The byte at `i` of those in memory, if it is there.
    pub(super) fn byte_at(&self, i: usize) -> Option<u8> {
        self.mem.byte_at(i)
    }

    /// Takes exactly `n` bytes off the front of those in memory.
    pub(super) fn take(&mut self, n: usize) -> Vec<Bytes> {
        self.mem.take(n)
    }
}
