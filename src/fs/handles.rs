//! Open handles and the read path.
//!
//! A file handle carries only its reader's pattern (sequential or random, and how far to read
//! ahead); a directory handle carries the entries it was opened with, so `readdir` answers
//! from memory. The handle table is a leaf lock: the read path decides under it and calls the
//! block cache after letting it go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::writeback::FileState;
use super::{DirEntry, Fs, ReadData};
use crate::arena::LockedBuf;
use crate::cache::blocks::{ObjectRef, LARGE_BLOCK, SMALL_BLOCK};
use crate::error::{FsError, FsResult};
use crate::s3::S3Error;
use crate::sync::{rank, Mutex};

/// Per-handle sequential-read detection.
#[derive(Debug, Default, Clone, Copy)]
struct ReadAhead {
    next: u64,
    window: u64,
}

enum Handle {
    /// `write`: opened for writing (its close stores pending attributes, see `close_ino`).
    File {
        ra: ReadAhead,
        write: bool,
    },
    Dir {
        entries: Arc<Vec<DirEntry>>,
    },
}

/// How a read of a file handle is served: from small blocks, or from large ones with the
/// blocks up to `window` bytes past it prefetched when `sequential`.
#[derive(Debug, Clone, Copy)]
struct Pattern {
    sequential: bool,
    window: u64,
}

/// The open handles. Its lock is a leaf: nothing else is locked while it is held.
pub(super) struct Handles {
    table: Mutex<HashMap<u64, Handle>, { rank::LEAF }>,
    next_fh: AtomicU64,
}

