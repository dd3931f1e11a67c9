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

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

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

macro_rules! sse {
    ($b:expr, $s:expr) => {
        $b.sse_customer_algorithm("AES256")
            .sse_customer_key(&$s.key_b64)
            .sse_customer_key_md5(&$s.md5_b64)
    };
}

mod client;
mod setup;
mod transfers;

use client::{client, err_text, load_key, Ctx, Report};
use setup::*;
use transfers::*;

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
