//! The timed transfers: the same work as the filesystem workloads, sent directly.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};

use crate::client::*;
use crate::setup::local_tree;

pub(crate) async fn put_file(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    file: &Path,
    part: u64,
    jobs: usize,
) -> Result<Report> {
    let f = Arc::new(std::fs::File::open(file).with_context(|| format!("{}", file.display()))?);
    let size = f.metadata()?.len();
    let t0 = Instant::now();
    if size <= part {
        let mut buf = vec![0u8; size as usize];
        f.read_exact_at(&mut buf, 0)?;
        put_object(ctx, bucket, key, buf.into()).await?;
    } else {
        let create = sse!(
            ctx.client
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C),
            ctx.sse
        )
        .send()
        .await
        .map_err(|e| anyhow!("CreateMultipartUpload {key}: {}", err_text(e)))?;
        let upload_id = create
            .upload_id()
            .ok_or_else(|| anyhow!("no upload id"))?
            .to_owned();
        let nparts = size.div_ceil(part);
        let mut parts: Vec<CompletedPart> = futures::stream::iter(0..nparts)
            .map(|i| {
                let (f, ctx, upload_id) = (f.clone(), ctx.clone(), upload_id.clone());
                async move {
                    let off = i * part;
                    let len = part.min(size - off) as usize;
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, off)?;
                    let crc = crc32c_base64(&buf);
                    let out = sse!(
                        ctx.client
                            .upload_part()
                            .bucket(bucket)
                            .key(key)
                            .upload_id(&upload_id)
                            .part_number(i as i32 + 1)
                            .checksum_crc32_c(&crc)
                            .body(ByteStream::from(buf)),
                        ctx.sse
                    )
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| anyhow!("UploadPart {}: {}", i + 1, err_text(e)))?;
                    Ok::<_, anyhow::Error>(
                        CompletedPart::builder()
                            .part_number(i as i32 + 1)
                            .set_e_tag(out.e_tag().map(str::to_owned))
                            .checksum_crc32_c(crc)
                            .build(),
                    )
                }
            })
            .buffer_unordered(jobs)
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        sse!(
            ctx.client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build()
                ),
            ctx.sse
        )
        .send()
        .await
        .map_err(|e| anyhow!("CompleteMultipartUpload {key}: {}", err_text(e)))?;
    }
    let got = head_size(ctx, bucket, key).await?;
    let seconds = t0.elapsed().as_secs_f64();
    if got != size {
        bail!("uploaded {size} bytes but HEAD says {got}");
    }
    Ok(Report {
        seconds,
        bytes: size,
        ops: 1,
        ..Default::default()
    })
}

pub(crate) async fn get_file(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    part: u64,
    jobs: usize,
) -> Result<Report> {
    let t0 = Instant::now();
    let size = head_size(ctx, bucket, key).await?;
    let nparts = size.div_ceil(part);
    let bytes: u64 = futures::stream::iter(0..nparts)
        .map(|i| {
            let ctx = ctx.clone();
            async move {
                let off = i * part;
                let end = (off + part).min(size) - 1;
                let b = get_object(&ctx, bucket, key, Some(format!("bytes={off}-{end}"))).await?;
                if b.len() as u64 != end - off + 1 {
                    bail!("range {off}-{end}: got {} bytes", b.len());
                }
                Ok(b.len() as u64)
            }
        })
        .buffered(jobs)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    Ok(Report {
        seconds: t0.elapsed().as_secs_f64(),
        bytes,
        ops: nparts,
        ..Default::default()
    })
}

pub(crate) async fn rand_read(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    seconds: f64,
    bs: u64,
) -> Result<Report> {
    let size = head_size(ctx, bucket, key).await?;
    let blocks = size / bs;
    if blocks == 0 {
        bail!("object {key} is smaller than one block");
    }
    // xorshift64*, seeded from the clock: no need for a crypto RNG here
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let limit = Duration::from_secs_f64(seconds);
    let t0 = Instant::now();
    let mut ops = 0u64;
    let mut bytes = 0u64;
    while t0.elapsed() < limit {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let off = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % blocks) * bs;
        let b = get_object(
            ctx,
            bucket,
            key,
            Some(format!("bytes={off}-{}", off + bs - 1)),
        )
        .await?;
        if b.len() as u64 != bs {
            bail!("random read at {off}: got {} bytes", b.len());
        }
        ops += 1;
        bytes += bs;
    }
    Ok(Report {
        seconds: t0.elapsed().as_secs_f64(),
        bytes,
        ops,
        ..Default::default()
    })
}

pub(crate) async fn put_tree(ctx: &Ctx, bucket: &str, prefix: &str, dir: &Path) -> Result<Report> {
    let t0 = Instant::now();
    let files = local_tree(dir)?;
    let mut bytes = 0;
    for rel in files.keys() {
        let body = std::fs::read(dir.join(rel))?;
        bytes += body.len() as u64;
        put_object(ctx, bucket, &join_key(prefix, rel), body.into()).await?;
    }
    Ok(Report {
        seconds: t0.elapsed().as_secs_f64(),
        bytes,
        ops: files.len() as u64,
        ..Default::default()
    })
}

pub(crate) async fn sync_tree(ctx: &Ctx, bucket: &str, prefix: &str, dir: &Path) -> Result<Report> {
    let t0 = Instant::now();
    let files = local_tree(dir)?;
    let remote = list_all(ctx, bucket, &dir_prefix(prefix)).await?;
    let mut uploaded = 0u64;
    let mut bytes = 0;
    for (rel, size) in &files {
        let key = join_key(prefix, rel);
        if remote.get(&key) != Some(size) {
            let body = std::fs::read(dir.join(rel))?;
            bytes += body.len() as u64;
            put_object(ctx, bucket, &key, body.into()).await?;
            uploaded += 1;
        }
    }
    Ok(Report {
        seconds: t0.elapsed().as_secs_f64(),
        bytes,
        ops: files.len() as u64,
        extra: vec![("uploaded", uploaded.to_string())],
    })
}

pub(crate) async fn list(ctx: &Ctx, bucket: &str, prefix: &str) -> Result<Report> {
    let t0 = Instant::now();
    let mut pages = ctx
        .client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(dir_prefix(prefix))
        .delimiter("/")
        .into_paginator()
        .send();
    let mut entries = 0u64;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow!("list: {}", err_text(e)))?;
        entries += page.contents().len() as u64 + page.common_prefixes().len() as u64;
    }
    Ok(Report {
        seconds: t0.elapsed().as_secs_f64(),
        bytes: 0,
        ops: entries,
        ..Default::default()
    })
}

pub(crate) async fn get_tree(ctx: &Ctx, bucket: &str, prefix: &str, dest: &Path) -> Result<Report> {
    let t0 = Instant::now();
    let p = dir_prefix(prefix);
    let remote = list_all(ctx, bucket, &p).await?;
    let mut files = 0u64;
    let mut bytes = 0u64;
    for key in remote.keys() {
        let rel = &key[p.len()..];
        if rel.is_empty() || rel.ends_with('/') {
            continue; // directory marker
        }
        let body = get_object(ctx, bucket, key, None).await?;
        let path = dest.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &body)?;
        files += 1;
        bytes += body.len() as u64;
    }
    Ok(Report {
        seconds: t0.elapsed().as_secs_f64(),
        bytes,
        ops: files,
        ..Default::default()
    })
}
