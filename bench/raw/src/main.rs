//! `ssecfs-raw-bench`: the baseline of `scripts/bench.sh`. The same transfers as the
//! filesystem workloads, done directly with aws-sdk-s3 (SSE-C on every request), plus the
//! helpers the script needs to set up and check a benchmark bucket.
//!
//! Every timed subcommand prints one machine-readable line on stdout:
//!
//! ```text
//! result seconds=1.234567 bytes=1073741824 ops=128 peak_rss_kib=40960
//! ```
//!
//! Progress and errors go to stderr; a non-zero exit means the subcommand failed. The
//! connection comes from the environment (`S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), the key from `--key-file` (base64 of 32 bytes,
//! or 32 raw bytes).
//!
//! This tool exists for benchmarking against a local test server: it talks plain http when
//! the endpoint says so and makes no effort to protect the key in memory.
//!
//! Its uploads have the shape of ssecfs's own: a CRC32C on every PutObject and UploadPart
//! (multipart uploads created with CRC32C) and no SigV4 payload hash (UNSIGNED-PAYLOAD), so
//! the ratio compares the filesystem with the same requests sent directly.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use md5::Digest as _;

const MIB: u64 = 1 << 20;

/// Raw aws-sdk-s3 baseline and helpers for scripts/bench.sh.
#[derive(Debug, Parser)]
#[command(name = "ssecfs-raw-bench", version)]
struct Cli {
    /// S3 endpoint URL.
    #[arg(long, env = "S3_ENDPOINT", global = true, default_value = "")]
    endpoint: String,
    /// SSE-C key file: base64 of 32 bytes (one line) or 32 raw bytes.
    #[arg(long, env = "SSECFS_BENCH_KEY_FILE", global = true, default_value = "")]
    key_file: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a bucket (no error if this key already owns it).
    CreateBucket { bucket: String },
    /// Multipart upload of FILE (parts of --part-size, --jobs in flight), then a keyed HEAD
    /// that checks the size. Timed.
    PutFile {
        bucket: String,
        key: String,
        file: PathBuf,
        #[arg(long, default_value_t = 8)]
        part_mib: u64,
        #[arg(long, default_value_t = 8)]
        jobs: usize,
    },
    /// Sequential read: HEAD, then ranged GETs of --part-mib, --jobs in flight, discarded. Timed.
    GetFile {
        bucket: String,
        key: String,
        #[arg(long, default_value_t = 8)]
        part_mib: u64,
        #[arg(long, default_value_t = 8)]
        jobs: usize,
    },
    /// Random reads: --bs ranged GETs at aligned random offsets, one at a time, for --seconds.
    /// Timed; ops = number of reads.
    RandRead {
        bucket: String,
        key: String,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        #[arg(long, default_value_t = 4096)]
        bs: u64,
    },
    /// PutObject of every file under DIR to PREFIX/relative/path, one at a time (like rsync).
    /// Timed; ops = files.
    PutTree {
        bucket: String,
        prefix: String,
        dir: PathBuf,
    },
    /// The no-op second sync: list PREFIX, compare sizes with DIR, upload only what differs.
    /// Timed; ops = files checked; `uploaded=` says how many were sent.
    SyncTree {
        bucket: String,
        prefix: String,
        dir: PathBuf,
    },
    /// List PREFIX (delimiter `/`, like a readdir). Timed; ops = entries.
    List { bucket: String, prefix: String },
    /// GET every object under PREFIX into DEST (one at a time, like cp -r). Timed; ops = files.
    GetTree {
        bucket: String,
        prefix: String,
        dest: PathBuf,
    },
    /// Create COUNT small objects PREFIX/oNNNNNN (--jobs in flight). Timed.
    Populate {
        bucket: String,
        prefix: String,
        count: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 16)]
        jobs: usize,
    },
    /// Poll a keyed HEAD until KEY has SIZE bytes; then check that a HEAD without the key is
    /// refused (the object is SSE-C encrypted). Timed (the wait).
    WaitObject {
        bucket: String,
        key: String,
        size: u64,
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
    },
    /// Poll the listing of PREFIX until it holds exactly the files of DIR with their sizes
    /// (keys ending in `/` are directory markers and ignored); then check SSE-C on a sample.
    /// Timed (the wait).
    WaitTree {
        bucket: String,
        prefix: String,
        dir: PathBuf,
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
    },
    /// Delete every object under PREFIX (all of the bucket if PREFIX is empty).
    Empty {
        bucket: String,
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        delete_bucket: bool,
    },
    /// Write COUNT files of random content (1-16 KiB) in DIRS subdirectories of DIR.
    GenTree {
        dir: PathBuf,
        count: usize,
        #[arg(long, default_value_t = 20)]
        dirs: usize,
    },
}

