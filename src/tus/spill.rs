//! Scratch files for the bytes of a part in flight: kept until storage has
//! the part, so that a body that breaks first keeps them as the tail.
//!
//! A spill is an unnamed temporary file (the system's temporary directory),
//! written through the page cache, so it costs no resident memory and,
//! unlinked from the start, vanishes with the process whatever ends it.
//!
//! Files are reused: a spill given back goes to a small pool, and the next
//! part overwrites it from the start. A fresh file for every part cost
//! about a fifth of the CPU of a tus upload on the bench (the kernel
//! allocating the page-cache pages on the writes and freeing them on
//! close); a reused file's pages are already there. The pool holds at most
//! [`POOL_FILES`] files, each about one part long, and every [`IDLE`] the
//! reaper's loop closes those idle for as long ([`trim`]): a file is closed
//! within twice that of its last use, before the kernel would write its
//! pages back to disk (30 s by default), so user bytes do not linger in
//! them.

use std::{
    fs::File,
    os::unix::fs::FileExt as _,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Files the pool keeps at most; spills beyond it are closed when given back.
pub const POOL_FILES: usize = 16;

/// A pooled file unused this long is closed by [`trim`].
pub const IDLE: Duration = Duration::from_secs(10);

/// Idle files with when each was given back, the most recent last.
static POOL: Mutex<Vec<(File, Instant)>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<(File, Instant)>> {
    // The pool holds no invariant a panic could break.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bytes of a part in flight, from its first byte on.
pub struct Spill {
    /// `None` only once dropped (given back to the pool).
    file: Option<File>,
    len: usize,
}

impl Spill {
    /// A spill on the most recently used pooled file, or on a new one.
    pub fn open() -> std::io::Result<Self> {
        let file = match pool().pop() {
            Some((file, _)) => file,
            None => tempfile::tempfile()?,
        };
        Ok(Self {
            file: Some(file),
            len: 0,
        })
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    fn file(&self) -> std::io::Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the spill was given back"))
    }

    /// Appends bytes; on an error none of them count.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file()?.write_all_at(bytes, self.len as u64)?;
        self.len += bytes.len();
        Ok(())
    }

    /// Reads back what it holds (a reused file may hold older bytes past
    /// them, which are never read).
    pub fn read_all(self) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0; self.len];
        self.file()?.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        let mut pool = pool();
        if pool.len() < POOL_FILES {
            pool.push((file, Instant::now()));
        }
    }
}

/// Closes the pooled files unused for `idle` or longer; returns how many.
pub fn trim(idle: Duration) -> usize {
    let now = Instant::now();
    let mut pool = pool();
    let before = pool.len();
    pool.retain(|(_, since)| now.duration_since(*since) < idle);
    before - pool.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the pool is the process's, and other tests in parallel
    // would take its files.
    #[test]
    fn a_reused_file_reads_back_only_its_new_bytes_and_idle_files_are_closed() {
        let mut first = Spill::open().unwrap();
        first.append(&[b'a'; 100]).unwrap();
        drop(first);

        // The file given back, with the older bytes still in it.
        let mut second = Spill::open().unwrap();
        let on_disk = second.file().unwrap().metadata().unwrap().len();
        assert_eq!(on_disk, 100, "the file was not reused");
        second.append(b"bbbb").unwrap();
        second.append(b"cc").unwrap();
        assert_eq!(second.len(), 6);
        assert_eq!(second.read_all().unwrap(), b"bbbbcc");

        // Given back by read_all: kept while idle for less than an hour,
        // closed once any idle time is too long.
        assert_eq!(trim(Duration::from_secs(3600)), 0);
        assert!(trim(Duration::ZERO) >= 1);
        assert!(pool().is_empty());
    }
}
