//! One file's way from a multipart part into storage and into the files
//! table, held to every limit while its bytes flow: the type on the first
//! bytes, the caps and text validity on the running count
//! ([`quota::caps`]), the storage quota by reservations made before a byte
//! is held ([`quota::reservations`]), an upload token's categories, files
//! and bytes likewise ([`quota::tokens`]), the process's memory by room in
//! its upload buffers ([`quota::buffers`]). A file that fails gives back
//! its object, its reservations and its room on every path.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    multipart,
    reserve::Refused,
    settling::{Settling, Unsettled},
};
use crate::{
    auth::{Account, UploadToken},
    deletions::{self, Doomed},
    error::ApiError,
    files::{self, FileView, NewFile},
    quota::{
        buffers::Room,
        caps::{Cap, ContentCheck, Route},
        reservations,
        slots::Lease,
        tokens,
    },
    sniff::{self, Kind, SNIFF_BYTES},
    state::AppState,
    storage::ObjectWriter,
    tiers::Limits,
};

/// An error that ends one file; `fatal` when the request body itself broke,
/// so no later part can be read either.
#[derive(Debug)]
pub struct FileError {
    /// What the client is told.
    pub error: ApiError,
    /// Whether the body is unusable from here on.
    pub fatal: bool,
}

impl<E: Into<ApiError>> From<E> for FileError {
    fn from(e: E) -> Self {
        Self {
            error: e.into(),
            fatal: false,
        }
    }
}

fn fatal(error: ApiError) -> FileError {
    FileError { error, fatal: true }
}

/// What every file of one request shares.
pub struct Ctx<'a> {
    /// The server.
    pub state: &'a AppState,
    /// The caller.
    pub account: &'a Account,
    /// The upload token the request came with, if any: its limits hold on
    /// top of the account's, and its files carry its subject and metadata.
    pub token: Option<&'a UploadToken>,
    /// The caller's effective limits.
    pub limits: Limits,
    /// The request's slot, under which every file reserves.
    pub lease: &'a Lease,
    /// The request's `Content-Length`, when the client sent one: no file of
    /// the request can be larger, so no reservation needs to be either.
    pub body_len: Option<u64>,
    /// The request's files read and not settled yet.
    pub settling: Settling,
}

