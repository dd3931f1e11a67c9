//! Command line: subcommands, connection options shared by all of them, and the `-o` list.
//!
//! mount(8) runs `ssecfs SOURCE MOUNTPOINT -o OPTS`; users run `ssecfs mount …`. Both end in
//! [`MountArgs`]. Every long option may also be given inside `-o` (with `-` or `_`), so an
//! fstab line can say everything the command line can; the standard mount options are
//! understood or, where they belong to mount(8) itself, accepted and ignored.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Mount an S3 bucket with SSE-C on every object; plaintext only in locked memory.
#[derive(Debug, Parser)]
#[command(name = "ssecfs", version, about, long_about = None, subcommands = generate_subcommands())]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount BUCKET[:PREFIX] at MOUNTPOINT.
    Mount(Box<MountArgs>),
    /// Write a new random key to PATH (mode 0600) and print its fingerprint.
    Keygen {
        /// Where to write the key (must not exist).
        path: PathBuf,
    },
    /// Check endpoint, credentials, bucket, SSE-C writes and that the key opens objects.
    Check(CheckArgs),
    /// Re-encrypt every object under BUCKET[:PREFIX] from one key to another, server-side
    /// (nothing is downloaded); resumable: objects the new key already opens are skipped.
    Rotate(RotateArgs),
    /// Wait until everything pending on the mount at MOUNTPOINT is stored on the server
    /// (what a backup script runs before it reports success); exit 1 if some could not be.
    Sync {
        /// A mountpoint of ssecfs.
        mountpoint: PathBuf,
    },
    /// Show the state of the mount at MOUNTPOINT: cache and locked memory, pending and failed
    /// uploads, recent errors, key fingerprints (never the key).
    Status {
        /// A mountpoint of ssecfs.
        mountpoint: PathBuf,
    },
}

/// Subcommands that print what the clap definitions say (for shells and packaging). They are
/// part of [`Cli`]'s command (help, completions, man pages) but not of [`Command`]: the binary
/// answers them with [`generate`] before anything else runs.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Print a shell completion script to stdout.
    Completions {
        /// Shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (ssecfs.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages {
        /// Directory to write them into (created if missing).
        dir: PathBuf,
    },
}

/// Names of the [`Generate`] subcommands.
const GENERATE: &[&str] = &["completions", "manpages"];

fn generate_subcommands() -> Vec<clap::Command> {
    // listed after the others (clap adds these before the fields)
    Generate::augment_subcommands(clap::Command::new("ssecfs"))
        .get_subcommands()
        .map(|c| c.clone().display_order(100))
        .collect()
}

/// `ssecfs rotate` arguments.
#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Key file (or key-ring file) the objects are encrypted with now; repeat for several.
    /// Optional with --adopt-plain (sealing plain objects needs only the new key).
    #[arg(long, value_name = "PATH", required_unless_present = "adopt_plain")]
    pub from: Vec<PathBuf>,
    /// Key file to re-encrypt them with.
    #[arg(long, value_name = "PATH")]
    pub to: PathBuf,
    /// Only report what would be rotated.
    #[arg(long)]
    pub dry_run: bool,
    /// Also seal objects stored without SSE-C under the new key (server-side, as rotation
    /// does): a migration from a plain bucket. Anyone with write access to the bucket can put
    /// a plain object, so adopt only a bucket whose plain objects you vouch for
    #[arg(long)]
    pub adopt_plain: bool,
    /// BUCKET or BUCKET:PREFIX.
    pub source: String,
}

/// How to reach the server; shared by every subcommand.
#[derive(Debug, Clone, Args, Default)]
pub struct ConnectionArgs {
    /// S3 endpoint URL (default: AWS, or $AWS_ENDPOINT_URL).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Region (default: from the AWS configuration, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// Allow a plain http:// endpoint (the key would travel in clear text).
    #[arg(long)]
    pub allow_http: bool,
    /// Path-style addressing (implied when --endpoint is given).
    #[arg(long)]
    pub path_style: bool,
    /// AWS profile to take credentials from.
    #[arg(long)]
    pub profile: Option<String>,
    /// AWS credentials file (must be mode 0600).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Key file: 32 raw bytes or their base64 text, or a key ring (one base64 key per line);
    /// mode 0600. Repeat for a ring: the first key seals new writes, all of them open objects.
    #[arg(long, value_name = "PATH")]
    pub key_file: Vec<PathBuf>,
    /// Extra PEM certificate(s) to trust for an HTTPS endpoint (private CA, self-signed).
    #[arg(long, value_name = "PATH")]
    pub ca_bundle: Option<PathBuf>,
}

