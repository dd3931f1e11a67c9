//! [`DirtyFile`]: a file whose content differs from its object, and its upload.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::cache::arena::{Arena, LockedBuf, Reserve};
use crate::cache::blocks::{BlockCache, ObjectRef, LARGE_BLOCK};
use crate::cache::spill::{part_aad, SealedPart, Spill};
use crate::fs::error::{FsError, FsResult};
use crate::s3::{
    CompletedPart, CopyRequest, Metadata, ObjectStore, PartSource, S3Error, Sealing, MAX_PARTS,
    MIN_PART,
};

/// Upload tuning shared by all files.
#[derive(Debug, Clone, Copy)]
pub struct UploadConfig {
    /// Multipart part size (and chunk size) in bytes; at least 5 MiB.
    pub part_size: u64,
    /// Parts of one file in flight at once.
    pub part_concurrency: usize,
    /// Longest wait for locked memory before a request fails with ENOMEM: long enough for
    /// the uploads in flight to free some on a slow link, short enough that no request
    /// hangs forever when nothing can free it.
    pub memory_wait: std::time::Duration,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            part_size: 8 << 20,
            part_concurrency: 8,
            memory_wait: std::time::Duration::from_secs(120),
        }
    }
}

/// What the write path needs from the rest of the filesystem.
pub struct WriteContext {
    pub store: Arc<dyn ObjectStore>,
    pub arena: Arena,
    pub cache: Arc<BlockCache>,
    pub config: UploadConfig,
    /// Upload slots shared by all files, so concurrent writers share bandwidth fairly.
    pub upload_slots: Arc<Semaphore>,
    /// Where chunks go, sealed, when locked memory runs short (`--spill-dir`).
    pub spill: Option<Spill>,
}

/// Identity of each `DirtyFile` for the associated data of its sealed parts.
static NEXT_FILE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Where a file's content goes when it is uploaded: its object key and metadata now.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: String,
    pub meta: Metadata,
}

/// A chunk buffer; shared with an upload in flight so a failed upload loses nothing.
struct SharedBuf(Arc<LockedBuf>);

impl AsRef<[u8]> for SharedBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn body_of(buf: &Arc<LockedBuf>) -> Bytes {
    Bytes::from_owner(SharedBuf(buf.clone()))
}

/// A part upload's outcome; the buffer comes back only when it failed (on success it is
/// released at once, not when the writer next settles: small caches would pin it).
type PartResult = (u64, Result<CompletedPart, S3Error>, Option<Arc<LockedBuf>>);

/// A multipart upload under way: started while the application is still writing (its parts
/// stream), or whose parts are all uploaded but whose completion failed (kept, so that the
/// retry completes this upload instead of building a new one from data no longer held).
struct Streaming {
    key: String,
    meta: Metadata,
    upload_id: String,
    in_flight: BTreeMap<u64, JoinHandle<PartResult>>,
    done: BTreeMap<u64, CompletedPart>,
    /// Every part was uploaded and completion was tried: the next change must finish this
    /// upload first (its last part may be short, which only the last part may be).
    completing: bool,
}

impl Streaming {
    /// A new multipart upload under `target`'s key, with its metadata as it is now.
    async fn begin(ctx: &WriteContext, target: &Target) -> FsResult<Streaming> {
        let upload_id = ctx
            .store
            .create_multipart(&target.key, &target.meta)
            .await?;
        Ok(Streaming {
            key: target.key.clone(),
            meta: target.meta.clone(),
            upload_id,
            in_flight: BTreeMap::new(),
            done: BTreeMap::new(),
            completing: false,
        })
    }

    fn holds(&self, idx: u64) -> bool {
        self.in_flight.contains_key(&idx) || self.done.contains_key(&idx)
    }

    /// Wait for in-flight parts; failed parts give their buffer back. A part whose task died
    /// (panicked) took its only copy of the data with it: that is returned as the poison.
    async fn settle(
        &mut self,
        chunks: &mut BTreeMap<u64, Arc<LockedBuf>>,
        keep: usize,
    ) -> Option<String> {
        let mut poison = None;
        while self.in_flight.len() > keep {
            let (&idx, _) = self.in_flight.iter().next().unwrap();
            let handle = self.in_flight.remove(&idx).unwrap();
            match handle.await {
                Ok((i, Ok(part), _buf)) => {
                    self.done.insert(i, part);
                }
                Ok((i, Err(e), buf)) => {
                    tracing::warn!(part = i + 1, error = %e, "part upload failed; will retry at close");
                    if let Some(buf) = buf {
                        chunks.insert(i, buf);
                    }
                }
                Err(e) => {
                    tracing::error!(object = %self.key, part = idx + 1, error = %e, "part upload task died with the part's data; the file fails with EIO until it is rewritten");
                    poison = Some(format!("the upload of part {} died ({e})", idx + 1));
                }
            }
        }
        poison
    }
}

/// What one part of a multipart upload is made of, decided before any is built.
enum Plan {
    /// Already uploaded (streamed, or by an earlier attempt of this upload).
    Done(CompletedPart),
    /// A changed chunk held in memory, exactly the part's length.
    Upload(Arc<LockedBuf>),
    /// Sealed in the spill tier: opened only when its turn to upload comes, so a file
    /// larger than the arena uploads in bounded memory.
    Sealed(u64, usize),
    /// Untouched bytes of the base: UploadPartCopy, server-side.
    Copy(u64, u64),
    /// A hole (past what the base still holds): zeros, from one shared buffer.
    Zeros(usize),
}