/// The SSE-C trio, computed once.
#[derive(Clone)]
struct Sse {
    key_b64: String,
    md5_b64: String,
}

macro_rules! sse {
    ($b:expr, $s:expr) => {
        $b.sse_customer_algorithm("AES256")
            .sse_customer_key(&$s.key_b64)
            .sse_customer_key_md5(&$s.md5_b64)
    };
}

#[derive(Clone)]
struct Ctx {
    client: aws_sdk_s3::Client,
    sse: Sse,
}

/// One result line.
#[derive(Default)]
struct Report {
    seconds: f64,
    bytes: u64,
    ops: u64,
    extra: Vec<(&'static str, String)>,
}

impl Report {
    fn print(&self) {
        let mut line = format!(
            "result seconds={:.6} bytes={} ops={} peak_rss_kib={}",
            self.seconds,
            self.bytes,
            self.ops,
            peak_rss_kib()
        );
        for (k, v) in &self.extra {
            line.push_str(&format!(" {k}={v}"));
        }
        println!("{line}");
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn load_key(path: &Path) -> Result<Sse> {
    if path.as_os_str().is_empty() {
        bail!("no key file: pass --key-file or set SSECFS_BENCH_KEY_FILE");
    }
    let content = std::fs::read(path).with_context(|| format!("key file {}", path.display()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = if content.len() == 32 {
        content
    } else {
        let first = content
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        b64.decode(first)
            .with_context(|| format!("key file {}: not base64", path.display()))?
    };
    if raw.len() != 32 {
        bail!("key file {}: key is not 32 bytes", path.display());
    }
    Ok(Sse {
        key_b64: b64.encode(&raw),
        md5_b64: b64.encode(md5::Md5::digest(&raw)),
    })
}

async fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if shared.region().is_none() {
        b = b.region(aws_config::Region::new("garage"));
    }
    if !endpoint.is_empty() {
        b = b.endpoint_url(endpoint);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// Full error chain of an SDK error, short.
fn err_text<E: std::error::Error>(e: E) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s.chars().take(400).collect()
}

fn join_key(prefix: &str, rel: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        rel.to_owned()
    } else {
        format!("{p}/{rel}")
    }
}

fn dir_prefix(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// Files under `dir`: relative path (with `/`) → size.
fn local_tree(dir: &Path) -> Result<BTreeMap<String, u64>> {
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

/// All objects under `prefix` (no delimiter): key → size.
async fn list_all(ctx: &Ctx, bucket: &str, prefix: &str) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut pages = ctx
        .client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow!("list {bucket}/{prefix}: {}", err_text(e)))?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                out.insert(k.to_owned(), o.size().unwrap_or(0).max(0) as u64);
            }
        }
    }
    Ok(out)
}

async fn head_size(ctx: &Ctx, bucket: &str, key: &str) -> Result<u64> {
    let out = sse!(ctx.client.head_object().bucket(bucket).key(key), ctx.sse)
        .send()
        .await
        .map_err(|e| anyhow!("HEAD {key}: {}", err_text(e)))?;
    Ok(out.content_length().unwrap_or(0).max(0) as u64)
}

/// A keyed HEAD must work and an unkeyed one must be refused: the object is SSE-C encrypted
/// with our key.
async fn check_sse_c(ctx: &Ctx, bucket: &str, key: &str) -> Result<()> {
    head_size(ctx, bucket, key).await?;
    let plain = ctx
        .client
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await;
    match plain {
        Ok(out) if out.sse_customer_algorithm().is_none() => {
            bail!("object {key} is not SSE-C encrypted (readable without the key)")
        }
        _ => Ok(()),
    }
}

async fn put_object(ctx: &Ctx, bucket: &str, key: &str, body: Bytes) -> Result<()> {
    sse!(
        ctx.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .checksum_crc32_c(crc32c_base64(&body))
            .body(ByteStream::from(body)),
        ctx.sse
    )
    .customize()
    .disable_payload_signing()
    .send()
    .await
    .map_err(|e| anyhow!("PUT {key}: {}", err_text(e)))?;
    Ok(())
}

async fn get_object(ctx: &Ctx, bucket: &str, key: &str, range: Option<String>) -> Result<Bytes> {
    let out = sse!(
        ctx.client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range),
        ctx.sse
    )
    .send()
    .await
    .map_err(|e| anyhow!("GET {key}: {}", err_text(e)))?;
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| anyhow!("GET {key} body: {}", err_text(e)))?;
    Ok(body.into_bytes())
}