/// `ssecfs check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// BUCKET or BUCKET:PREFIX.
    pub source: String,
}

/// `ssecfs mount` arguments.
#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Stay in the foreground (default: detach once the mount is live).
    #[arg(short, long)]
    pub foreground: bool,
    /// Cap on plaintext memory (all locked): e.g. 256M, 1G, or `auto` to shrink to the
    /// locked-memory limit.
    #[arg(long, default_value = "256M", value_name = "SIZE")]
    pub cache_size: String,
    /// Multipart part size (at least 5M).
    #[arg(long, default_value = "8M", value_name = "SIZE")]
    pub part_size: String,
    /// Parts of one file uploaded at once.
    #[arg(long, default_value_t = 8)]
    pub upload_concurrency: usize,
    /// Seconds to trust attributes and listings fetched from the server.
    #[arg(long, default_value_t = 30)]
    pub attr_ttl: u64,
    /// At mount, abort the multipart uploads under the mount's prefix started this long ago or
    /// more (e.g. 7d, 12h, 30m, 90s): parts a crashed daemon left behind, which hold storage
    /// but show in no listing. `off` keeps them.
    #[arg(long, default_value = "7d", value_name = "AGE")]
    pub abort_uploads_after: String,
    /// Opt-in write-back: close() returns at once and the upload starts 100 ms later (so
    /// rsync's utimens/rename fold into one upload). Crash window: data closed in the last
    /// moments, at most --write-back-max bytes. fsync, unmount and SIGTERM wait for it all.
    #[arg(long)]
    pub write_back: bool,
    /// Most closed-but-not-uploaded bytes in write-back mode (writers wait beyond it);
    /// default: half of --cache-size.
    #[arg(long, value_name = "SIZE")]
    pub write_back_max: Option<String>,
    /// Opt-in spill tier: keep blocks evicted from the locked cache, and write chunks when
    /// memory is short, in DIR, sealed with AES-256-GCM under a key that exists only in
    /// locked memory for the life of the mount (files are unlinked at once).
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Most bytes the spill tier may use in --spill-dir (default 1G).
    #[arg(long, value_name = "SIZE")]
    pub spill_size: Option<String>,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Serve objects stored without SSE-C, read-only (a migration from a plain bucket). By
    /// default they are refused: anyone with write access to the bucket could have put them
    #[arg(long)]
    pub allow_plain: bool,
    /// Lock only the cache and the key instead of all of the daemon's memory. By default
    /// every page of the daemon is locked (mlockall), so transient copies of the key's headers
    /// and of file data in the HTTP stack never reach swap; that needs RLIMIT_MEMLOCK
    /// unlimited (`LimitMEMLOCK=infinity`, `ulimit -l unlimited`) or CAP_IPC_LOCK (root)
    #[arg(long)]
    pub no_mlockall: bool,
    /// Keep setuid, setgid and sticky bits found in object metadata (by default dropped: the
    /// metadata is not authenticated)
    #[arg(long)]
    pub allow_special_modes: bool,
    /// Owner of objects that carry no uid metadata (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of objects that carry no gid metadata (default: the mounting group).
    #[arg(long)]
    pub gid: Option<u32>,
    /// umask for objects without mode metadata (octal, default 022).
    #[arg(long, value_name = "OCTAL")]
    pub umask: Option<String>,
    /// Let other users access the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Let root access the mount.
    #[arg(long)]
    pub allow_root: bool,
    /// Mount even if the key opens none of the sampled objects.
    #[arg(long)]
    pub force: bool,
    /// Mount over a directory that is not empty (its files are hidden while mounted).
    #[arg(long)]
    pub nonempty: bool,
    /// Write logs here when detached (default: syslog-style stderr is closed).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Log level filter (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Mount options, comma separated (any long option, plus the standard ones).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Kernel mount flags gathered from -o (nosuid, nodev, noexec, …).
    #[arg(skip)]
    pub kernel_flags: Vec<String>,
    /// BUCKET or BUCKET:PREFIX.
    pub source: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
}

/// Standard options mount(8) or systemd handle themselves: accepted, ignored.
const IGNORED: &[&str] = &[
    "_netdev",
    "nofail",
    "noauto",
    "auto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "defaults",
    "default_permissions",
    "rw",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noexec",
    "exec",
    "async",
    "sync",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "dirsync",
    "nodiratime",
    "diratime",
    "loop",
    "bg",
    "fg",
    "silent",
    "loud",
];
/// Kernel mount flags we pass on.
const KERNEL_FLAGS: &[&str] = &[
    "nosuid", "nodev", "noexec", "suid", "dev", "exec", "noatime", "atime",
];

