//! `ssecfs rotate`: every object under a prefix re-sealed under the ring's primary key,
//! server-side. Written against [`ObjectStore`] alone (HEAD finds each object's key, a copy
//! onto itself re-seals it), so the in-memory store tests it.

use futures::StreamExt;

use super::{copy_any_size, CopyRequest, ObjectStore, S3Error, S3Result, Sealing};

/// What `rotate` did.
#[derive(Debug, Default)]
pub struct RotateSummary {
    /// Objects re-encrypted from an old key to the new one (or that would be, in a dry run).
    pub rotated: u64,
    /// Objects the new key already opens (rotated by an earlier, interrupted run).
    pub already: u64,
    /// Objects stored without SSE-C and left alone (rotation changes what another tool wrote
    /// only with `--adopt-plain`).
    pub plain: u64,
    /// Objects stored without SSE-C, sealed under the new key (`--adopt-plain`).
    pub adopted: u64,
    /// Objects no key of the ring opens.
    pub neither: Vec<String>,
}

/// What `rotate` may change.
#[derive(Debug, Clone, Copy, Default)]
pub struct RotateMode {
    /// Only count what would change.
    pub dry_run: bool,
    /// Seal plain objects under the new key too.
    pub adopt_plain: bool,
}

/// How many objects `rotate` re-encrypts at once.
const ROTATE_CONCURRENCY: usize = 8;

/// UploadPartCopy part size for objects above 5 GiB: few parts, as nothing passes through us.
const ROTATE_PART: u64 = 1 << 30;

/// Rotate every object under `prefix` to the ring's primary key (the `--to` key), from
/// whichever other key of the ring opens it: CopyObject onto itself (UploadPartCopy above
/// 5 GiB) with the old key as copy source, metadata kept but for the key fingerprint.
/// Nothing is downloaded. Objects the primary key already opens are skipped, so an
/// interrupted run resumes where it stopped. Plain objects are sealed under the primary key
/// with `mode.adopt_plain`, else left alone. `progress(done, total)` follows along.
pub async fn rotate_prefix(
    store: &dyn ObjectStore,
    prefix: &str,
    mode: RotateMode,
    progress: impl Fn(u64, u64),
) -> S3Result<RotateSummary> {
    let keys: Vec<String> = store
        .list_all(prefix, None)
        .await?
        .objects
        .into_iter()
        .map(|o| o.key)
        .collect();
    let total = keys.len() as u64;
    let mut s = RotateSummary::default();
    progress(0, total);
    let mut results = futures::stream::iter(keys)
        .map(|key| async move {
            let outcome = rotate_one(store, &key, mode).await;
            (key, outcome)
        })
        .buffer_unordered(ROTATE_CONCURRENCY);
    let mut done = 0;
    while let Some((key, outcome)) = results.next().await {
        match outcome? {
            Some(Sealing::PRIMARY) => s.already += 1,
            Some(Sealing::Plain) if mode.adopt_plain => s.adopted += 1,
            Some(Sealing::Plain) => s.plain += 1,
            Some(Sealing::Key(_)) => s.rotated += 1,
            None => s.neither.push(key),
        }
        done += 1;
        progress(done, total);
    }
    s.neither.sort();
    Ok(s)
}

/// Rotate one object; returns the sealing it had (`None`: no key opens it, reported rather
/// than an error so one odd object does not stop the run; one deleted meanwhile counts as
/// done).
async fn rotate_one(
    store: &dyn ObjectStore,
    key: &str,
    mode: RotateMode,
) -> S3Result<Option<Sealing>> {
    let info = match store.head(key).await {
        Ok(info) => info,
        Err(S3Error::WrongKey | S3Error::AccessDenied(_)) => return Ok(None),
        Err(S3Error::NotFound) => return Ok(Some(Sealing::PRIMARY)),
        Err(e) => return Err(e),
    };
    let changes = match info.sealing {
        Sealing::Key(i) => i > 0,
        Sealing::Plain => mode.adopt_plain,
    };
    if changes && !mode.dry_run {
        let copy = CopyRequest {
            src: key,
            dst: key,
            meta: Some(&info.metadata),
            src_sealing: info.sealing,
        };
        copy_any_size(store, &copy, info.size, ROTATE_PART).await?;
    }
    Ok(Some(info.sealing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::mem::MemStore;
    use crate::s3::Metadata;
    use bytes::Bytes;

    #[tokio::test]
    async fn rotation_reseals_old_keys_and_adopts_plain_only_when_asked() {
        let old = MemStore::new("old");
        let meta = Metadata::new();
        for k in ["p/a", "p/b"] {
            old.put(k, Bytes::from_static(b"x"), &meta).await.unwrap();
        }
        old.with_key("stranger")
            .put("p/s", Bytes::from_static(b"x"), &meta)
            .await
            .unwrap();
        old.insert_plain("p/plain", b"x");
        old.put("q/outside", Bytes::from_static(b"x"), &meta)
            .await
            .unwrap();
        let ring = old.with_ring(&["new", "old"]);
        let (plain, adopt) = (
            RotateMode::default(),
            RotateMode {
                adopt_plain: true,
                ..RotateMode::default()
            },
        );

        let dry = RotateMode {
            dry_run: true,
            ..plain
        };
        let s = rotate_prefix(&ring, "p/", dry, |_, _| {}).await.unwrap();
        assert_eq!((s.rotated, s.plain), (2, 1));
        assert_eq!(old.sealed_with("p/a").as_deref(), Some("old"), "dry run");

        let s = rotate_prefix(&ring, "p/", plain, |_, _| {}).await.unwrap();
        assert_eq!((s.rotated, s.already, s.plain, s.adopted), (2, 0, 1, 0));
        assert_eq!(s.neither, ["p/s"]);
        assert_eq!(old.sealed_with("p/a").as_deref(), Some("new"));
        assert_eq!(old.sealed_with("p/plain"), None);
        assert_eq!(old.sealed_with("q/outside").as_deref(), Some("old"));

        // resumed: done ones are skipped; plain ones adopted now
        let s = rotate_prefix(&ring, "p/", adopt, |_, _| {}).await.unwrap();
        assert_eq!((s.rotated, s.already, s.adopted), (0, 2, 1));
        assert_eq!(old.sealed_with("p/plain").as_deref(), Some("new"));
        assert_eq!(old.raw("p/plain").unwrap(), b"x");
    }
}
