//! [`FileContent`]: a file's content as this mount holds it (its base object and the chunks
//! changed since), and its upload.
//!
//! Here: the file's state (chunks in memory or sealed in the spill tier, the base), writes,
//! reads, truncation and the steps of a flush. `multipart` streams parts and carries out the
//! plan of [`crate::upload::plan`] at flush.

mod multipart;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::arena::{Arena, LockedBuf, Reserve};
use crate::cache::blocks::{BlockCache, ObjectRef, LARGE_BLOCK};
use crate::cache::spill::{part_aad, SealedPart, Spill};
use crate::error::{FsError, FsResult};
use crate::s3::{CopyRequest, Metadata, ObjectStore, S3Error, Sealing, MAX_PARTS, MIN_PART};

use self::multipart::Streaming;

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

/// Identity of each `FileContent` for the associated data of its sealed parts.
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

/// A file's content as this mount holds it: the object it is based on (maybe unchanged: a
/// file open for reading and writing keeps its state after an upload), the chunks changed
/// since, and the upload in progress.
pub struct FileContent {
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

impl std::fmt::Debug for FileContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileContent")
            .field("size", &self.size)
            .field("base", &self.base.as_ref().map(|b| &b.key))
            .field("chunks", &self.chunks.len())
            .field("sealed", &self.sealed.len())
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl FileContent {
    /// Content equal to `base` (or an empty new file when `None`, which is dirty: it must be
    /// created on the server).
    pub fn new(base: Option<ObjectRef>, config: &UploadConfig) -> FileContent {
        let size = base.as_ref().map_or(0, |b| b.size);
        let part = config
            .part_size
            .max(MIN_PART)
            .max(size.div_ceil(MAX_PARTS / 2));
        FileContent {
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
        match open_sealed(&part, ctx, need).await {
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
                x.remove("atime");
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

/// Sealed chunk `part` opened into a buffer of `len` bytes (zeros past its data when the part
/// is longer): the one way a sealed chunk comes back, whether it is touched again or uploaded.
/// A failure is a loss: there is no other copy.
async fn open_sealed(
    part: &SealedPart,
    ctx: &WriteContext,
    len: usize,
) -> Result<LockedBuf, crate::cache::spill::SpillError> {
    let mut buf = part.open(&ctx.arena, len).await?;
    buf.set_len(len);
    Ok(buf)
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
