//! The S3 side of the raw benchmark: the client, the SSE-C trio on every request, and the
//! requests the timed commands and the checks share.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine as _;
use bytes::Bytes;
use md5::Digest as _;

/// The SSE-C trio, computed once.
#[derive(Clone)]
pub(crate) struct Sse {
    pub(crate) key_b64: String,
    pub(crate) md5_b64: String,
}

#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) client: aws_sdk_s3::Client,
    pub(crate) sse: Sse,
}

/// One result line.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) seconds: f64,
    pub(crate) bytes: u64,
    pub(crate) ops: u64,
    pub(crate) extra: Vec<(&'static str, String)>,
}

impl Report {
    pub(crate) fn print(&self) {
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

pub(crate) fn peak_rss_kib() -> u64 {
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

pub(crate) fn load_key(path: &Path) -> Result<Sse> {
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

pub(crate) async fn client(endpoint: &str) -> aws_sdk_s3::Client {
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
pub(crate) fn err_text<E: std::error::Error>(e: E) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s.chars().take(400).collect()
}

pub(crate) fn join_key(prefix: &str, rel: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        rel.to_owned()
    } else {
        format!("{p}/{rel}")
    }
}

pub(crate) fn dir_prefix(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// All objects under `prefix` (no delimiter): key → size.
pub(crate) async fn list_all(
    ctx: &Ctx,
    bucket: &str,
    prefix: &str,
) -> Result<BTreeMap<String, u64>> {
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

pub(crate) async fn head_size(ctx: &Ctx, bucket: &str, key: &str) -> Result<u64> {
    let out = sse!(ctx.client.head_object().bucket(bucket).key(key), ctx.sse)
        .send()
        .await
        .map_err(|e| anyhow!("HEAD {key}: {}", err_text(e)))?;
    Ok(out.content_length().unwrap_or(0).max(0) as u64)
}

/// A keyed HEAD must work and an unkeyed one must be refused: the object is SSE-C encrypted
/// with our key.
pub(crate) async fn check_sse_c(ctx: &Ctx, bucket: &str, key: &str) -> Result<()> {
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

pub(crate) async fn put_object(ctx: &Ctx, bucket: &str, key: &str, body: Bytes) -> Result<()> {
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

pub(crate) async fn get_object(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    range: Option<String>,
) -> Result<Bytes> {
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

/// The CRC32C checksum header value S3 expects (big-endian, base64), as ssecfs sends it.
pub(crate) fn crc32c_base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(data).to_be_bytes())
}
