//! What is not on the server yet, and storing all of it: unmount and SIGTERM (the last
//! chance), `ssecfs sync` (a backup script's "is it all stored?"), `ssecfs status`.

use futures::StreamExt;

use super::Fs;

/// Why everything is being stored: what a failure means differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadAll {
    /// Unmount or a signal: the daemon ends, a failure loses the data.
    Unmount,
    /// `ssecfs sync`: the mount goes on, a failure keeps the data for the next try.
    Sync,
}

/// What the mount holds that the server does not have yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// Files with unsaved content or attributes (one being written right now counts too).
    pub files: usize,
    /// Locked memory those files hold (an upper bound of the bytes still to send).
    pub bytes: u64,
    /// Closed files whose attribute change (chmod, chown, utimens) is not stored yet.
    pub attributes: usize,
    /// Files whose last upload failed, waiting for a retry.
    pub failed: usize,
    /// Renames answered but not stored on the server yet (see `fs/moves.rs`).
    pub renames: usize,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.files == 0 && self.attributes == 0 && self.renames == 0
    }
}

impl Fs {
    /// A snapshot of what is pending. Never waits: a file whose state is locked (being
    /// written or uploaded) counts as one pending file of unknown size.
    pub fn pending(&self) -> Pending {
        let files = self.files.states();
        let mut p = Pending::default();
        for f in files {
            match f.try_lock() {
                Ok(f) if f.is_dirty() => {
                    p.files += 1;
                    p.bytes += f.buffered_bytes() as u64;
                }
                Ok(_) => {}
                Err(_) => p.files += 1,
            }
        }
        p.attributes = self.meta.count();
        p.failed = self.wb.failure_count();
        p.renames = self.moves.pending();
        p
    }

    /// The files whose last upload failed, by path, with the error.
    pub fn failures(&self) -> Vec<(String, String)> {
        let failed = self.wb.failures();
        let mut v: Vec<(String, String)> = failed
            .into_iter()
            .map(|(ino, e)| (self.describe(ino), e))
            .collect();
        v.sort();
        v
    }

    /// Upload every changed file and attribute, write-back ones included, many at once (not
    /// a FUSE flush, which uploads the one file being closed). Returns how many failed. For
    /// [`UploadAll::Sync`] a failure stays in memory and is reported again at the file's next
    /// open, close, fsync, sync or unmount.
    pub async fn upload_all(&self, why: UploadAll) -> usize {
        // A delayed store that took its inode out of the attribute persister's set before this looked must
        // finish too (before and after: it may take the inode while this goes through them).
        let failed_moves = self.moves.settle_all().await;
        self.meta.stores_settled().await;
        let metas = self.meta.pending_inos();
        let mut failed_meta = 0;
        for ino in metas {
            if let Err(e) = self.persist_metadata(ino).await {
                let path = self.describe(ino);
                match why {
                    UploadAll::Unmount => {
                        tracing::error!(ino, path = %path, error = %e, "could not store changed attributes at unmount; they are lost")
                    }
                    UploadAll::Sync => {
                        tracing::error!(ino, path = %path, error = %e, "sync could not store changed attributes; they are kept for the next try")
                    }
                }
                failed_meta += 1;
            }
        }
        self.meta.stores_settled().await;
        let inos = self.files.inos();
        let results = futures::stream::iter(inos.into_iter().map(|ino| async move {
            let r = self.upload_ino(ino).await;
            match r {
                Ok(()) => {
                    self.wb.take_failure(ino);
                }
                Err(e) => {
                    // name what is lost: the user has no other way to learn it
                    let path = self.describe(ino);
                    match why {
                        UploadAll::Unmount => tracing::error!(ino, path = %path, error = %e, "could not upload a file at unmount; its unsaved changes are lost"),
                        UploadAll::Sync => {
                            tracing::error!(ino, path = %path, error = %e, "sync could not upload a file; the data stays in memory for the next try");
                            self.wb.record_failure(ino, e);
                        }
                    }
                    return true;
                }
            }
            false
        }))
        .buffer_unordered(16)
        .collect::<Vec<bool>>()
        .await;
        // (an attribute store or an upload may have waited for a move: none is left unless
        // it failed)
        failed_moves + failed_meta + results.into_iter().filter(|&failed| failed).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FsConfig, ROOT};
    use crate::s3::mem::MemStore;

    /// `ssecfs sync` in write-back mode: what was closed but not uploaded shows as pending,
    /// a failed sync keeps it (and says so), the next sync stores it.
    #[tokio::test]
    async fn sync_stores_what_is_pending_and_keeps_what_failed() {
        let mem = MemStore::new("k");
        let mut cfg = FsConfig::new("", 1000, 1000);
        cfg.write_back = Some(crate::fs::WriteBack {
            delay: std::time::Duration::from_secs(3600),
            max_pending: 64 << 20,
            concurrency: 2,
        });
        let (failing, fs) = crate::fs::tests::failing_fs_on(&mem, cfg);
        assert!(fs.pending().is_empty());
        let (ino, _, fh) = fs.create(ROOT, "f", 0o644, 1000, 1000).await.unwrap();
        fs.write(ino, 0, b"closed, not uploaded").await.unwrap();
        fs.flush(ino).await.unwrap();
        fs.release(ino, fh).await.unwrap();
        let p = fs.pending();
        assert_eq!((p.files, p.failed), (1, 0), "{p:?}");
        assert!(p.bytes >= 20, "{p:?}");
        assert!(mem.raw("f").is_none());

        failing.fail_also(failing.requests() + 1);
        assert_eq!(fs.upload_all(UploadAll::Sync).await, 1);
        assert_eq!(fs.pending().failed, 1);
        let failures = fs.failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, "f");
        assert!(mem.raw("f").is_none());

        assert_eq!(fs.upload_all(UploadAll::Sync).await, 0);
        assert!(fs.pending().is_empty(), "{:?}", fs.pending());
        assert_eq!(fs.pending().failed, 0);
        assert_eq!(mem.raw("f").unwrap(), b"closed, not uploaded");
    }
}
