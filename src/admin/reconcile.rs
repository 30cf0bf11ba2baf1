//! `intake admin reconcile`: holds what the database says against itself
//! and against storage, and repairs it with `--fix`.
//!
//! Four checks: every account's counters against its rows
//! ([`reservations::audit`]); leases past expiry that no reaper ended;
//! every object in storage against the rows that own it (files, leases,
//! resumable uploads in flight, the deletion queue); every file row against its
//! object. Storage and the file rows are read a page at a time, both in
//! the byte order of the keys, and merged, so a bucket of any size passes
//! through in the memory of a page. What the merge flags is looked up
//! again (rows, then storage) before it is reported, so an upload that
//! moves on while the check runs is not taken for drift. The order only
//! makes the merge cheap: a store listing in another order costs more
//! lookups, never a wrong answer.
//!
//! Each lookup asks the module that owns the rows; the repairs go through
//! their owners too: [`reservations::recount`], [`deletions::enqueue`],
//! [`slots::end_expired`], [`files::delete`].

use std::{
    collections::{HashSet, VecDeque},
    time::Duration,
};

use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    deletions::{self, Doomed},
    files::{self, StoredFile},
    quota::{
        reservations::{self, Counters},
        slots::{self, ExpiredLease},
    },
    storage::{ListedObject, ObjectStore},
    tus,
};

/// What to check and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repair: recount drifted usage, queue orphans for deletion, end
    /// stuck leases.
    pub fix: bool,
    /// With `fix`: also delete the rows of files whose object is gone (the
    /// bytes are lost; the row only answers errors). Off by default, so
    /// that a run against the wrong bucket cannot empty the database.
    pub forget_missing: bool,
    /// Keys per page of the listing and of the rows.
    pub page_size: usize,
    /// A lease expired for longer than this is stuck (reapers run every
    /// 10 s on every instance).
    pub stuck_after: Duration,
    /// At most this many findings of each kind are listed (all are counted).
    pub max_items: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fix: false,
            forget_missing: false,
            page_size: 1000,
            stuck_after: Duration::from_secs(60),
            max_items: 1000,
        }
    }
}

/// Findings of one kind: how many, and the first of them.
#[derive(Debug, Clone, Serialize)]
pub struct Found<T> {
    /// How many were found.
    pub count: u64,
    /// The first `max_items` of them.
    pub items: Vec<T>,
}

impl<T> Found<T> {
    fn new() -> Self {
        Self {
            count: 0,
            items: Vec::new(),
        }
    }

    fn push(&mut self, item: T, max: usize) {
        self.count += 1;
        if self.items.len() < max {
            self.items.push(item);
        }
    }
}

/// An object no row owns.
#[derive(Debug, Clone, Serialize)]
pub struct Orphan {
    /// Its key.
    pub key: String,
    /// Its size.
    pub size: u64,
}

/// A file row whose object is not in storage.
#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    /// The object's key.
    pub key: String,
    /// The file.
    pub file_id: Uuid,
    /// Its account.
    pub account_id: Uuid,
    /// Its recorded size.
    pub size: i64,
}

/// How much was looked at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Checked {
    /// Accounts whose counters were checked.
    pub accounts: u64,
    /// File rows held against storage.
    pub files: u64,
    /// Objects listed in storage.
    pub objects: u64,
    /// Bytes of those objects.
    pub object_bytes: u64,
}

/// What `--fix` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fixed {
    /// Accounts whose counters were recounted.
    pub usage: u64,
    /// Orphan objects queued for deletion (and deleted, unless storage refused).
    pub orphans_queued: u64,
    /// Expired leases ended (their objects, reservations and slots given back).
    pub leases_ended: u64,
    /// Rows of files whose object was gone, deleted (`--forget-missing`).
    pub missing_forgotten: u64,
}

/// The outcome of a run, as `intake admin reconcile` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nothing was found (the command exits 0).
    pub clean: bool,
    /// How much was looked at.
    pub checked: Checked,
    /// Accounts whose counters disagree with their rows.
    pub usage_drift: Found<Counters>,
    /// Leases expired for longer than `stuck_after`, not reaped.
    pub stuck_leases: Found<ExpiredLease>,
    /// Objects no row owns.
    pub orphans: Found<Orphan>,
    /// File rows whose object is gone.
    pub missing: Found<Missing>,
    /// What `--fix` repaired (absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed: Option<Fixed>,
}

/// Why a run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Storage failed (or cannot list).
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A repair failed.
    #[error("repair failed: {0}")]
    Repair(String),
}