impl Ctx<'_> {
    async fn next_chunk(
        &self,
        field: &mut multer::Field<'static>,
    ) -> Result<Option<Bytes>, FileError> {
        multipart::chunk(field).await.map_err(fatal)
    }

    /// Deletes a file this request recorded (a request that turned out to
    /// be refused as a whole keeps nothing). Unlike [`Ctx::give_back`],
    /// which ends a file before it is recorded, the file is the files
    /// table's by now: it goes as any deleted file does, its usage with it.
    pub async fn delete_recorded(&self, file_id: Uuid) -> Result<(), ApiError> {
        let store = self.state.store.as_ref();
        let token = self.token.map(|t| t.id.as_str());
        files::delete_uploaded(&self.state.db, store, self.account.id, file_id, token).await
    }

    /// Reads the rest of a refused part and drops it, so the next part's
    /// headers are read from where they start (and the bytes skipped count
    /// as file data, not as headers). `Err` when the body broke meanwhile.
    pub async fn skip_rest(&self, field: &mut multer::Field<'static>) -> Result<(), ApiError> {
        while multipart::chunk(field).await?.is_some() {}
        Ok(())
    }

    /// Reads one part to its end into storage, holding every limit on the
    /// way; the object is not finished yet (see [`Ctx::complete`]).
    ///
    /// `exact` is the part's length when the request says it up front (a
    /// one-file body with `Content-Length`, see
    /// [`super::multipart::Parts::single_part_len`]): the file then takes one
    /// reservation of that length and one streamed PUT of it, holding no
    /// part, and a part that turns out longer or shorter is refused.
    pub async fn receive(
        &self,
        field: &mut multer::Field<'static>,
        filename: &str,
        exact: Option<u64>,
    ) -> Result<Staged, FileError> {
        let declared = field
            .content_type()
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0;
        let mut complete = false;
        while head_len < SNIFF_BYTES {
            match self.next_chunk(field).await? {
                Some(chunk) => {
                    head_len += chunk.len();
                    head.push(chunk);
                }
                None => {
                    complete = true;
                    break;
                }
            }
        }
        if complete && head_len == 0 {
            return Err(ApiError::unprocessable("the file is empty").into());
        }
        let kind = sniff::sniff(&head.concat(), complete, &declared, filename)?;
        if let Some(token) = self.token {
            tokens::check_category(token, kind.category)?;
        }
        let id = Uuid::now_v7();
        // Recorded on the lease by the file's first reservation, before any
        // byte reaches storage.
        let key = files::object_key(self.account.id, id);
        let cap = Cap::new(
            &self.limits,
            kind.category,
            Route::Streaming,
            self.state.config.stream_max_file_bytes,
        );
        let writer = match exact {
            Some(len) => self.sized_writer(&key, &kind, cap, len).await?,
            None => {
                let part_size =
                    usize::try_from(self.state.config.upload_part_bytes).unwrap_or(usize::MAX);
                self.state.store.writer(&key, kind.mime, part_size).await?
            }
        };
        // Room for what the writer may hold, before its first byte: at most
        // the file's own bound (the body, the cap).
        let most = self.body_len.unwrap_or(u64::MAX).min(cap.limit());
        let room = match self
            .state
            .upload_buffers
            .take(writer.holds_at_most().min(most))
            .await
        {
            Ok(room) => room,
            Err(e) => {
                let reserved = exact.unwrap_or(0);
                let file = Unrecorded {
                    writer: Some(writer),
                    doomed: Doomed::object(key),
                    reserved,
                    holding: Holding::default(),
                };
                self.give_back(file).await;
                return Err(e.into());
            }
        };
        let mut sink = Sink::new(self, &key, ContentCheck::new(cap, &kind), writer);
        if let Some(len) = exact {
            sink.reserved = len;
            sink.exact = Some(len);
        }
        let streamed = async {
            for chunk in head {
                sink.push(chunk).await?;
            }
            if !complete {
                while let Some(chunk) = self.next_chunk(field).await? {
                    sink.push(chunk).await?;
                }
            }
            if let Some(len) = sink.exact
                && sink.check.total() != len
            {
                return Err(not_as_announced().into());
            }
            sink.check.finish()?;
            Ok::<_, FileError>(())
        }
        .await;
        let (writer, reserved, total, sha) = sink.into_parts();
        let mut staged = Staged {
            writer,
            id,
            key,
            filename: filename.to_owned(),
            kind,
            reserved,
            total,
            sha,
            holding: Holding {
                _room: room,
                unsettled: None,
            },
        };
        match streamed {
            Ok(()) => {
                staged.holding.unsettled = Some(self.settling.enter());
                Ok(staged)
            }
            Err(e) => {
                self.give_back(staged).await;
                Err(e)
            }
        }
    }

    /// Finishes a received file's object and records the file; on failure
    /// gives back everything it took. Its room and its place among the
    /// files settling are let go last, once it is recorded or given back.
    pub async fn complete(&self, staged: Staged) -> Result<FileView, FileError> {
        let upload_id = staged.writer.multipart_upload_id().map(str::to_owned);
        let Staged {
            writer,
            id,
            key,
            filename,
            kind,
            reserved,
            total,
            sha,
            holding,
        } = staged;
        let recorded = match writer.finish().await {
            Ok(_) => {
                let new = NewFile {
                    id,
                    filename,
                    content_type: kind.mime.to_owned(),
                    category: kind.category,
                    size: total,
                    sha256: Some(sha),
                    upload_token_id: self.token.map(|t| t.id.clone()),
                };
                files::record(&self.state.db, self.lease, &new, reserved)
                    .await
                    .map_err(FileError::from)
            }
            Err(e) => Err(FileError::from(e)),
        };
        match recorded {
            Ok(view) => {
                metrics::counter!("intake_upload_bytes_total").increment(total);
                Ok(view)
            }
            Err(e) => {
                let doomed = Doomed {
                    object_key: key,
                    multipart_upload_id: upload_id,
                };
                let file = Unrecorded {
                    holding,
                    ..Unrecorded::without_writer(doomed, reserved)
                };
                self.give_back(file).await;
                Err(e)
            }
        }
    }

    /// Reserves a file's whole announced length (the one statement that
    /// also records its object on the lease) and starts its streamed PUT.
    async fn sized_writer(
        &self,
        key: &str,
        kind: &Kind,
        cap: Cap,
        len: u64,
    ) -> Result<Box<dyn ObjectWriter>, FileError> {
        cap.check(len)?;
        self.reserve(len, len, true, Some(key))
            .await
            .map_err(|r| r.error)?;
        let part_size = usize::try_from(self.state.config.upload_part_bytes).unwrap_or(usize::MAX);
        match self
            .state
            .store
            .writer_of_len(key, kind.mime, len, part_size)
            .await
        {
            Ok(writer) => Ok(writer),
            Err(e) => {
                let doomed = Doomed::object(key.to_owned());
                self.give_back(Unrecorded::without_writer(doomed, len))
                    .await;
                Err(e.into())
            }
        }
    }

    /// Gives back everything a file that is not recorded took, whatever
    /// stopped it: aborts its writer if it is still open, then, if it
    /// reserved anything, removes its object (or queues it) and gives back
    /// its reservation. The lease tracks the object until the reservation
    /// is given back, so a crash in between leaves the reaper to finish.
    pub async fn give_back(&self, file: impl Into<Unrecorded>) {
        let Unrecorded {
            writer,
            doomed,
            reserved,
            holding,
        } = file.into();
        if let Some(writer) = writer
            && let Err(abort) = writer.abort().await
        {
            tracing::warn!(error = %abort, key = doomed.object_key, "could not abort a refused upload's object");
        }
        // Nothing reserved: no byte was written (every write is reserved
        // first) and the lease never named the object (its first
        // reservation does), so nothing is left to give back.
        if reserved == 0 {
            return;
        }
        let (db, store) = (&self.state.db, self.state.store.as_ref());
        let released = async {
            deletions::remove_or_enqueue(db, store, &doomed).await?;
            reservations::unreserve(db, self.lease, reserved, &doomed.object_key).await?;
            // What it reserved of a token: the file itself, and as many bytes.
            if self.token.is_some() {
                tokens::unreserve(db, self.lease, 1, reserved).await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(e) = released {
            tracing::error!(error = %e, key = doomed.object_key, "could not release a failed upload");
        }
        drop(holding);
    }
}

/// What a file holds until it is recorded or given back, beside its
/// reservation: its room in the process's upload buffers, and, once read,
/// its place among the request's files settling.
#[derive(Default)]
struct Holding {
    /// Held for its drop.
    _room: Option<Room>,
    unsettled: Option<Unsettled>,
}

/// What a file that is not recorded took, for [`Ctx::give_back`].
pub struct Unrecorded {
    /// Its writer, while the object is not finished.
    writer: Option<Box<dyn ObjectWriter>>,
    /// The object (or multipart upload) storage may hold.
    doomed: Doomed,
    /// The quota it reserved.
    reserved: u64,
    /// What it holds besides, let go once it is given back.
    holding: Holding,
}

impl Unrecorded {
    /// A file whose writer is gone (finished, or never opened): only what
    /// storage may hold of it and what it reserved are left.
    fn without_writer(doomed: Doomed, reserved: u64) -> Self {
        Self {
            writer: None,
            doomed,
            reserved,
            holding: Holding::default(),
        }
    }
}

impl From<Staged> for Unrecorded {
    fn from(staged: Staged) -> Self {
        let multipart_upload_id = staged.writer.multipart_upload_id().map(str::to_owned);
        Self {
            writer: Some(staged.writer),
            doomed: Doomed {
                object_key: staged.key,
                multipart_upload_id,
            },
            reserved: staged.reserved,
            holding: staged.holding,
        }
    }
}

/// A one-file body whose part is not the length its `Content-Length` left
/// for it: another part follows, or the body ends otherwise.
fn not_as_announced() -> ApiError {
    ApiError::bad_request(
        "the file part does not end where the body's Content-Length says: \
         send exactly one part named file, the body ending with the closing delimiter",
    )
}

/// A file whose bytes are all in storage's hands, not yet finished.
pub struct Staged {
    writer: Box<dyn ObjectWriter>,
    id: Uuid,
    key: String,
    filename: String,
    kind: Kind,
    reserved: u64,
    total: u64,
    sha: [u8; 32],
    holding: Holding,
}

impl Staged {
    /// Whether finishing it is one small request with no multipart upload,
    /// so it may run while the next file is read without holding a part.
    pub fn is_small(&self) -> bool {
        self.writer.multipart_upload_id().is_none()
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.total
    }
}

/// The running state of one file on its way to storage.
struct Sink<'a> {
    ctx: &'a Ctx<'a>,
    key: &'a str,
    writer: Box<dyn ObjectWriter>,
    check: ContentCheck,
    hasher: Sha256,
    reserved: u64,
    /// The file's announced length, all of it reserved up front.
    exact: Option<u64>,
    tracked_upload: bool,
}

