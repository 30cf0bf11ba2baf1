//! A SHA-256 whose running state can be stored between requests, so that a
//! resumable upload's hash is computed once, as its bytes pass, on whichever
//! instance receives them (instead of reading the whole file back at the end).

const INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// The running state: the compression state, the bytes of the block not yet
/// complete, and how many bytes went in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256State {
    state: [u32; 8],
    rest: Vec<u8>,
    len: u64,
}

impl Default for Sha256State {
    fn default() -> Self {
        Self {
            state: INITIAL,
            rest: Vec::new(),
            len: 0,
        }
    }
}

impl Sha256State {
    /// The state as stored: 32 bytes of state words and the unfinished
    /// block (under 64 bytes). `len` is the count of bytes hashed, which the
    /// caller stores anyway (the bytes stored in parts).
    pub fn to_parts(&self) -> (Vec<u8>, Vec<u8>) {
        let words = self.state.iter().flat_map(|w| w.to_be_bytes()).collect();
        (words, self.rest.clone())
    }

    /// The state read back; `None` when the stored bytes cannot be one.
    pub fn from_parts(words: &[u8], rest: &[u8], len: u64) -> Option<Self> {
        if words.len() != 32 || rest.len() >= 64 || len % 64 != rest.len() as u64 {
            return None;
        }
        let mut state = [0u32; 8];
        for (w, bytes) in state.iter_mut().zip(words.chunks_exact(4)) {
            *w = u32::from_be_bytes(bytes.try_into().ok()?);
        }
        Some(Self {
            state,
            rest: rest.to_vec(),
            len,
        })
    }

    /// Hashes more bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.rest.is_empty() {
            let need = 64 - self.rest.len();
            let take = need.min(data.len());
            self.rest.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.rest.len() < 64 {
                return;
            }
            let block = std::mem::take(&mut self.rest);
            compress(&mut self.state, &block);
        }
        let whole = data.len() - data.len() % 64;
        compress(&mut self.state, &data[..whole]);
        self.rest.extend_from_slice(&data[whole..]);
    }

    /// The digest of everything hashed.
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.rest);
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bits.to_be_bytes());
        compress(&mut self.state, &tail);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// Compresses whole 64-byte blocks into the state, a few at a time through
/// a buffer on the stack: `compress256` takes its blocks as an array type
/// that a byte slice cannot be viewed as without `unsafe`, and copying 4 KiB
/// at a time costs a fraction of hashing them, where building a `Vec` of
/// the whole input cost an allocation and a copy of every chunk.
fn compress(state: &mut [u32; 8], bytes: &[u8]) {
    const BATCH: usize = 64;
    let mut blocks: [sha2::digest::core_api::Block<sha2::Sha256VarCore>; BATCH] =
        [[0u8; 64].into(); BATCH];
    for group in bytes.chunks(64 * BATCH) {
        let mut n = 0;
        for (block, src) in blocks.iter_mut().zip(group.chunks_exact(64)) {
            block.copy_from_slice(src);
            n += 1;
        }
        sha2::compress256(state, &blocks[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn stored_and_resumed_state_gives_the_plain_digest() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for cuts in [vec![], vec![1], vec![63, 64, 65], vec![100, 5000, 9999]] {
            let mut h = Sha256State::default();
            let mut at = 0;
            for cut in cuts.iter().copied().chain([data.len()]) {
                h.update(&data[at..cut]);
                let (words, rest) = h.to_parts();
                h = Sha256State::from_parts(&words, &rest, cut as u64).unwrap();
                at = cut;
            }
            let want: [u8; 32] = Sha256::digest(&data).into();
            assert_eq!(h.finish(), want, "cuts {cuts:?}");
        }
        let empty: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(Sha256State::default().finish(), empty);
        assert!(Sha256State::from_parts(&[0; 31], &[], 0).is_none());
    }
}