/// Runs every check (and, with `fix`, every repair) once.
pub async fn run(
    db: &PgPool,
    store: &dyn ObjectStore,
    opts: &Options,
) -> Result<Report, ReconcileError> {
    let page = opts.page_size.max(1);
    let mut report = Report {
        clean: false,
        checked: Checked::default(),
        usage_drift: Found::new(),
        stuck_leases: Found::new(),
        orphans: Found::new(),
        missing: Found::new(),
        fixed: opts.fix.then(Fixed::default),
    };

    // Stuck leases first: ending them moves reservations, which the usage
    // check then sees settled.
    let (count, oldest) = slots::expired_for(db, opts.stuck_after, opts.max_items).await?;
    report.stuck_leases = Found {
        count: count.max(0) as u64,
        items: oldest,
    };
    if let Some(fixed) = report.fixed.as_mut()
        && count > 0
    {
        // Each pass ends up to a few hundred; stop when a pass ends none.
        loop {
            let ended = slots::end_expired(db, store).await?;
            fixed.leases_ended += ended;
            if ended == 0 {
                break;
            }
        }
    }

    let mut after = Uuid::nil();
    loop {
        let rows = reservations::audit(db, after, page).await?;
        let Some(last) = rows.last() else { break };
        after = last.account_id;
        for counters in rows {
            report.checked.accounts += 1;
            if counters.agree() {
                continue;
            }
            let id = counters.account_id;
            report.usage_drift.push(counters, opts.max_items);
            if let Some(fixed) = report.fixed.as_mut()
                && reservations::recount(db, id).await?.is_some()
            {
                fixed.usage += 1;
            }
        }
    }

    objects(db, store, opts, &mut report).await?;

    report.clean = report.usage_drift.count == 0
        && report.stuck_leases.count == 0
        && report.orphans.count == 0
        && report.missing.count == 0;
    Ok(report)
}

/// The file rows, a page at a time in key order.
struct Rows<'a> {
    db: &'a PgPool,
    page: usize,
    buf: VecDeque<StoredFile>,
    after: String,
    done: bool,
}

impl Rows<'_> {
    /// Reads the next page when the buffered one is used up.
    async fn fill(&mut self) -> Result<(), sqlx::Error> {
        if self.buf.is_empty() && !self.done {
            let rows = files::page_by_key(self.db, &self.after, self.page).await?;
            self.done = rows.len() < self.page;
            if let Some(last) = rows.last() {
                self.after = last.object_key.clone();
            }
            self.buf.extend(rows);
        }
        Ok(())
    }
}

/// Where the merge goes next.
enum Step {
    /// The listed object has no row (so far).
    Orphan,
    /// The row has no listed object (so far).
    Missing,
    /// Both sides agree.
    Matched,
}

/// Merges the listing with the file rows; what only one side has is a
/// candidate, checked again in batches.
async fn objects(
    db: &PgPool,
    store: &dyn ObjectStore,
    opts: &Options,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let page = opts.page_size.max(1);
    let mut listing = store.list(page);
    let mut listed: VecDeque<ListedObject> = VecDeque::new();
    let mut listing_done = false;
    let mut rows = Rows {
        db,
        page,
        buf: VecDeque::new(),
        after: String::new(),
        done: false,
    };
    let mut orphans: Vec<ListedObject> = Vec::new();
    let mut missing: Vec<StoredFile> = Vec::new();
    loop {
        if listed.is_empty() && !listing_done {
            match listing.try_next().await? {
                Some(objects) => {
                    report.checked.objects += objects.len() as u64;
                    report.checked.object_bytes += objects.iter().map(|o| o.size).sum::<u64>();
                    listed.extend(objects);
                }
                None => listing_done = true,
            }
            continue;
        }
        rows.fill().await?;
        let step = match (listed.front(), rows.buf.front()) {
            (None, None) => break,
            (Some(_), None) => Step::Orphan,
            (None, Some(_)) => Step::Missing,
            (Some(object), Some(row)) => match object.key.as_bytes().cmp(row.object_key.as_bytes())
            {
                std::cmp::Ordering::Less => Step::Orphan,
                std::cmp::Ordering::Greater => Step::Missing,
                std::cmp::Ordering::Equal => Step::Matched,
            },
        };
        match step {
            Step::Orphan => orphans.extend(listed.pop_front()),
            Step::Missing => missing.extend(rows.buf.pop_front()),
            Step::Matched => {
                listed.pop_front();
                rows.buf.pop_front();
                report.checked.files += 1;
            }
        }
        if orphans.len() >= page {
            settle_orphans(db, store, opts, std::mem::take(&mut orphans), report).await?;
        }
        if missing.len() >= page {
            settle_missing(db, store, opts, std::mem::take(&mut missing), report).await?;
        }
    }
    settle_orphans(db, store, opts, orphans, report).await?;
    settle_missing(db, store, opts, missing, report).await?;
    Ok(())
}