/// `len` zero bytes as an upload body. Zeros are no secret, so they need no locked memory:
/// one buffer is shared by every hole part, however many a sparse file has.
fn zero_body(len: usize) -> Bytes {
    static ZEROS: std::sync::Mutex<Bytes> = std::sync::Mutex::new(Bytes::new());
    let mut zeros = ZEROS.lock().unwrap();
    if zeros.len() < len {
        *zeros = Bytes::from(vec![0u8; len]);
    }
    zeros.slice(..len)
}

/// File content that differs from the object on the server.
pub struct DirtyFile {
    part: u64,
    base: Option<ObjectRef>,
    /// Bytes of `base` still part of the file (shrinks with truncation, never grows).
    base_valid: u64,
    size: u64,
    /// Changed chunks: index → buffer whose length is the valid bytes from the chunk start;
    /// bytes past it (up to the file size) are zeros.
    chunks: BTreeMap<u64, Arc<LockedBuf>>,
    /// Changed chunks sealed in the spill tier while memory was short (never also in
    /// `chunks`); opened again when touched or uploaded.
    sealed: BTreeMap<u64, SealedPart>,
    /// This file's identity and seal generation, bound into each sealed part.
    id: u64,
    seals: u64,
    streaming: Option<Streaming>,
    dirty: bool,
    /// chmod/chown/utimens arrived while writing: the metadata fixed when a streaming upload
    /// began must be replaced after it completes.
    meta_explicit: bool,
    /// Metadata actually stored by the last flush when it kept the streaming upload's own
    /// (its times are those of the upload's start); the caller adopts them.
    kept_meta: Option<Metadata>,
    /// The base holds this content but not under the target's name or metadata: a
    /// server-side copy is owed (after a metadata-only change, or a completed upload whose
    /// metadata went stale).
    copy_owed: bool,
    /// An upload completed under this key (and ETag) before the file moved: deleted once
    /// the content is copied under the file's name.
    pending_delete: Option<(String, String)>,
    /// Data of this file was lost in memory (a part upload task died): every flush fails
    /// until the file is rewritten from scratch (truncated to 0), never uploading a guess.
    poisoned: Option<String>,
    /// Locked memory set aside for this writer's chunks (see `chunk_buf`).
    reserve: Option<Reserve>,
}