impl<'a> Sink<'a> {
    fn new(
        ctx: &'a Ctx<'a>,
        key: &'a str,
        check: ContentCheck,
        writer: Box<dyn ObjectWriter>,
    ) -> Self {
        Self {
            ctx,
            key,
            writer,
            check,
            hasher: Sha256::new(),
            reserved: 0,
            exact: None,
            tracked_upload: false,
        }
    }

    async fn push(&mut self, chunk: Bytes) -> Result<(), FileError> {
        self.check.feed(&chunk)?;
        if self.exact.is_some_and(|len| self.check.total() > len) {
            return Err(not_as_announced().into());
        }
        self.hasher.update(&chunk);
        // Quota before the writer holds a byte, so an account at its quota
        // holds no memory either.
        self.reserve_to(self.check.total()).await?;
        self.writer.write(chunk).await?;
        if !self.tracked_upload
            && let Some(upload_id) = self.writer.multipart_upload_id()
        {
            let upload_id = upload_id.to_owned();
            self.ctx
                .lease
                .track_object(&self.ctx.state.db, Some(self.key), Some(&upload_id))
                .await?;
            self.tracked_upload = true;
        }
        Ok(())
    }

    /// Reserves quota for the first `total` bytes, ahead of them by up to a
    /// part. Refused for quota while earlier files of the request still hold
    /// their surplus, it waits for them to settle and tries again
    /// ([`Settling`]).
    async fn reserve_to(&mut self, total: u64) -> Result<(), FileError> {
        if self.reserved >= total {
            return Ok(());
        }
        loop {
            let mark = self.ctx.settling.mark();
            match self.reserve_step(total - self.reserved).await {
                Ok(granted) => {
                    self.reserved += granted;
                    return Ok(());
                }
                Err(Refused {
                    error,
                    for_room: true,
                }) => {
                    if !self.ctx.settling.room_may_come(mark).await {
                        return Err(error.into());
                    }
                }
                Err(refused) => return Err(refused.error.into()),
            }
        }
    }

    /// One reservation of at least `need` bytes: a part ahead, never past
    /// what the file may still hold (the cap, the body); near a limit, what
    /// is left of it, so a file that fits is accepted. Returns what was
    /// granted.
    async fn reserve_step(&mut self, need: u64) -> Result<u64, Refused> {
        let cap = self.check.cap().limit();
        let most = self.ctx.body_len.map_or(cap, |len| len.min(cap));
        let step = need
            .max(self.ctx.state.config.upload_part_bytes)
            .min(most.saturating_sub(self.reserved))
            .max(need);
        // The file's first reservation also records its object on the lease.
        let first = self.reserved == 0;
        let key = first.then_some(self.key);
        self.ctx.reserve(need, step, first, key).await
    }

    fn into_parts(self) -> (Box<dyn ObjectWriter>, u64, u64, [u8; 32]) {
        (
            self.writer,
            self.reserved,
            self.check.total(),
            self.hasher.finalize().into(),
        )
    }
}
