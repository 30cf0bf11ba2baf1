//! One file's way from a multipart part into storage and into the files
//! table, held to every limit while its bytes flow: the type on the first
//! bytes, the caps and text validity on the running count
//! ([`quota::caps`]), the storage quota by reservations made ahead of the
//! bytes ([`quota::reservations`]). A file that fails gives back its
//! object and its reservation on every path.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::multipart;
use crate::{
    auth::Account,
    deletions::{self, Doomed},
    error::ApiError,
    files::{self, FileView, NewFile},
    quota::{
        caps::{Cap, ContentCheck, Route},
        reservations::{self, ReserveError},
        slots::Lease,
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
    /// The caller's effective limits.
    pub limits: Limits,
    /// The request's slot, under which every file reserves.
    pub lease: &'a Lease,
    /// The request's `Content-Length`, when the client sent one: no file of
    /// the request can be larger, so no reservation needs to be either.
    pub body_len: Option<u64>,
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
        files::delete(&self.state.db, store, self.account.id, file_id).await
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
        let staged = Staged {
            writer,
            id,
            key,
            filename: filename.to_owned(),
            kind,
            reserved,
            total,
            sha,
        };
        match streamed {
            Ok(()) => Ok(staged),
            Err(e) => {
                self.give_back(staged).await;
                Err(e)
            }
        }
    }

    /// Reserves what a received file still needs: the whole of a file whose
    /// bytes all stayed in the writer's memory (see [`Sink::push`]). On
    /// failure the file is given up, with everything it took.
    pub async fn reserve_rest(&self, mut staged: Staged) -> Result<Staged, FileError> {
        if staged.reserved >= staged.total {
            return Ok(staged);
        }
        let (db, quota) = (&self.state.db, self.limits.storage_bytes);
        let first = (staged.reserved == 0).then_some(staged.key.as_str());
        let need = staged.total - staged.reserved;
        match reservations::reserve(db, self.lease, need, quota, first).await {
            Ok(()) => {
                staged.reserved = staged.total;
                Ok(staged)
            }
            Err(e) => {
                self.give_back(staged).await;
                Err(e.into())
            }
        }
    }

    /// Finishes a received file's object and records the file; on failure
    /// gives back everything it took.
    pub async fn complete(&self, staged: Staged) -> Result<FileView, FileError> {
        let staged = self.reserve_rest(staged).await?;
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
                self.give_back(Unrecorded::without_writer(doomed, reserved))
                    .await;
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
        let (db, lease) = (&self.state.db, self.lease);
        reservations::reserve(db, lease, len, self.limits.storage_bytes, Some(key)).await?;
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
        } = file.into();
        if let Some(writer) = writer
            && let Err(abort) = writer.abort().await
        {
            tracing::warn!(error = %abort, key = doomed.object_key, "could not abort a refused upload's object");
        }
        // Nothing reserved: every byte stayed in the writer's memory (a
        // write to storage is always reserved first) and the lease never
        // named the object (its first reservation does), so nothing is
        // left to give back.
        if reserved == 0 {
            return;
        }
        let (db, store) = (&self.state.db, self.state.store.as_ref());
        let released = async {
            deletions::remove_or_enqueue(db, store, &doomed).await?;
            reservations::unreserve(db, self.lease, reserved, &doomed.object_key).await
        }
        .await;
        if let Err(e) = released {
            tracing::error!(error = %e, key = doomed.object_key, "could not release a failed upload");
        }
    }
}

/// What a file that is not recorded took, for [`Ctx::give_back`].
pub struct Unrecorded {
    /// Its writer, while the object is not finished.
    writer: Option<Box<dyn ObjectWriter>>,
    /// The object (or multipart upload) storage may hold.
    doomed: Doomed,
    /// The quota it reserved.
    reserved: u64,
}

impl Unrecorded {
    /// A file whose writer is gone (finished, or never opened): only what
    /// storage may hold of it and what it reserved are left.
    fn without_writer(doomed: Doomed, reserved: u64) -> Self {
        Self {
            writer: None,
            doomed,
            reserved,
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
        // Bytes the writer keeps in memory need no quota yet: a small file
        // reserves once, exactly its size, when it is finished.
        if self.check.total() > self.writer.held_back() {
            self.reserve_to(self.check.total()).await?;
        }
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

    /// Reserves quota ahead of the bytes, a part at a time; near the quota,
    /// exactly what the bytes in hand need, so a file that fits is accepted.
    async fn reserve_to(&mut self, total: u64) -> Result<(), FileError> {
        if self.reserved >= total {
            return Ok(());
        }
        let limit = self.check.cap().limit();
        let need = total - self.reserved;
        let most = self.ctx.body_len.map_or(limit, |len| len.min(limit));
        let step = need
            .max(self.ctx.state.config.upload_part_bytes)
            .min(most.saturating_sub(self.reserved))
            .max(need);
        let (db, lease) = (&self.ctx.state.db, self.ctx.lease);
        let quota = self.ctx.limits.storage_bytes;
        // The file's first reservation also records its object on the lease.
        let key = (self.reserved == 0).then_some(self.key);
        let granted = match reservations::reserve(db, lease, step, quota, key).await {
            Ok(()) => step,
            Err(ReserveError::Quota { .. }) if step > need => {
                reservations::reserve(db, lease, need, quota, key).await?;
                need
            }
            Err(e) => return Err(e.into()),
        };
        self.reserved += granted;
        Ok(())
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
