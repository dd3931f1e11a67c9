//! The script's setup and checks: bucket contents made, waited for and removed, and the
//! local tree of small files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::client::*;

/// Files under `dir`: relative path (with `/`) → size.
pub(crate) fn local_tree(dir: &Path) -> Result<BTreeMap<String, u64>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let path = entry.path();
            if ft.is_dir() {
                walk(base, &path, out)?;
            } else if ft.is_file() {
                let rel = path
                    .strip_prefix(base)?
                    .to_str()
                    .ok_or_else(|| anyhow!("non-UTF-8 path {}", path.display()))?
                    .to_owned();
                out.insert(rel, entry.metadata()?.len());
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

pub(crate) async fn populate(
    ctx: &Ctx,
    bucket: &str,
    prefix: &str,
    count: usize,
    size: usize,
    jobs: usize,
) -> Result<Report> {
    let t0 = Instant::now();
    let body = Bytes::from(vec![b'x'; size]);
    futures::stream::iter(0..count)
        .map(|i| {
            let (ctx, body) = (ctx.clone(), body.clone());
            async move { put_object(&ctx, bucket, &join_key(prefix, &format!("o{i:06}")), body).await }
        })
        .buffer_unordered(jobs)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(Report {
        seconds: t0.elapsed().as_secs_f64(),
        bytes: (count * size) as u64,
        ops: count as u64,
        ..Default::default()
    })
}

pub(crate) async fn wait_object(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    size: u64,
    timeout: f64,
) -> Result<Report> {
    let t0 = Instant::now();
    let mut last: String;
    loop {
        match head_size(ctx, bucket, key).await {
            Ok(n) if n == size => break,
            Ok(n) => last = format!("size {n}, want {size}"),
            Err(e) => last = e.to_string(),
        }
        if t0.elapsed().as_secs_f64() > timeout {
            bail!("object {key} not complete after {timeout} s: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    check_sse_c(ctx, bucket, key).await?;
    Ok(Report {
        seconds,
        bytes: size,
        ops: 1,
        ..Default::default()
    })
}

pub(crate) async fn wait_tree(
    ctx: &Ctx,
    bucket: &str,
    prefix: &str,
    dir: &Path,
    timeout: f64,
) -> Result<Report> {
    let files = local_tree(dir)?;
    let want: BTreeMap<String, u64> = files
        .iter()
        .map(|(rel, size)| (join_key(prefix, rel), *size))
        .collect();
    let t0 = Instant::now();
    let mut interval = Duration::from_millis(50);
    loop {
        let have: BTreeMap<String, u64> = list_all(ctx, bucket, &dir_prefix(prefix))
            .await?
            .into_iter()
            .filter(|(k, _)| !k.ends_with('/'))
            .collect();
        if have == want {
            break;
        }
        if t0.elapsed().as_secs_f64() > timeout {
            let missing = want.keys().filter(|k| !have.contains_key(*k)).count();
            let extra = have.keys().filter(|k| !want.contains_key(*k)).count();
            let wrong = want
                .iter()
                .filter(|(k, s)| have.get(*k).is_some_and(|h| h != *s))
                .count();
            bail!(
                "tree not complete after {timeout} s: {missing} missing, {wrong} wrong size, \
                 {extra} unexpected objects"
            );
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(500));
    }
    let seconds = t0.elapsed().as_secs_f64();
    // SSE-C on a sample: first, last and every 100th
    let keys: Vec<&String> = want.keys().collect();
    for (i, k) in keys.iter().enumerate() {
        if i == 0 || i + 1 == keys.len() || i % 100 == 0 {
            check_sse_c(ctx, bucket, k).await?;
        }
    }
    Ok(Report {
        seconds,
        bytes: want.values().sum(),
        ops: want.len() as u64,
        ..Default::default()
    })
}

pub(crate) async fn empty(
    ctx: &Ctx,
    bucket: &str,
    prefix: &str,
    delete_bucket: bool,
) -> Result<Report> {
    let t0 = Instant::now();
    let keys = list_all(ctx, bucket, prefix).await?;
    let n = keys.len();
    futures::stream::iter(keys.into_keys())
        .map(|k| {
            let ctx = ctx.clone();
            async move {
                ctx.client
                    .delete_object()
                    .bucket(bucket)
                    .key(&k)
                    .send()
                    .await
                    .map_err(|e| anyhow!("DELETE {k}: {}", err_text(e)))
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    // abandoned multipart uploads (a contender that failed half way)
    let uploads = ctx
        .client
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await;
    if let Ok(uploads) = uploads {
        for u in uploads.uploads() {
            if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                let _ = ctx
                    .client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(k)
                    .upload_id(id)
                    .send()
                    .await;
            }
        }
    }
    if delete_bucket {
        ctx.client
            .delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| anyhow!("DeleteBucket {bucket}: {}", err_text(e)))?;
    }
    Ok(Report {
        seconds: t0.elapsed().as_secs_f64(),
        bytes: 0,
        ops: n as u64,
        ..Default::default()
    })
}

pub(crate) fn gen_tree(dir: &Path, count: usize, dirs: usize) -> Result<Report> {
    let t0 = Instant::now();
    let dirs = dirs.max(1);
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    let mut seed = [0u8; 8];
    urandom.read_exact(&mut seed)?;
    let mut x = u64::from_le_bytes(seed) | 1;
    let mut buf = vec![0u8; 16 << 10];
    let mut bytes = 0u64;
    for d in 0..dirs {
        std::fs::create_dir_all(dir.join(format!("d{d:02}")))?;
    }
    for i in 0..count {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let size = 1024 + (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (15 * 1024 + 1)) as usize;
        urandom.read_exact(&mut buf[..size])?;
        let path = dir
            .join(format!("d{:02}", i % dirs))
            .join(format!("f{i:05}.bin"));
        std::fs::write(path, &buf[..size])?;
        bytes += size as u64;
    }
    Ok(Report {
        seconds: t0.elapsed().as_secs_f64(),
        bytes,
        ops: count as u64,
        ..Default::default()
    })
}
