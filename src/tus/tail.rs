//! A resumable upload's tail: its bytes past the last whole part, kept in
//! storage as a list of segment objects so that a PATCH stores only its own
//! bytes instead of reading back and rewriting the whole tail. This module
//! alone decides which segments there are, what a new one absorbs, and how
//! they are read back.
//!
//! A PATCH whose bytes do not complete a part stores them as one new
//! segment, which absorbs the newest segments while the newest is at most
//! twice as large as what it holds so far (merged as a binary counter
//! carries). After that each segment is more than twice as large as the
//! next, so a tail of up to a part has at most log2(part) + 1 segments
//! (24 for 8 MiB, one byte per PATCH). A byte already stored is rewritten
//! only into a segment at least 1.5 times as large as the one it leaves
//! (what absorbs a segment of `s` bytes holds at least `s / 2`), so at most
//! log1.5(part / PATCH size) times: about 40 times for one-byte PATCHes
//! into 8 MiB, 22 for 1 KiB ones. A PATCH's storage work is thus its own
//! bytes times a logarithmic factor, amortised; the tail is read back whole
//! only by the request whose bytes complete its part (or the file), and
//! its segments go then.
//!
//! Segment numbers only grow (the row keeps the next one), so a segment
//! given up is never written again under its key and its deletion can wait
//! in the queue. A segment is stored, then recorded ([`super::commit`]): a
//! request that breaks in between leaves an object under the next number,
//! which the next segment overwrites, and which the lease tracks until
//! then.

use std::{collections::VecDeque, ops::Range};

use bytes::Bytes;
use futures_util::StreamExt as _;
use uuid::Uuid;

use super::uploads::{self, Upload};
use crate::storage::{ByteStream, ObjectStore, StorageError};

/// The tail as stored and recorded, and what this request changed of it.
#[derive(Debug)]
pub(super) struct Tail {
    id: Uuid,
    /// The segments in order: number and length.
    segments: Vec<(i32, u64)>,
    /// The number the next segment takes.
    next: i32,
    /// Keys of segments this request gave up (their bytes went into a part
    /// or a larger segment), deleted once a commit records it.
    given_up: Vec<String>,
    /// Whether this request changed the segments.
    changed: bool,
}

impl Tail {
    /// The tail the upload's row records.
    pub(super) fn of(u: &Upload) -> anyhow::Result<Self> {
        let lens: Option<Vec<u64>> = u
            .tail_lens
            .iter()
            .map(|&n| u64::try_from(n).ok().filter(|&n| n > 0))
            .collect();
        let segments: Vec<(i32, u64)> = match lens {
            Some(lens) if lens.len() == u.tail_seqs.len() => {
                u.tail_seqs.iter().copied().zip(lens).collect()
            }
            _ => anyhow::bail!("upload {} records a corrupt tail", u.id),
        };
        let tail = Self {
            id: u.id,
            segments,
            next: u.tail_next,
            given_up: Vec::new(),
            changed: false,
        };
        if i64::try_from(tail.len()).ok() != Some(u.tail_len) {
            anyhow::bail!("the tail segments of upload {} do not add up", u.id);
        }
        Ok(tail)
    }

    /// Bytes in the tail.
    pub(super) fn len(&self) -> u64 {
        self.segments.iter().map(|(_, n)| n).sum()
    }

    /// The key the next segment is stored under.
    pub(super) fn next_key(&self) -> String {
        uploads::segment_key(self.id, self.next)
    }

    /// How many of the segments a new segment of `new` bytes leaves as
    /// they are: it absorbs the others (see the module's rule).
    pub(super) fn kept_with(&self, new: u64) -> usize {
        let mut holds = new;
        let mut kept = self.segments.len();
        while let Some(&(_, len)) = kept.checked_sub(1).and_then(|i| self.segments.get(i)) {
            if len > holds.saturating_mul(2) {
                break;
            }
            holds += len;
            kept -= 1;
        }
        kept
    }

    /// The tail's byte where segment `i` starts.
    pub(super) fn start_of(&self, i: usize) -> u64 {
        self.segments[..i].iter().map(|(_, n)| n).sum()
    }

    /// Notes the new segment of `len` bytes stored under [`Tail::next_key`],
    /// which holds the bytes of the segments past the first `kept`.
    pub(super) fn stored(&mut self, kept: usize, len: u64) {
        let id = self.id;
        self.given_up.extend(
            self.segments
                .drain(kept..)
                .map(|(n, _)| uploads::segment_key(id, n)),
        );
        self.segments.push((self.next, len));
        self.next += 1;
        self.changed = true;
    }

    /// Notes that a part took every byte of the tail.
    pub(super) fn taken(&mut self) {
        if self.segments.is_empty() {
            return;
        }
        let id = self.id;
        self.given_up.extend(
            self.segments
                .drain(..)
                .map(|(n, _)| uploads::segment_key(id, n)),
        );
        self.changed = true;
    }

    /// Whether this request changed the segments since the last commit.
    pub(super) fn changed(&self) -> bool {
        self.changed
    }

    /// The segments as the row records them: numbers, lengths, and the
    /// next number.
    pub(super) fn record(&self) -> (Vec<i32>, Vec<i64>, i32) {
        let seqs = self.segments.iter().map(|(n, _)| *n).collect();
        let lens = self
            .segments
            .iter()
            .map(|(_, len)| i64::try_from(*len).unwrap_or(i64::MAX))
            .collect();
        (seqs, lens, self.next)
    }