async fn put_file(
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

async fn get_file(ctx: &Ctx, bucket: &str, key: &str, part: u64, jobs: usize) -> Result<Report> {
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

async fn rand_read(ctx: &Ctx, bucket: &str, key: &str, seconds: f64, bs: u64) -> Result<Report> {
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

async fn put_tree(ctx: &Ctx, bucket: &str, prefix: &str, dir: &Path) -> Result<Report> {
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

async fn sync_tree(ctx: &Ctx, bucket: &str, prefix: &str, dir: &Path) -> Result<Report> {
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

async fn list(ctx: &Ctx, bucket: &str, prefix: &str) -> Result<Report> {
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

async fn get_tree(ctx: &Ctx, bucket: &str, prefix: &str, dest: &Path) -> Result<Report> {
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

async fn populate(
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

async fn wait_object(
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

async fn wait_tree(
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

async fn empty(ctx: &Ctx, bucket: &str, prefix: &str, delete_bucket: bool) -> Result<Report> {
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

fn gen_tree(dir: &Path, count: usize, dirs: usize) -> Result<Report> {
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

async fn run(cli: Cli) -> Result<Report> {
    if let Cmd::GenTree { dir, count, dirs } = &cli.cmd {
        return gen_tree(dir, *count, *dirs);
    }
    let ctx = Ctx {
        client: client(&cli.endpoint).await,
        sse: load_key(&cli.key_file)?,
    };
    let ctx = &ctx;
    match &cli.cmd {
        Cmd::CreateBucket { bucket } => {
            let t0 = Instant::now();
            match ctx.client.create_bucket().bucket(bucket).send().await {
                Ok(_) => {}
                Err(e) => {
                    let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e)
                        .unwrap_or("")
                        .to_owned();
                    if code != "BucketAlreadyOwnedByYou" {
                        bail!("CreateBucket {bucket}: {}", err_text(e));
                    }
                }
            }
            Ok(Report {
                seconds: t0.elapsed().as_secs_f64(),
                ..Default::default()
            })
        }
        Cmd::PutFile {
            bucket,
            key,
            file,
            part_mib,
            jobs,
        } => put_file(ctx, bucket, key, file, part_mib * MIB, *jobs).await,
        Cmd::GetFile {
            bucket,
            key,
            part_mib,
            jobs,
        } => get_file(ctx, bucket, key, part_mib * MIB, *jobs).await,
        Cmd::RandRead {
            bucket,
            key,
            seconds,
            bs,
        } => rand_read(ctx, bucket, key, *seconds, *bs).await,
        Cmd::PutTree {
            bucket,
            prefix,
            dir,
        } => put_tree(ctx, bucket, prefix, dir).await,
        Cmd::SyncTree {
            bucket,
            prefix,
            dir,
        } => sync_tree(ctx, bucket, prefix, dir).await,
        Cmd::List { bucket, prefix } => list(ctx, bucket, prefix).await,
        Cmd::GetTree {
            bucket,
            prefix,
            dest,
        } => get_tree(ctx, bucket, prefix, dest).await,
        Cmd::Populate {
            bucket,
            prefix,
            count,
            size,
            jobs,
        } => populate(ctx, bucket, prefix, *count, *size, *jobs).await,
        Cmd::WaitObject {
            bucket,
            key,
            size,
            timeout,
        } => wait_object(ctx, bucket, key, *size, *timeout).await,
        Cmd::WaitTree {
            bucket,
            prefix,
            dir,
            timeout,
        } => wait_tree(ctx, bucket, prefix, dir, *timeout).await,
        Cmd::Empty {
            bucket,
            prefix,
            delete_bucket,
        } => empty(ctx, bucket, prefix, *delete_bucket).await,
        Cmd::GenTree { .. } => unreachable!("handled above"),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssecfs-raw-bench: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(report) => {
            report.print();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ssecfs-raw-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The CRC32C checksum header value S3 expects (big-endian, base64), as ssecfs sends it.
fn crc32c_base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(data).to_be_bytes())
}