/// How many storage calls run at once while candidates are checked again.
const RECHECKS: usize = 8;

/// Removes from `candidates` the objects whose keys `owned` names.
fn without(candidates: &mut Vec<ListedObject>, owned: Vec<String>) {
    if owned.is_empty() {
        return;
    }
    let owned: HashSet<String> = owned.into_iter().collect();
    candidates.retain(|c| !owned.contains(&c.key));
}

fn keys(objects: &[ListedObject]) -> Vec<String> {
    objects.iter().map(|o| o.key.clone()).collect()
}

/// Listed objects without a file row (as the merge saw them): each owner is
/// asked in turn, then storage (gone since the listing: not an orphan).
async fn settle_orphans(
    db: &PgPool,
    store: &dyn ObjectStore,
    opts: &Options,
    mut candidates: Vec<ListedObject>,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    if candidates.is_empty() {
        return Ok(());
    }
    // Each owner in turn; most candidates are files recorded after the
    // merge passed their key, so the files go first.
    let owned = files::known_keys(db, &keys(&candidates)).await?;
    without(&mut candidates, owned);
    if candidates.is_empty() {
        return Ok(());
    }
    let owned = slots::tracked_keys(db, &keys(&candidates)).await?;
    without(&mut candidates, owned);
    let owned = deletions::queued_keys(db, &keys(&candidates)).await?;
    without(&mut candidates, owned);
    let owned = tus::tails_in_flight(db, &keys(&candidates)).await?;
    without(&mut candidates, owned);
    if candidates.is_empty() {
        return Ok(());
    }
    let heads: Vec<_> = futures_util::stream::iter(candidates)
        .map(|o| async move {
            let head = store.head(&o.key).await;
            head.map(|h| (o, h))
        })
        .buffered(RECHECKS)
        .try_collect()
        .await?;
    let mut doomed = Vec::new();
    for (object, head) in heads {
        let Some(size) = head else { continue };
        if opts.fix {
            doomed.push(Doomed::object(object.key.clone()));
        }
        report.orphans.push(
            Orphan {
                key: object.key,
                size,
            },
            opts.max_items,
        );
    }
    if let Some(fixed) = report.fixed.as_mut()
        && !doomed.is_empty()
    {
        let mut tx = db.begin().await?;
        for d in &doomed {
            deletions::enqueue(&mut tx, d).await?;
        }
        tx.commit().await?;
        fixed.orphans_queued += doomed.len() as u64;
        // As everywhere: queued and committed, then storage.
        deletions::delete_queued(db, store, &doomed).await;
    }
    Ok(())
}

/// File rows the listing did not have: still a row, and still absent from
/// storage, is missing.
async fn settle_missing(
    db: &PgPool,
    store: &dyn ObjectStore,
    opts: &Options,
    mut candidates: Vec<StoredFile>,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    if candidates.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = candidates.iter().map(|f| f.object_key.clone()).collect();
    let still: HashSet<String> = files::known_keys(db, &keys).await?.into_iter().collect();
    candidates.retain(|f| still.contains(&f.object_key));
    let heads: Vec<_> = futures_util::stream::iter(candidates)
        .map(|f| async move {
            let head = store.head(&f.object_key).await;
            head.map(|h| (f, h))
        })
        .buffered(RECHECKS)
        .try_collect()
        .await?;
    for (file, head) in heads {
        if head.is_some() {
            // Written after the listing passed its key.
            report.checked.files += 1;
            continue;
        }
        report.checked.files += 1;
        if let Some(fixed) = report.fixed.as_mut()
            && opts.forget_missing
        {
            match files::delete(db, store, file.account_id, file.id).await {
                Ok(()) => fixed.missing_forgotten += 1,
                // Deleted by its owner meanwhile.
                Err(crate::error::ApiError::NotFound(_)) => {}
                Err(e) => return Err(ReconcileError::Repair(e.to_string())),
            }
        }
        report.missing.push(
            Missing {
                key: file.object_key,
                file_id: file.id,
                account_id: file.account_id,
                size: file.size,
            },
            opts.max_items,
        );
    }
    Ok(())
}