/// Errors in the command line or the `-o` list.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("unknown mount option `{0}` (see `ssecfs mount --help`)")]
    UnknownOption(String),
    #[error("mount option `{0}` needs a value (`{0}=…`)")]
    MissingValue(String),
    #[error("mount option `{0}` takes no value")]
    UnexpectedValue(String),
    #[error("bad size `{0}`: use a number with an optional K, M, G or T suffix (e.g. 256M)")]
    BadSize(String),
    #[error("bad age `{0}`: use a number with an s, m, h or d suffix (e.g. 7d), or `off`")]
    BadAge(String),
}

/// Parse an age like `7d`, `12h`, `30m`, `90s` (plain numbers are seconds); `off` is `None`.
pub fn parse_age(s: &str) -> Result<Option<Duration>, CliError> {
    let t = s.trim().to_ascii_lowercase();
    if t == "off" {
        return Ok(None);
    }
    let (num, unit) = match t.char_indices().last() {
        Some((i, 'd')) => (&t[..i], 86_400),
        Some((i, 'h')) => (&t[..i], 3_600),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 's')) => (&t[..i], 1),
        _ => (t.as_str(), 1u64),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .map(|secs| Some(Duration::from_secs(secs)))
        .ok_or_else(|| CliError::BadAge(s.to_owned()))
}

/// Parse a size like `256M`, `1G`, `1048576`, `64KiB`.
pub fn parse_size(s: &str) -> Result<u64, CliError> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let stripped = lower.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match stripped.chars().last() {
        Some('k') => (&stripped[..stripped.len() - 1], 1u64 << 10),
        Some('m') => (&stripped[..stripped.len() - 1], 1 << 20),
        Some('g') => (&stripped[..stripped.len() - 1], 1 << 30),
        Some('t') => (&stripped[..stripped.len() - 1], 1 << 40),
        _ => (stripped, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| CliError::BadSize(s.to_owned()))?;
    if n == 0 {
        return Err(CliError::BadSize(s.to_owned()));
    }
    n.checked_mul(mult)
        .ok_or_else(|| CliError::BadSize(s.to_owned()))
}

/// Turn the process arguments into clap's form: insert `mount` for the mount(8) form, and
/// expand every `-o a,b=c` into long options. Returns the rewritten arguments and the kernel
/// flags found in `-o`.
pub fn expand_args(args: Vec<OsString>) -> Result<(Vec<OsString>, Vec<String>), CliError> {
    let mut args = args;
    as_mount_command(&mut args);
    let longs = mount_longs();
    let mut out = Vec::with_capacity(args.len());
    let mut kernel = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let s = a.to_str().map(str::to_owned);
        let opts = match s.as_deref() {
            Some("-o") => match it.next() {
                Some(v) => v.to_string_lossy().into_owned(),
                None => return Err(CliError::MissingValue("-o".into())),
            },
            Some(x) if x.starts_with("-o") && x.len() > 2 => x[2..].to_owned(),
            _ => {
                out.push(a);
                continue;
            }
        };
        expand_options(&opts, &longs, &mut out, &mut kernel)?;
    }
    Ok((out, kernel))
}

/// The mount(8) forms become a `mount` subcommand: the helper's own flags are dropped, and
/// `mount` is inserted before a first argument that is no subcommand nor option (a SOURCE).
fn as_mount_command(args: &mut Vec<OsString>) {
    // Called as /sbin/mount.ssecfs by mount(8): `mount.ssecfs SPEC DIR [-sfnv] [-o OPTS]`.
    // -s (sloppy), -n (no mtab), -v (verbose) mean nothing to us; -f (fake) must not be read
    // as --foreground.
    let as_helper = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("mount."));
    if as_helper {
        args.retain(|a| !matches!(a.to_str(), Some("-s" | "-n" | "-v" | "-f" | "-sn" | "-nv")));
    }
    // every subcommand clap knows (so a new one never parses as a SOURCE), and help
    let command = Cli::command();
    let is_subcommand =
        |name: &str| name == "help" || command.get_subcommands().any(|c| c.get_name() == name);
    if let Some(first) = args.get(1).and_then(|a| a.to_str()) {
        if !is_subcommand(first) && !first.starts_with('-') {
            args.insert(1, "mount".into());
        }
    }
}

/// Long options of `mount` and whether they take a value: what a `-o` name may stand for,
/// read from the clap definition so that every new option works in `-o` too.
fn mount_longs() -> Vec<(String, bool)> {
    let cmd = Cli::command();
    let mount = cmd
        .find_subcommand("mount")
        .expect("mount subcommand exists");
    mount
        .get_arguments()
        .filter_map(|a| {
            let takes = a.get_action().takes_values();
            a.get_long().map(|l| (l.to_owned(), takes))
        })
        .collect()
}