impl Handles {
    pub(super) fn new() -> Handles {
        Handles {
            table: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
    }

    fn insert(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.table.lock().insert(fh, h);
        fh
    }

    /// A new file handle.
    pub(super) fn open_file(&self, write: bool) -> u64 {
        self.insert(Handle::File {
            ra: ReadAhead::default(),
            write,
        })
    }

    /// A new directory handle serving `entries`.
    pub(super) fn open_dir(&self, entries: Vec<DirEntry>) -> u64 {
        self.insert(Handle::Dir {
            entries: Arc::new(entries),
        })
    }

    /// Forget handle `fh`; whether it was a file opened for writing.
    pub(super) fn release(&self, fh: u64) -> bool {
        let gone = self.table.lock().remove(&fh);
        matches!(gone, Some(Handle::File { write: true, .. }))
    }

    /// Entries of directory handle `fh` from `offset` on.
    pub(super) fn dir_entries(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        match self.table.lock().get(&fh) {
            Some(Handle::Dir { entries }) => Ok(entries
                .iter()
                .enumerate()
                .skip(offset as usize)
                .map(|(i, e)| (i as u64 + 1, e.clone()))
                .collect()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// Record a read of `size` bytes at `offset` through `fh`: sequential or random? The
    /// read-ahead window grows for sequential readers, up to `max`. `None`: not a file handle.
    fn note_read(&self, fh: u64, offset: u64, size: u32, max: u64) -> Option<Pattern> {
        let mut table = self.table.lock();
        let Some(Handle::File { ra, .. }) = table.get_mut(&fh) else {
            return None;
        };
        let sequential = offset == ra.next || (offset == 0 && ra.next == 0);
        ra.window = if sequential {
            (ra.window * 2).clamp(LARGE_BLOCK * 2, max)
        } else {
            0
        };
        ra.next = offset + u64::from(size);
        Some(Pattern {
            sequential,
            window: ra.window,
        })
    }
}

impl Fs {
    /// A read of a file with in-memory state: from that state (it knows what is written).
    pub(super) async fn read_from_state(
        &self,
        ino: u64,
        file: FileState,
        offset: u64,
        size: u32,
    ) -> FsResult<ReadData> {
        let mut out = self.alloc_read(size).await?;
        let target = self.names.target(ino)?;
        let mut f = file.clone().lock_owned().await;
        let was_clean = !f.is_dirty();
        let n = match f.read(&self.wctx, &target, offset, &mut out).await {
            Ok(n) => n,
            Err(e) => {
                let mut f = self.rebuilt_after(ino, &file, f, was_clean, e).await?;
                f.read(&self.wctx, &target, offset, &mut out).await?
            }
        };
        out.set_len(n);
        Ok(ReadData::Owned(out))
    }

    /// A read of a file without in-memory state: from its object, through the block cache.
    pub(super) async fn read_from_object(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<ReadData> {
        let node = self.names.node(ino)?;
        if node.attr.kind != super::attr::Kind::File {
            return Err(FsError::IsDir);
        }
        if !node.remote && !self.names.table().is_linked(ino) {
            // Replaced or removed while open: its object is gone (or is another file's now);
            // answering 0 bytes would let the kernel fill the file with zeros.
            return Err(S3Error::PreconditionFailed.into());
        }
        if offset >= node.attr.size || !node.remote {
            return Ok(ReadData::Owned(self.wctx.arena.alloc(0).await?));
        }
        let obj = ObjectRef {
            key: self.names.file_key(ino)?,
            etag: node.etag.clone(),
            size: node.attr.size,
            sealing: node.sealing,
        };
        let block = self.block_for(&obj, fh, offset, size);
        match self.read_object(&obj, offset, size, block).await {
            Err(FsError::S3(e @ (S3Error::PreconditionFailed | S3Error::NotFound))) => {
                self.read_changed_object(ino, obj, e, offset, size, block)
                    .await
            }
            other => other,
        }
    }

    /// The block size a read of `obj` through `fh` uses, starting read-ahead for a
    /// sequential reader; `None` for a random read (the cache picks, see `read_object`).
    fn block_for(&self, obj: &ObjectRef, fh: u64, offset: u64, size: u32) -> Option<u64> {
        let max = self.cfg.max_readahead;
        let pattern = self.handles.note_read(fh, offset, size, max);
        if obj.size <= SMALL_BLOCK {
            // one small block holds it all (and a directory read may have fetched it)
            return Some(SMALL_BLOCK);
        }
        match pattern {
            Some(p) if p.sequential => {
                let from = (offset + u64::from(size)) / LARGE_BLOCK + 1;
                let to = (offset + p.window).div_ceil(LARGE_BLOCK) + 1;
                self.wctx.cache.prefetch(obj, LARGE_BLOCK, from, to);
                Some(LARGE_BLOCK)
            }
            _ => None,
        }
    }

    /// After `e` reading `obj` (its object changed or is gone): a rename or unlink in this
    /// mount may be moving this file or replacing its object, so let it finish, then look
    /// again at what this inode is and read that.
    async fn read_changed_object(
        &self,
        ino: u64,
        mut obj: ObjectRef,
        e: S3Error,
        offset: u64,
        size: u32,
        block: Option<u64>,
    ) -> FsResult<ReadData> {
        let _ns = self.namespace.read().await;
        let (linked, now) = {
            let t = self.names.table();
            (t.is_linked(ino), t.get(ino).cloned())
        };
        let now = match now {
            Some(n) if linked && n.remote => n,
            // replaced or removed while open: never serve another file's bytes
            _ => return Err(S3Error::PreconditionFailed.into()),
        };
        let key = self.names.file_key(ino)?;
        if key != obj.key || now.etag != obj.etag {
            // moved or rewritten by this mount meanwhile: read what it is now
            obj.key = key;
            obj.etag = now.etag;
            obj.size = now.attr.size;
            return self.read_object(&obj, offset, size, block).await;
        }
        if matches!(e, S3Error::NotFound) {
            return Err(e.into());
        }
        // The object changed on the server: refresh and read the new version.
        let now = self.refresh_object(ino, &obj.key).await?;
        obj.etag = now.etag;
        obj.size = now.size;
        self.read_object(&obj, offset, size, block).await
    }

    /// `obj[offset..offset+size)` from the block cache, in blocks of `block` (`None`: a
    /// random read, which the cache may answer from the spill tier without caching a block):
    /// straight from one block when it holds the whole range, else copied together.
    async fn read_object(
        &self,
        obj: &ObjectRef,
        offset: u64,
        size: u32,
        block: Option<u64>,
    ) -> FsResult<ReadData> {
        let cache = &self.wctx.cache;
        let len = u64::from(size);
        let one = match block {
            Some(block) => cache.within_one_block(obj, offset, len, block).await?,
            None => cache.read_random(obj, offset, len).await?,
        };
        if let Some((b, range)) = one {
            return Ok(ReadData::Block(b, range));
        }
        let block = block.unwrap_or_else(|| cache.random_block_size(obj, offset));
        let mut out = self.alloc_read(size).await?;
        let n = cache.read(obj, offset, &mut out, block).await?;
        out.set_len(n);
        Ok(ReadData::Owned(out))
    }

    /// A read's reply buffer: the wait for it is bounded like a writer's.
    async fn alloc_read(&self, size: u32) -> FsResult<LockedBuf> {
        let wait = self.cfg.upload.memory_wait;
        Ok(self.wctx.arena.alloc_within(size as usize, wait).await?)
    }
}