impl std::fmt::Debug for DirtyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyFile")
            .field("size", &self.size)
            .field("base", &self.base.as_ref().map(|b| &b.key))
            .field("chunks", &self.chunks.len())
            .field("sealed", &self.sealed.len())
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl DirtyFile {
    /// Content equal to `base` (or an empty new file when `None`, which is dirty: it must be
    /// created on the server).
    pub fn new(base: Option<ObjectRef>, config: &UploadConfig) -> DirtyFile {
        let size = base.as_ref().map_or(0, |b| b.size);
        let part = config
            .part_size
            .max(MIN_PART)
            .max(size.div_ceil(MAX_PARTS / 2));
        DirtyFile {
            part,
            dirty: base.is_none(),
            base_valid: size,
            base,
            size,
            chunks: BTreeMap::new(),
            sealed: BTreeMap::new(),
            id: NEXT_FILE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            seals: 0,
            streaming: None,
            meta_explicit: false,
            kept_meta: None,
            copy_owed: false,
            pending_delete: None,
            poisoned: None,
            reserve: None,
        }
    }

    /// An explicit metadata change (chmod, chown, utimens) for the next upload.
    pub fn mark_meta_changed(&mut self) {
        self.dirty = true;
        self.meta_explicit = true;
    }

    /// Metadata the last flush stored instead of the target's (see `kept_meta`).
    pub fn take_kept_meta(&mut self) -> Option<Metadata> {
        self.kept_meta.take()
    }

    /// Current size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Content or metadata differ from the server.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Metadata changed: the next flush must upload (or copy) even if no byte changed.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Locked memory held for this file.
    pub fn buffered_bytes(&self) -> usize {
        self.chunks.values().map(|c| c.capacity()).sum()
    }

    /// The object this content derives from.
    pub fn base(&self) -> Option<&ObjectRef> {
        self.base.as_ref()
    }

    /// A streaming multipart upload is under way (its key is fixed).
    pub fn is_streaming(&self) -> bool {
        self.streaming.is_some()
    }

    /// Part `idx` lies wholly within the base's bytes still part of the file: an unchanged
    /// part can be copied from it server-side.
    fn copyable(&self, idx: u64) -> bool {
        let (start, end) = self.chunk_range(idx);
        end <= self.base_valid && end > start
    }

    /// EIO once data of this file was lost in memory (see `poisoned`).
    fn check_whole(&self) -> FsResult<()> {
        match &self.poisoned {
            Some(why) => Err(FsError::Lost(why.clone())),
            None => Ok(()),
        }
    }

    fn chunk_range(&self, idx: u64) -> (u64, u64) {
        let start = idx * self.part;
        (start, (start + self.part).min(self.size.max(start)))
    }

    /// With a spill tier, seal this file's chunks outside `keep` until `need` bytes of locked
    /// memory are free (or nothing more can be sealed: then the caller waits for memory).
    async fn make_room(&mut self, ctx: &WriteContext, need: usize, keep: (u64, u64)) {
        let Some(spill) = &ctx.spill else { return };
        let mut skip = std::collections::BTreeSet::new();
        if self.reserve.as_ref().is_some_and(|r| r.bytes() >= need) {
            return; // the allocation that follows comes from the reserve
        }
        // what the reserve holds is not enough alone: it goes back, room is made in the arena
        self.reserve = None;
        while ctx.arena.free() < need {
            let Some(idx) = self
                .chunks
                .keys()
                .copied()
                .find(|&i| (i < keep.0 || i > keep.1) && !skip.contains(&i))
            else {
                return;
            };
            // a chunk shared with an upload being planned cannot move
            if Arc::strong_count(&self.chunks[&idx]) > 1 {
                skip.insert(idx);
                continue;
            }
            let buf = Arc::try_unwrap(self.chunks.remove(&idx).unwrap()).expect("unique");
            self.seals += 1;
            match spill
                .seal_part(part_aad(self.id, idx, self.seals), buf)
                .await
            {
                Ok(part) => {
                    tracing::debug!(part = idx + 1, "write chunk sealed to the spill tier");
                    self.sealed.insert(idx, part);
                }
                Err((e, buf)) => {
                    tracing::debug!(error = %e, "write chunk not spilled; waiting for memory");
                    self.chunks.insert(idx, Arc::new(buf));
                    return;
                }
            }
        }
    }

    /// Bring chunk `idx` back from the spill tier into `chunks`, if it was sealed.
    async fn unseal(&mut self, ctx: &WriteContext, idx: u64) -> FsResult<()> {
        let Some(need) = self.sealed.get(&idx).map(SealedPart::len) else {
            return Ok(());
        };
        self.make_room(ctx, need, (idx, idx)).await;
        let part = self.sealed.remove(&idx).expect("checked above");
        match part.open(&ctx.arena, need).await {
            Ok(buf) => {
                self.chunks.insert(idx, Arc::new(buf));
                Ok(())
            }
            Err(e) => {
                // keep it: every later access reports the loss too, nothing reads as zeros
                self.sealed.insert(idx, part);
                Err(e.into())
            }
        }
    }

    /// A buffer of `len` bytes for one of this file's chunks. A writer that holds no chunk
    /// (`holding` false) first waits for a reserve of a whole part (and the first chunk's
    /// growth), then draws on it without waiting: concurrent writers can never fill the cap
    /// with parts none of them can finish. Only a writer holding chunks already (random
    /// writes, with no spill tier to move them to) waits while holding, and that wait is
    /// bounded: ENOMEM rather than forever.
    async fn chunk_buf(
        &mut self,
        ctx: &WriteContext,
        len: usize,
        holding: bool,
    ) -> FsResult<LockedBuf> {
        if let Some(buf) = self.reserve.as_mut().and_then(|r| r.take(len)) {
            return Ok(buf?);
        }
        let wait = ctx.config.memory_wait;
        // what is left of the reserve is too small: back to the arena, where it and the
        // free memory together may be enough
        self.reserve = None;
        if !holding && self.chunks.is_empty() {
            let want = self.part as usize + GROWTH_STEP;
            let mut reserve = ctx.arena.reserve(want, wait).await?;
            let buf = reserve.take(len);
            self.reserve = Some(reserve);
            if let Some(buf) = buf {
                return Ok(buf?);
            }
        }
        Ok(ctx.arena.alloc_within(len, wait).await?)
    }

    /// Give back the memory set aside for writing (the file is closed, or flushed).
    pub fn trim_reserve(&mut self) {
        self.reserve = None;
    }

    /// Build the buffer for chunk `idx` holding at least `want` bytes: the base's bytes for
    /// that range (fetched) and zeros after.
    async fn load_chunk(
        &mut self,
        ctx: &WriteContext,
        idx: u64,
        want: usize,
    ) -> FsResult<LockedBuf> {
        let start = idx * self.part;
        let from_base = self.base_valid.saturating_sub(start).min(self.part) as usize;
        let cap = grow_capacity(want.max(from_base), 0, self.part as usize);
        let mut buf = self.chunk_buf(ctx, cap, false).await?;
        buf.set_len(from_base);
        if from_base > 0 {
            let base = self.base.as_ref().expect("base_valid > 0 implies a base");
            let got = ctx.cache.read(base, start, &mut buf, LARGE_BLOCK).await?;
            if got < from_base {
                return Err(FsError::S3(S3Error::PreconditionFailed));
            }
        }
        Ok(buf)
    }

    /// Write `data` at `offset`.
    pub async fn write(
        &mut self,
        ctx: &WriteContext,
        target: &Target,
        offset: u64,
        data: &[u8],
    ) -> FsResult<()> {
        let end = offset + data.len() as u64;
        if end.div_ceil(self.part) > MAX_PARTS {
            return Err(FsError::TooBig);
        }
        self.check_whole()?;
        if data.is_empty() {
            return Ok(());
        }
        let (first, last) = (offset / self.part, (end - 1) / self.part);
        if let Some(s) = &self.streaming {
            if s.completing || (first..=last).any(|i| s.holds(i)) {
                // Rewriting a part already sent: make the object whole, then edit it.
                self.flush(ctx, target).await?;
            }
        }
        for idx in first..=last {
            let cstart = idx * self.part;
            let from = offset.max(cstart);
            let to = end.min(cstart + self.part);
            let (lo, hi) = ((from - cstart) as usize, (to - cstart) as usize);
            self.unseal(ctx, idx).await?;
            let mut buf = match self.chunks.remove(&idx) {
                Some(b) => Arc::try_unwrap(b).expect("no upload holds a chunk still in the map"),
                None => {
                    if idx > 0 {
                        // A writer moving into a new chunk sends the full ones behind it
                        // first: it never holds one part while waiting for memory for the
                        // next (many writers at once would fill the cap and wait forever).
                        self.stream_chunks_below(ctx, target, idx).await?;
                    }
                    self.make_room(ctx, 2 * self.part as usize, (first, last))
                        .await;
                    // Past the first part the file is big: take the whole part at once
                    // rather than growing (and copying) the buffer as the writer fills it.
                    let want = if idx > 0 { self.part as usize } else { hi };
                    self.load_chunk(ctx, idx, want).await?
                }
            };
            if hi > buf.capacity() {
                self.make_room(ctx, self.part as usize, (first, last)).await;
                let cap = grow_capacity(hi, buf.capacity(), self.part as usize);
                let mut bigger = self.chunk_buf(ctx, cap, true).await?;
                bigger.set_len(buf.len());
                bigger.copy_from_slice(&buf);
                match &mut self.reserve {
                    Some(r) => r.recycle(std::mem::replace(&mut buf, bigger)),
                    None => buf = bigger,
                }
            }
            if hi > buf.len() {
                buf.set_len(hi);
            }
            buf[lo..hi].copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            self.chunks.insert(idx, Arc::new(buf));
        }
        self.size = self.size.max(end);
        self.dirty = true;
        self.stream_full_chunks(ctx, target, first).await
    }

    /// Send chunks that are full and behind the writer (before both the end of the file and
    /// the chunk being written, `writing`) as parts of a streaming upload. A chunk full only
    /// because it was loaded from the base is not sent while the writer is still in it (an
    /// in-place edit, e.g. `rsync --inplace`, would otherwise re-upload the object at once).
    async fn stream_full_chunks(
        &mut self,
        ctx: &WriteContext,
        target: &Target,
        writing: u64,
    ) -> FsResult<()> {
        if self.size <= self.part {
            return Ok(());
        }
        let last = ((self.size - 1) / self.part).min(writing);
        self.stream_chunks_below(ctx, target, last).await
    }

    /// Send the full chunks before chunk `below` as parts of a streaming upload.
    async fn stream_chunks_below(
        &mut self,
        ctx: &WriteContext,
        target: &Target,
        below: u64,
    ) -> FsResult<()> {
        let ready: Vec<u64> = self
            .chunks
            .range(..below)
            .filter(|(_, b)| b.len() as u64 == self.part)
            .map(|(&i, _)| i)
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        if self.streaming.is_none() {
            self.streaming = Some(Streaming::begin(ctx, target).await?);
        }
        let stream = self.streaming.as_mut().unwrap();
        for idx in ready {
            let buf = self.chunks.remove(&idx).unwrap();
            let store = ctx.store.clone();
            let slots = ctx.upload_slots.clone();
            let (key, upload_id) = (stream.key.clone(), stream.upload_id.clone());
            stream.in_flight.insert(
                idx,
                tokio::spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    tracing::debug!(part = idx + 1, "part upload starts");
                    let r = store
                        .upload_part(&key, &upload_id, idx as i32 + 1, body_of(&buf))
                        .await;
                    tracing::debug!(part = idx + 1, ok = r.is_ok(), "part upload done");
                    let keep = r.is_err().then_some(buf);
                    (idx, r, keep)
                }),
            );
        }
        // Backpressure: a writer never has more than `part_concurrency` parts in flight.
        if let Some(why) = stream
            .settle(&mut self.chunks, ctx.config.part_concurrency)
            .await
        {
            self.poisoned = Some(why.clone());
            return Err(FsError::Lost(why));
        }
        Ok(())
    }

    /// Read into `out` at `offset`; returns the bytes read (short at end of file).
    pub async fn read(
        &mut self,
        ctx: &WriteContext,
        target: &Target,
        offset: u64,
        out: &mut [u8],
    ) -> FsResult<usize> {
        self.check_whole()?;
        let end = (offset + out.len() as u64).min(self.size);
        if offset >= end {
            return Ok(0);
        }
        if let Some(s) = &self.streaming {
            let (first, last) = (offset / self.part, (end - 1) / self.part);
            if (first..=last).any(|i| s.holds(i)) {
                self.flush(ctx, target).await?;
            }
        }
        let mut pos = offset;
        while pos < end {
            let idx = pos / self.part;
            let cstart = idx * self.part;
            let piece_end = end.min(cstart + self.part);
            let dst = &mut out[(pos - offset) as usize..(piece_end - offset) as usize];
            dst.fill(0);
            self.unseal(ctx, idx).await?;
            if let Some(chunk) = self.chunks.get(&idx) {
                let lo = (pos - cstart) as usize;
                let hi = ((piece_end - cstart) as usize).min(chunk.len());
                if lo < hi {
                    dst[..hi - lo].copy_from_slice(&chunk[lo..hi]);
                }
            } else if pos < self.base_valid {
                let base = self.base.as_ref().expect("base_valid > 0 implies a base");
                let upto = piece_end.min(self.base_valid);
                ctx.cache
                    .read(base, pos, &mut dst[..(upto - pos) as usize], LARGE_BLOCK)
                    .await?;
            }
            pos = piece_end;
        }
        Ok((end - offset) as usize)
    }

    /// Change the size; new bytes read as zeros.
    pub async fn truncate(
        &mut self,
        ctx: &WriteContext,
        target: &Target,
        new_size: u64,
    ) -> FsResult<()> {
        if new_size.div_ceil(self.part) > MAX_PARTS {
            return Err(FsError::TooBig);
        }
        if new_size == 0 && self.poisoned.is_some() {
            // rewritten from scratch: what was lost no longer matters
            self.discard(ctx).await;
            self.base_valid = 0;
            self.size = 0;
            self.dirty = true;
            return Ok(());
        }
        self.check_whole()?;
        if self.streaming.is_some() {
            self.flush(ctx, target).await?;
        }
        if new_size < self.size {
            self.base_valid = self.base_valid.min(new_size);
            let keep_upto = new_size.div_ceil(self.part);
            self.chunks.retain(|&i, _| i < keep_upto);
            self.sealed.retain(|&i, _| i < keep_upto);
            let idx = new_size / self.part;
            let within = (new_size - idx * self.part) as usize;
            self.unseal(ctx, idx).await?;
            if let Some(chunk) = self.chunks.get_mut(&idx) {
                let chunk = Arc::get_mut(chunk).expect("no upload holds a chunk in the map");
                if chunk.len() > within {
                    chunk.set_len(within);
                }
            }
        }
        if new_size != self.size {
            self.size = new_size;
            self.dirty = true;
        }
        Ok(())
    }

    /// Make the server object equal to this content under `target`; returns the new object.
    ///
    /// A flush is a sequence of steps (upload the content, complete it, copy it under the
    /// file's name and metadata, delete what a move left behind), and after each step that
    /// succeeds this state describes what is on the server: a step that fails leaves the
    /// state a retry can only finish from, never one it would rebuild from data no longer
    /// held (a completed upload is the new base at once). On error nothing held in memory is
    /// lost.
    pub async fn flush(&mut self, ctx: &WriteContext, target: &Target) -> FsResult<ObjectRef> {
        // Only this flush's choice counts: a write that rewrote a streamed part flushed once
        // already, and what that flush kept is not what the server will hold after this one.
        self.kept_meta = None;
        if let Some(why) = &self.poisoned {
            return Err(FsError::Lost(why.clone()));
        }
        // what was set aside for writing is needed by the upload (opened sealed parts)
        self.reserve = None;
        if !self.dirty {
            match &self.base {
                Some(b) if b.key == target.key => return Ok(b.clone()),
                // clean content under another name: a copy makes it the target's
                Some(_) => self.copy_owed = true,
                None => {}
            }
        }
        if self.content_differs() {
            self.upload(ctx, target).await?;
        } else if !self.copy_owed && self.pending_delete.is_none() {
            // nothing but the attributes changed (chmod, chown, utimens of a clean file)
            self.copy_owed = true;
        }
        if self.copy_owed {
            self.copy_base_to(ctx, target).await?;
        }
        if let Some((old, etag)) = self.pending_delete.clone() {
            self.delete_moved(ctx, &old, &etag).await?;
            self.pending_delete = None;
        }
        self.dirty = false;
        self.meta_explicit = false;
        Ok(self.base.clone().expect("a flushed file has a base"))
    }

    /// The content differs from the base object's (or there is no base yet): an upload is
    /// owed, not only a copy.
    fn content_differs(&self) -> bool {
        self.streaming.is_some()
            || !self.chunks.is_empty()
            || !self.sealed.is_empty()
            || match &self.base {
                None => true,
                Some(b) => self.base_valid != b.size || self.size != b.size,
            }
    }

    /// The server now holds this content as `obj`: it is the base, nothing is held for it.
    fn rebase(&mut self, ctx: &WriteContext, obj: ObjectRef) {
        ctx.cache.invalidate(&obj.key);
        self.base_valid = obj.size;
        self.size = obj.size;
        self.base = Some(obj);
        self.chunks.clear();
        self.sealed.clear();
        self.streaming = None;
    }

    /// Upload the content: one PutObject for a small file, else a multipart upload. On
    /// success the result is the base; `copy_owed` / `pending_delete` say what is left.
    async fn upload(&mut self, ctx: &WriteContext, target: &Target) -> FsResult<()> {
        if self.streaming.is_none() && self.size <= self.part {
            let buf = self.materialize(ctx, 0, self.size as usize).await?;
            let etag = ctx
                .store
                .put(&target.key, body_of(&buf), &target.meta)
                .await?;
            drop(buf);
            self.rebase(ctx, self.object(&target.key, etag));
            self.copy_owed = false;
            return Ok(());
        }
        let (key, etag, stored_meta) = self.upload_multipart(ctx, target).await?;
        self.rebase(ctx, self.object(&key, etag.clone()));
        // Metadata fixed when the upload began may be stale. Times that moved only because
        // of the writes themselves are kept (the upload's start time); an explicit
        // chmod/chown/utimens, or a rename while writing, is fixed server-side by a copy.
        let stale = Some(stored_meta).filter(|m| *m != target.meta);
        let only_times = stale.as_ref().is_some_and(|m| {
            let strip = |x: &Metadata| {
                let mut x = x.clone();
                x.remove("mtime");
                x.remove("ctime");
                x
            };
            strip(m) == strip(&target.meta)
        });
        if key != target.key {
            self.copy_owed = true;
            self.pending_delete = Some((key, etag));
        } else if only_times && !self.meta_explicit {
            self.kept_meta = stale;
            self.copy_owed = false;
        } else {
            self.copy_owed = stale.is_some();
        }
        Ok(())
    }

    /// The base object, complete, copied under `target` with its metadata (server-side).
    async fn copy_base_to(&mut self, ctx: &WriteContext, target: &Target) -> FsResult<()> {
        let base = self.base.clone().expect("a copy is owed only with a base");
        let etag = crate::s3::copy_any_size(
            ctx.store.as_ref(),
            &CopyRequest {
                src: &base.key,
                dst: &target.key,
                meta: Some(&target.meta),
                src_sealing: base.sealing,
            },
            self.size,
            self.part,
        )
        .await?;
        self.rebase(ctx, self.object(&target.key, etag));
        self.copy_owed = false;
        Ok(())
    }

    /// Delete the object an upload completed under before the file moved, once its copy
    /// exists under the file's name; only while it is still that upload (another file may
    /// have taken the name since).
    async fn delete_moved(&self, ctx: &WriteContext, key: &str, etag: &str) -> FsResult<()> {
        match ctx.store.head(key).await {
            Ok(info) if info.etag == etag => {
                ctx.store.delete(key).await?;
                ctx.cache.invalidate(key);
                Ok(())
            }
            Ok(_) | Err(S3Error::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn object(&self, key: &str, etag: String) -> ObjectRef {
        ObjectRef {
            key: key.to_owned(),
            etag,
            size: self.size,
            sealing: Sealing::PRIMARY,
        }
    }

    /// Chunk `idx` as an upload body of exactly `len` bytes (taken from memory, or built from
    /// the base and zeros).
    async fn materialize(
        &mut self,
        ctx: &WriteContext,
        idx: u64,
        len: usize,
    ) -> FsResult<Arc<LockedBuf>> {
        self.make_room(ctx, 2 * len, (idx, idx)).await;
        self.unseal(ctx, idx).await?;
        let buf = match self.chunks.remove(&idx) {
            Some(b) => b,
            None => Arc::new(self.load_chunk(ctx, idx, len).await?),
        };
        let mut buf = match Arc::try_unwrap(buf) {
            Ok(b) => b,
            Err(_) => unreachable!("chunks in the map are not shared"),
        };
        if len > buf.capacity() {
            let mut bigger = self.chunk_buf(ctx, len, true).await?;
            bigger.set_len(buf.len());
            bigger.copy_from_slice(&buf);
            buf = bigger;
        }
        buf.set_len(len);
        let buf = Arc::new(buf);
        // Keep it in the map until the upload succeeded.
        self.chunks.insert(idx, buf.clone());
        Ok(buf)
    }

    /// What part `idx` (bytes `start..end` of the file) is made of at upload time. Holes are
    /// not built here (zeros need no memory); a chunk shorter than its part, or the one part
    /// that straddles the end of the base's bytes, is built now, as memory allows.
    async fn plan_part(
        &mut self,
        ctx: &WriteContext,
        idx: u64,
        done: &BTreeMap<u64, CompletedPart>,
    ) -> FsResult<Plan> {
        let (start, end) = self.chunk_range(idx);
        let len = (end - start) as usize;
        if let Some(p) = done.get(&idx) {
            return Ok(Plan::Done(p.clone()));
        }
        if self.sealed.contains_key(&idx) {
            return Ok(Plan::Sealed(idx, len));
        }
        if let Some(chunk) = self.chunks.get(&idx) {
            if chunk.len() == len {
                return Ok(Plan::Upload(chunk.clone()));
            }
        } else if self.copyable(idx) {
            return Ok(Plan::Copy(start, end));
        } else if start >= self.base_valid {
            return Ok(Plan::Zeros(len));
        }
        Ok(Plan::Upload(self.materialize(ctx, idx, len).await?))
    }

    /// Upload every part (streamed, from memory, copied server-side, or built when its turn
    /// comes) and complete the upload; returns the key, ETag and metadata it completed with.
    /// Parts are planned first and only those in flight are built, so a file of any size and
    /// sparseness uploads in at most `part_concurrency` parts of memory beyond what it holds.
    async fn upload_multipart(
        &mut self,
        ctx: &WriteContext,
        target: &Target,
    ) -> FsResult<(String, String, Metadata)> {
        let n = self.size.div_ceil(self.part).max(1);
        if let Some(s) = &mut self.streaming {
            if let Some(why) = s.settle(&mut self.chunks, 0).await {
                self.poisoned = Some(why.clone());
                return Err(FsError::Lost(why));
            }
        }
        if !self.sealed.is_empty() {
            // sealed parts are opened one part at a time below: make sure one fits
            self.make_room(ctx, self.part as usize, (u64::MAX, 0)).await;
        }
        if self.streaming.is_none() {
            self.streaming = Some(Streaming::begin(ctx, target).await?);
        }
        let s = self.streaming.as_ref().expect("set above");
        let (key, upload_id, meta) = (s.key.clone(), s.upload_id.clone(), s.meta.clone());
        let done = s.done.clone();
        let mut plans = Vec::with_capacity(n as usize);
        for idx in 0..n {
            plans.push(self.plan_part(ctx, idx, &done).await?);
        }
        let base = self.base.clone();
        let sealed = &self.sealed;
        let results: Vec<Result<CompletedPart, FsError>> =
            futures::stream::iter(plans.into_iter().enumerate().map(|(i, plan)| {
                let (key, upload_id, base) = (key.clone(), upload_id.clone(), base.clone());
                async move {
                    let number = i as i32 + 1;
                    if let Plan::Done(p) = plan {
                        return Ok(p);
                    }
                    let _slot = ctx.upload_slots.acquire().await;
                    let body = match plan {
                        Plan::Done(_) => unreachable!("returned above"),
                        Plan::Upload(buf) => body_of(&buf),
                        Plan::Zeros(len) => zero_body(len),
                        Plan::Sealed(idx, len) => {
                            let mut buf = sealed[&idx].open(&ctx.arena, len).await?;
                            buf.set_len(len);
                            body_of(&Arc::new(buf))
                        }
                        Plan::Copy(s, e) => {
                            let base = base.expect("copy plan implies a base");
                            let part = ctx
                                .store
                                .upload_part_copy(
                                    &key,
                                    &upload_id,
                                    number,
                                    &PartSource {
                                        key: &base.key,
                                        range: s..e,
                                        sealing: base.sealing,
                                        etag: Some(&base.etag),
                                    },
                                )
                                .await?;
                            return Ok(part);
                        }
                    };
                    let part = ctx
                        .store
                        .upload_part(&key, &upload_id, number, body)
                        .await?;
                    debug_assert_eq!(part.number, number);
                    Ok(part)
                }
            }))
            .buffered(ctx.config.part_concurrency.max(1))
            .collect()
            .await;
        // Parts that made it are kept: a retry after a later failure uploads only the rest.
        let mut parts = Vec::with_capacity(results.len());
        let mut first_err = None;
        {
            let s = self.streaming.as_mut().expect("set above");
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(p) => {
                        s.done.insert(i as u64, p.clone());
                        parts.push(p);
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.streaming.as_mut().expect("set above").completing = true;
        match ctx.store.complete_multipart(&key, &upload_id, parts).await {
            Ok(etag) => Ok((key, etag, meta)),
            Err(e) => {
                if matches!(&e, S3Error::Other { code, .. } if code == "NoSuchUpload") {
                    // The upload is gone and not as ours completed: what it held exists no
                    // more. Parts still in memory can go into a new one; streamed ones cannot.
                    self.upload_vanished();
                }
                Err(e.into())
            }
        }
    }

    /// The multipart upload under way no longer exists on the server (aborted elsewhere).
    fn upload_vanished(&mut self) {
        let Some(s) = self.streaming.take() else {
            return;
        };
        let lost: Vec<u64> = s
            .done
            .keys()
            .copied()
            .filter(|i| {
                // a part copied from the base can be copied again
                !self.chunks.contains_key(i) && !self.sealed.contains_key(i) && !self.copyable(*i)
            })
            .collect();
        if let Some(first) = lost.first() {
            let why = format!(
                "multipart upload of {} vanished from the server with {} streamed parts (first: part {})",
                s.key,
                lost.len(),
                first + 1
            );
            tracing::error!(object = %s.key, "{why}; the file fails with EIO until it is rewritten");
            self.poisoned = Some(why);
        }
    }

    /// Give up: abort a streaming upload (the file was deleted while open).
    pub async fn discard(&mut self, ctx: &WriteContext) {
        if let Some(mut s) = self.streaming.take() {
            s.settle(&mut self.chunks, 0).await;
            let _ = ctx.store.abort_multipart(&s.key, &s.upload_id).await;
        }
        self.chunks.clear();
        self.sealed.clear();
        self.dirty = false;
        self.copy_owed = false;
        self.pending_delete = None;
        self.poisoned = None;
    }
}

/// Growth of a chunk buffer past its first size, before it is a whole part.
const GROWTH_STEP: usize = 1 << 20;

/// Next buffer capacity for a chunk that needs `need` bytes: 64 KiB (most files), then
/// 1 MiB, then the whole part. Few steps, so a writer's reserve of a part and one step
/// covers its growth.
fn grow_capacity(need: usize, current: usize, part: usize) -> usize {
    let cap = [64 << 10, GROWTH_STEP, part]
        .into_iter()
        .find(|&c| c >= need && c > current)
        .unwrap_or(part);
    cap.min(part).max(need)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::mem::MemStore;
    use rand::{Rng, SeedableRng};

    const P: u64 = 5 << 20;

    fn ctx(mem: &MemStore) -> WriteContext {
        ctx_with(mem, 256 << 20, None)
    }

    /// A small arena with a spill tier of `spill` bytes in `dir`.
    fn spill_ctx(mem: &MemStore, arena: usize, dir: &std::path::Path, spill: u64) -> WriteContext {
        ctx_with(mem, arena, Some((dir, spill)))
    }

    fn ctx_with(
        mem: &MemStore,
        cap: usize,
        spill: Option<(&std::path::Path, u64)>,
    ) -> WriteContext {
        let arena = Arena::with_cap_unchecked(cap);
        let spill = spill.map(|(d, n)| Spill::create(d, n, &arena).unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(mem.clone());
        WriteContext {
            // as in a mount, the read cache gets part of the arena, not more than all of it
            cache: Arc::new(BlockCache::new(
                store.clone(),
                arena.clone(),
                (cap as u64 / 4).min(32 << 20),
            )),
            store,
            arena,
            config: UploadConfig {
                part_size: P,
                part_concurrency: 4,
                ..UploadConfig::default()
            },
            upload_slots: Arc::new(Semaphore::new(8)),
            spill,
        }
    }

    fn target(key: &str) -> Target {
        Target {
            key: key.into(),
            meta: Metadata::new(),
        }
    }

    #[tokio::test]
    async fn small_file_is_one_put() {
        let mem = MemStore::new("k");
        let c = ctx(&mem);
        let mut f = DirtyFile::new(None, &c.config);
        f.write(&c, &target("a"), 0, b"hello").await.unwrap();
        f.write(&c, &target("a"), 10, b"world").await.unwrap();
        f.flush(&c, &target("a")).await.unwrap();
        assert_eq!(mem.raw("a").unwrap(), b"hello\0\0\0\0\0world");
        assert_eq!(mem.counts()["put"], 1);
    }

    #[tokio::test]
    async fn sequential_big_write_streams_parts() {
        let mem = MemStore::new("k");
        let c = ctx(&mem);
        let mut f = DirtyFile::new(None, &c.config);
        let block = vec![7u8; 1 << 20];
        for i in 0..23u64 {
            f.write(&c, &target("big"), i << 20, &block).await.unwrap();
        }
        // parts behind the writer left memory before close: at most the last chunk is held
        assert!(
            f.buffered_bytes() <= P as usize,
            "{} bytes held",
            f.buffered_bytes()
        );
        f.flush(&c, &target("big")).await.unwrap();
        let data = mem.raw("big").unwrap();
        assert_eq!(data.len(), 23 << 20);
        assert!(data.iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn one_byte_edit_of_big_object_uploads_one_part() {
        let mem = MemStore::new("k");
        let c = ctx(&mem);
        let original: Vec<u8> = (0..(20 * P as usize + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        mem.put("big", Bytes::from(original.clone()), &Metadata::new())
            .await
            .unwrap();
        let info = mem.head("big").await.unwrap();
        let base = ObjectRef {
            key: "big".into(),
            etag: info.etag,
            size: info.size,
            sealing: Sealing::PRIMARY,
        };
        let before = mem.uploaded_bytes();
        let mut f = DirtyFile::new(Some(base), &c.config);
        f.write(&c, &target("big"), 7 * P + 5, b"X").await.unwrap();
        f.flush(&c, &target("big")).await.unwrap();
        let mut expect = original.clone();
        expect[(7 * P + 5) as usize] = b'X';
        assert_eq!(mem.raw("big").unwrap(), expect);
        let uploaded = mem.uploaded_bytes() - before;
        assert!(uploaded <= P, "uploaded {uploaded} bytes for a 1-byte edit");
        assert_eq!(mem.counts()["upload_part_copy"], 20);
    }

    /// A file 3× the arena written at random offsets: chunks are sealed to the spill tier
    /// instead of the writer waiting forever for memory, and the upload is exact.
    #[tokio::test]
    async fn random_writes_larger_than_the_arena_go_through_the_spill_tier() {
        let mem = MemStore::new("k");
        let dir = tempfile::tempdir().unwrap();
        let c = spill_ctx(&mem, 4 * P as usize, dir.path(), 64 * P);
        let t = target("r");
        let total = 12 * P as usize;
        let piece = 1 << 20;
        let mut order: Vec<usize> = (0..total / piece).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
        let pattern = |i: usize| (i.wrapping_mul(2654435761) >> 7) as u8;
        let expect: Vec<u8> = (0..total).map(pattern).collect();
        let mut f = DirtyFile::new(None, &c.config);
        let write = async {
            for &p in &order {
                let off = p * piece;
                f.write(&c, &t, off as u64, &expect[off..off + piece])
                    .await
                    .unwrap();
            }
            // reads see sealed data too
            let mut out = vec![0u8; 3 << 20];
            let n = f.read(&c, &t, 7 << 20, &mut out).await.unwrap();
            assert_eq!(&out[..n], &expect[7 << 20..(7 << 20) + n]);
            f.flush(&c, &t).await.unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), write)
            .await
            .expect("writes larger than the arena must not hang with a spill tier");
        assert_eq!(mem.raw("r").unwrap(), expect);
        assert!(c.arena.in_use() <= c.arena.cap());
        assert_eq!(
            c.spill.as_ref().unwrap().stats().dirty_parts,
            0,
            "slots freed"
        );
    }

    /// Random writes, truncates and reads against a plain Vec model.
    #[tokio::test]
    async fn random_operations_match_a_model() {
        model_test(&MemStore::new("k"), ctx).await;
    }

    /// The same with an arena of 3 parts and a spill tier: chunks move in and out of it.
    #[tokio::test]
    async fn random_operations_match_a_model_through_the_spill_tier() {
        let dir = tempfile::tempdir().unwrap();
        model_test(&MemStore::new("k"), |mem| {
            spill_ctx(mem, 3 * P as usize, dir.path(), 64 * P)
        })
        .await;
    }

    async fn model_test(mem: &MemStore, make: impl Fn(&MemStore) -> WriteContext) {
        let mem = mem.clone();
        let c = make(&mem);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x55ecf5);
        let mut model: Vec<u8> = Vec::new();
        let mut f = DirtyFile::new(None, &c.config);
        let t = target("m");
        for step in 0..300 {
            match rng.gen_range(0..10) {
                0..=4 => {
                    let off = rng.gen_range(0..(3 * P));
                    let len = rng.gen_range(1..200_000usize);
                    let byte = rng.gen::<u8>();
                    let data = vec![byte; len];
                    f.write(&c, &t, off, &data).await.unwrap();
                    let end = off as usize + len;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[off as usize..end].copy_from_slice(&data);
                }
                5 => {
                    let n = rng.gen_range(0..(3 * P));
                    f.truncate(&c, &t, n).await.unwrap();
                    model.resize(n as usize, 0);
                }
                6..=7 => {
                    let off = rng.gen_range(0..(3 * P));
                    let mut out = vec![0u8; rng.gen_range(1..300_000)];
                    let n = f.read(&c, &t, off, &mut out).await.unwrap();
                    let expect = model.get(off as usize..).unwrap_or(&[]);
                    let expect = &expect[..expect.len().min(out.len())];
                    assert_eq!(&out[..n], expect, "step {step}");
                }
                _ => {
                    f.flush(&c, &t).await.unwrap();
                    assert_eq!(mem.raw("m").unwrap(), model, "step {step}");
                }
            }
            assert_eq!(f.size(), model.len() as u64);
        }
        f.flush(&c, &t).await.unwrap();
        assert_eq!(mem.raw("m").unwrap(), model);
    }
}