/// One `-o a,b=c` list: each option becomes its long option in `out`, or a kernel flag in
/// `kernel`; fstab's and systemd's own options and the ignored ones are skipped.
fn expand_options(
    opts: &str,
    longs: &[(String, bool)],
    out: &mut Vec<OsString>,
    kernel: &mut Vec<String>,
) -> Result<(), CliError> {
    for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        if name.starts_with("x-systemd.") || name.starts_with("x-") || name == "comment" {
            continue;
        }
        if KERNEL_FLAGS.contains(&name) {
            kernel.push(name.to_owned());
            continue;
        }
        let canonical = name.replace('_', "-");
        let canonical = match canonical.as_str() {
            "ro" => "read-only".to_owned(),
            "key" => "key-file".to_owned(),
            other => other.to_owned(),
        };
        if let Some((long, takes)) = longs.iter().find(|(l, _)| *l == canonical) {
            match (takes, value) {
                (true, Some(v)) => out.push(format!("--{long}={v}").into()),
                (true, None) => return Err(CliError::MissingValue(name.into())),
                (false, None) => out.push(format!("--{long}").into()),
                (false, Some(_)) => return Err(CliError::UnexpectedValue(name.into())),
            }
        } else if IGNORED.contains(&name) {
            continue;
        } else {
            return Err(CliError::UnknownOption(name.into()));
        }
    }
    Ok(())
}

/// Split `BUCKET[:PREFIX]` (also accepts `s3://BUCKET/PREFIX`).
pub fn split_source(source: &str) -> (String, String) {
    let s = source.strip_prefix("s3://").unwrap_or(source);
    let (bucket, prefix) = match s.split_once(':') {
        Some((b, p)) => (b, p),
        None => match s.split_once('/') {
            Some((b, p)) => (b, p),
            None => (s, ""),
        },
    };
    (bucket.to_owned(), prefix.trim_matches('/').to_owned())
}

/// `ssecfs completions SHELL` (script to stdout) and `ssecfs manpages DIR`; `None` for any
/// other command line, which is the rest of the program's.
pub fn generate(args: &[OsString]) -> Option<ExitCode> {
    if !GENERATE.contains(&args.get(1)?.to_str()?) {
        return None;
    }
    let parsed = Cli::command()
        .try_get_matches_from(args)
        .and_then(|m| Generate::from_arg_matches(&m));
    let result = match parsed {
        Ok(g) => run_generate(g, &mut std::io::stdout().lock()),
        Err(e) => {
            let _ = e.print();
            return Some(ExitCode::from(if e.use_stderr() { 2 } else { 0 }));
        }
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ssecfs: {e}");
            ExitCode::from(1)
        }
    })
}