    /// Every object of the tail that may be in storage once this is
    /// recorded: the segments, and the next one (a request that stores it
    /// and breaks before recording it leaves it there).
    pub(super) fn objects(&self) -> Vec<String> {
        self.segments
            .iter()
            .map(|(n, _)| *n)
            .chain([self.next])
            .map(|n| uploads::segment_key(self.id, n))
            .collect()
    }

    /// The keys of the segments given up since the last commit.
    pub(super) fn given_up(&self) -> &[String] {
        &self.given_up
    }

    /// A commit recorded the segments: what was given up is the deletion
    /// queue's now.
    pub(super) fn committed(&mut self) -> Vec<String> {
        self.changed = false;
        std::mem::take(&mut self.given_up)
    }

    /// Reads `range` of the tail's bytes back, segment by segment, as
    /// storage sends them.
    pub(super) fn reader<'s>(&self, store: &'s dyn ObjectStore, range: Range<u64>) -> Reader<'s> {
        let mut plan = VecDeque::new();
        let mut start = 0;
        for &(n, len) in &self.segments {
            let (from, to) = (range.start.max(start), range.end.min(start + len));
            if from < to {
                plan.push_back((uploads::segment_key(self.id, n), from - start..to - start));
            }
            start += len;
        }
        Reader {
            store,
            plan,
            current: None,
        }
    }

    /// A few bytes of the tail, in memory (the first bytes to sniff, those
    /// around a text part's end).
    pub(super) async fn read(
        &self,
        store: &dyn ObjectStore,
        range: Range<u64>,
    ) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        let mut reader = self.reader(store, range);
        while let Some(chunk) = reader.next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// Bytes of the tail as storage sends them, one segment after the other;
/// a segment shorter than recorded fails the read.
pub(super) struct Reader<'s> {
    store: &'s dyn ObjectStore,
    plan: VecDeque<(String, Range<u64>)>,
    /// The segment being read, and how many of its bytes are still due.
    current: Option<(ByteStream, u64)>,
}

impl Reader<'_> {
    /// The next chunk, `None` once every byte asked for is in.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        loop {
            if let Some((stream, due)) = self.current.as_mut() {
                match stream.next().await {
                    Some(chunk) => {
                        let chunk = chunk?;
                        let Some(left) = due.checked_sub(chunk.len() as u64) else {
                            return Err(short("longer"));
                        };
                        *due = left;
                        if !chunk.is_empty() {
                            return Ok(Some(chunk));
                        }
                    }
                    None if *due > 0 => return Err(short("shorter")),
                    None => self.current = None,
                }
                continue;
            }
            let Some((key, range)) = self.plan.pop_front() else {
                return Ok(None);
            };
            let due = range.end - range.start;
            let body = self.store.get(&key, Some(range)).await?;
            self.current = Some((body.stream, due));
        }
    }
}

fn short(what: &str) -> StorageError {
    StorageError::backend(anyhow::anyhow!(
        "a tail segment read back {what} than recorded"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(lens: &[u64]) -> Tail {
        Tail {
            id: Uuid::nil(),
            segments: lens
                .iter()
                .enumerate()
                .map(|(i, &n)| (i as i32, n))
                .collect(),
            next: lens.len() as i32,
            given_up: Vec::new(),
            changed: false,
        }
    }

    /// Stores PATCHes of `sizes` bytes: the bytes written, and the most
    /// segments there were.
    fn store_all(sizes: impl IntoIterator<Item = u64>) -> (u64, u64, usize) {
        let mut t = tail(&[]);
        let (mut sent, mut written, mut most) = (0, 0, 0);
        for new in sizes {
            let kept = t.kept_with(new);
            let len = t.len() - t.start_of(kept) + new;
            t.stored(kept, len);
            sent += new;
            written += len;
            most = most.max(t.segments.len());
            for pair in t.segments.windows(2) {
                assert!(pair[0].1 > 2 * pair[1].1, "{:?}", t.segments);
            }
        }
        assert_eq!(t.len(), sent);
        (sent, written, most)
    }

    #[test]
    fn a_new_segment_absorbs_the_newest_while_they_are_not_much_larger() {
        assert_eq!(tail(&[]).kept_with(5), 0);
        assert_eq!(tail(&[100, 10]).kept_with(5), 1);
        assert_eq!(tail(&[100, 11]).kept_with(5), 2);
        assert_eq!(tail(&[100, 10]).kept_with(50), 0);
        let mut t = tail(&[100, 40, 10]);
        let kept = t.kept_with(5);
        assert_eq!((kept, t.start_of(kept)), (2, 140));
        t.stored(kept, 15);
        assert_eq!(t.record(), (vec![0, 1, 3], vec![100, 40, 15], 4));
        assert_eq!(
            t.committed(),
            vec![uploads::segment_key(Uuid::nil(), 2)],
            "the absorbed segment"
        );
        assert_eq!(t.objects().len(), 4, "three segments and the next");
    }

    #[test]
    fn segments_stay_few_and_bytes_are_rewritten_a_logarithmic_number_of_times() {
        // Within the bounds of the module's rule: 8 MiB one KiB at a time,
        // 200,000 bytes one at a time, and 8 MB in ever smaller PATCHes.
        let (sent, written, most) = store_all(std::iter::repeat_n(1024, 8 * 1024));
        assert!(most <= 14 && written < 24 * sent, "{most} {written}");
        let (sent, written, most) = store_all(std::iter::repeat_n(1, 200_000));
        assert!(most <= 18 && written < 32 * sent, "{most} {written}");
        let (sent, written, most) = store_all((1..=4000).rev());
        assert!(most <= 24 && written < 41 * sent, "{most} {written}");
    }
}
