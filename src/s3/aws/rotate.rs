//! `ssecfs rotate`: re-encrypt objects server-side under the ring's primary key.

use super::AwsStore;
use crate::s3::{ObjectStore, S3Error, S3Result, Sealing};

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

impl AwsStore {
    /// Rotate every object under `prefix` to the ring's primary key (the `--to` key), from
    /// whichever other key of the ring opens it: CopyObject onto itself (UploadPartCopy above
    /// 5 GiB) with the old key as copy source, metadata kept but for the key fingerprint.
    /// Nothing is downloaded. Objects the primary key already opens are skipped, so an
    /// interrupted run resumes where it stopped. Plain objects are sealed under the primary key
    /// with `mode.adopt_plain`, else left alone. `progress(done, total)` follows along.
    pub async fn rotate_prefix(
        &self,
        prefix: &str,
        mode: RotateMode,
        progress: impl Fn(u64, u64),
    ) -> S3Result<RotateSummary> {
        use futures::StreamExt;
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self.list(prefix, None, token.take(), None).await?;
            keys.extend(page.objects.into_iter().map(|o| o.key));
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let total = keys.len() as u64;
        let mut s = RotateSummary::default();
        progress(0, total);
        let mut results = futures::stream::iter(keys)
            .map(|key| async move {
                let outcome = self.rotate_one(&key, mode).await;
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
    async fn rotate_one(&self, key: &str, mode: RotateMode) -> S3Result<Option<Sealing>> {
        let info = match self.head(key).await {
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
            crate::s3::copy_any_size(
                self,
                key,
                key,
                info.size,
                &info.metadata,
                true,
                info.sealing,
                1 << 30,
            )
            .await?;
        }
        Ok(Some(info.sealing))
    }
}