fn run_generate(g: Generate, out: &mut dyn Write) -> std::io::Result<()> {
    match g {
        Generate::Completions { shell } => {
            // into memory first: clap_complete panics when a write fails (a closed pipe)
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ssecfs", &mut script);
            out.write_all(&script)?;
            out.flush()
        }
        Generate::Manpages { dir } => {
            std::fs::create_dir_all(&dir)?;
            // clap_mangen::generate_to, but every page says the version (subcommands have none)
            let mut cmd = Cli::command().disable_help_subcommand(true);
            cmd.build();
            let source = format!("ssecfs {}", env!("CARGO_PKG_VERSION"));
            let mut pages = vec![cmd];
            while let Some(page) = pages.pop() {
                pages.extend(page.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
                clap_mangen::Man::new(page)
                    .source(source.clone())
                    .generate_to(&dir)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<MountArgs, String> {
        let (args, kernel) =
            expand_args(args.iter().map(OsString::from).collect()).map_err(|e| e.to_string())?;
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Mount(mut m) => {
                m.kernel_flags = kernel;
                Ok(*m)
            }
            _ => Err("not mount".into()),
        }
    }

    #[test]
    fn ages_with_units_and_off() {
        let secs = |s: &str| parse_age(s).unwrap().map(|d| d.as_secs());
        assert_eq!(secs("7d"), Some(7 * 86_400));
        assert_eq!(secs("12H"), Some(12 * 3_600));
        assert_eq!(secs("30m"), Some(1_800));
        assert_eq!(secs(" 90s "), Some(90));
        assert_eq!(secs("0s"), Some(0));
        assert_eq!(secs("45"), Some(45));
        assert_eq!(secs("off"), None);
        for bad in [
            "",
            "d",
            "7w",
            "-1d",
            "1.5h",
            "99999999999999999999d",
            "7 days",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn mount8_form_with_o_options() {
        let m = parse(&[
            "ssecfs",
            "bucket:pre/fix",
            "/mnt/x",
            "-o",
            "rw,key_file=/k,endpoint=http://h:1,allow-http,_netdev,nosuid,x-systemd.automount,cache_size=64M,ro",
        ])
        .unwrap();
        assert_eq!(m.source, "bucket:pre/fix");
        assert_eq!(m.conn.key_file, vec![PathBuf::from("/k")]);
        assert_eq!(m.conn.endpoint.as_deref(), Some("http://h:1"));
        assert!(m.conn.allow_http && m.read_only);
        assert_eq!(m.cache_size, "64M");
        assert_eq!(m.kernel_flags, vec!["nosuid"]);
    }

    #[test]
    fn spill_options_in_every_form() {
        for opts in [
            "spill_dir=/var/spill,spill_size=2G",
            "spill-dir=/var/spill,spill-size=2G",
        ] {
            let m = parse(&["ssecfs", "b", "/m", "-o", &format!("key_file=/k,{opts}")]).unwrap();
            assert_eq!(m.spill_dir, Some(PathBuf::from("/var/spill")));
            assert_eq!(m.spill_size.as_deref(), Some("2G"));
        }
        let m = parse(&[
            "ssecfs",
            "mount",
            "--key-file",
            "/k",
            "--spill-dir",
            "/s",
            "b",
            "/m",
        ])
        .unwrap();
        assert_eq!(m.spill_dir, Some(PathBuf::from("/s")));
        assert_eq!(m.spill_size, None);
    }

    #[test]
    fn subcommand_form_and_unknown_options() {
        let m = parse(&["ssecfs", "mount", "--key-file", "/k", "-f", "b", "/m"]).unwrap();
        assert!(m.foreground);
        let err = parse(&["ssecfs", "b", "/m", "-o", "key_file=/k,frobnicate"]).unwrap_err();
        assert!(err.contains("unknown mount option `frobnicate`"), "{err}");
        let err = parse(&["ssecfs", "b", "/m", "-o", "key_file"]).unwrap_err();
        assert!(err.contains("needs a value"), "{err}");
    }

    #[test]
    fn called_as_mount_helper() {
        let (args, _) = expand_args(
            [
                "/sbin/mount.ssecfs",
                "b",
                "/m",
                "-n",
                "-o",
                "key_file=/k,rw",
            ]
            .iter()
            .map(OsString::from)
            .collect(),
        )
        .unwrap();
        let cli = Cli::try_parse_from(args).unwrap();
        assert!(matches!(cli.command, Command::Mount(m) if !m.foreground));
    }

    #[test]
    fn completions_and_manpages() {
        let gen = |args: &[&str]| {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            // they stay what they are through the mount(8) rewriting
            assert_eq!(expand_args(args.clone()).unwrap().0, args);
            let m = Cli::command().try_get_matches_from(args).unwrap();
            Generate::from_arg_matches(&m).unwrap()
        };
        let mut out = Vec::new();
        run_generate(gen(&["ssecfs", "completions", "bash"]), &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        for word in ["ssecfs", "keygen", "rotate", "--key-file", "--cache-size"] {
            assert!(
                script.contains(word),
                "{word} missing from the bash completions"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("man1");
        let target = target.to_str().unwrap();
        run_generate(gen(&["ssecfs", "manpages", target]), &mut Vec::new()).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        let mut want: Vec<String> = [
            "check",
            "completions",
            "keygen",
            "mount",
            "rotate",
            "status",
            "sync",
        ]
        .iter()
        .map(|s| format!("ssecfs-{s}.1"))
        .collect();
        want.push("ssecfs.1".into());
        want.sort();
        assert_eq!(pages, want);
        let mount = std::fs::read_to_string(dir.path().join("man1/ssecfs-mount.1")).unwrap();
        assert!(mount.contains("cache\\-size"), "{mount}");
        assert!(mount.contains(env!("CARGO_PKG_VERSION")), "{mount}");
        // the generators are not mount sources, nor subcommands of the rest of the program
        assert!(generate(&["ssecfs", "b", "/m"].map(OsString::from)).is_none());
        assert!(Cli::try_parse_from(["ssecfs", "completions", "bash"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn sources() {
        assert_eq!(split_source("b"), ("b".into(), "".into()));
        assert_eq!(split_source("b:p/q/"), ("b".into(), "p/q".into()));
        assert_eq!(split_source("s3://b/p"), ("b".into(), "p".into()));
    }
}
