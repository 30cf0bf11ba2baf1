//! The local folder's listing: a walk of the folder that yields the
//! objects in the byte order of their keys, a page at a time.

use std::path::PathBuf;

use super::{TMP_DIR, TUS_DIR};
use crate::storage::{ListedObject, Listing, StorageError};

/// The objects below `root`, `page_size` (at least 1) a page, in the byte
/// order of their keys.
pub(super) fn listing(root: PathBuf, page_size: usize) -> Listing<'static> {
    let page_size = page_size.max(1);
    let walk = Walk {
        root,
        stack: Vec::new(),
        started: false,
    };
    Box::pin(futures_util::stream::try_unfold(
        walk,
        move |mut walk| async move {
            let page = walk.next_page(page_size).await?;
            Ok((!page.is_empty()).then_some((page, walk)))
        },
    ))
}

/// A depth-first walk of the folder in ascending byte order of the keys.
/// A directory's names are read (and sorted) when the walk enters it, so
/// it holds the names of the directories on the current path, never the
/// whole tree. (std's `read_dir` gives no order, and no crate walks a tree
/// in the byte order of the paths joined with `/`, which is what lets the
/// listing be merged with sorted rows.)
struct Walk {
    root: PathBuf,
    /// Each open directory: its key prefix (`""` or `a/b/`) and its entries
    /// not yet visited, last first.
    stack: Vec<(String, Vec<WalkEntry>)>,
    started: bool,
}

struct WalkEntry {
    name: String,
    dir: bool,
}

impl Walk {
    /// The directory's entries, sorted as their keys sort: a directory as
    /// its name followed by `/`. The root's partial writes are left out.
    async fn read(&self, prefix: &str) -> Result<Vec<WalkEntry>, StorageError> {
        let mut entries = Vec::new();
        let mut dir = tokio::fs::read_dir(self.root.join(prefix)).await?;
        while let Some(entry) = dir.next_entry().await? {
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(
                    dir = prefix,
                    "a file name that is not UTF-8 is no object key; skipped"
                );
                continue;
            };
            if prefix.is_empty() && (name == TMP_DIR || name == TUS_DIR) {
                continue;
            }
            let kind = entry.file_type().await?;
            if kind.is_dir() || kind.is_file() {
                entries.push(WalkEntry {
                    name,
                    dir: kind.is_dir(),
                });
            }
        }
        let sort_key = |e: &WalkEntry| {
            let mut k = e.name.clone().into_bytes();
            if e.dir {
                k.push(b'/');
            }
            k
        };
        entries.sort_by_cached_key(sort_key);
        entries.reverse();
        Ok(entries)
    }

    async fn next_page(&mut self, page_size: usize) -> Result<Vec<ListedObject>, StorageError> {
        if !self.started {
            self.started = true;
            let root = self.read("").await?;
            self.stack.push((String::new(), root));
        }
        let mut page = Vec::new();
        while page.len() < page_size {
            let Some((prefix, entries)) = self.stack.last_mut() else {
                break;
            };
            let Some(entry) = entries.pop() else {
                self.stack.pop();
                continue;
            };
            let key = format!("{prefix}{}", entry.name);
            if entry.dir {
                let prefix = format!("{key}/");
                match self.read(&prefix).await {
                    Ok(entries) => self.stack.push((prefix, entries)),
                    // Removed since its parent was read (an emptied folder).
                    Err(StorageError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            } else {
                match tokio::fs::metadata(self.root.join(&key)).await {
                    Ok(meta) => page.push(ListedObject {
                        key,
                        size: meta.len(),
                    }),
                    // Deleted since its folder was read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(page)
    }
}
