//! Logging: where lines go (stderr, a file, syslog), what a user's `SSECFS_LOG` filter may
//! enable, and the last problems of the mount, kept for `ssecfs status`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Where log lines go.
pub enum Target<'a> {
    File(&'a Path),
    Syslog,
    Stderr,
}

/// Install the process's logger: `SSECFS_LOG` (an EnvFilter) when set, else `ssecfs=LEVEL`
/// and warnings of the libraries.
pub fn init(level: &str, target: Target) {
    let filter = match tracing_subscriber::EnvFilter::try_from_env("SSECFS_LOG") {
        Ok(user) => user,
        Err(_) => tracing_subscriber::EnvFilter::new(format!("ssecfs={level},warn")),
    };
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let file = match target {
        Target::File(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok(),
        _ => None,
    };
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let lines: Boxed = match (file, target) {
        (Some(f), _) => fmt.with_ansi(false).with_writer(Mutex::new(f)).boxed(),
        (None, Target::Syslog | Target::File(_)) => {
            crate::sys::openlog();
            fmt.with_ansi(false)
                .without_time()
                .with_writer(|| SyslogWriter)
                .boxed()
        }
        (None, Target::Stderr) => fmt.with_writer(std::io::stderr).boxed(),
    };
    let problems = tracing_subscriber::filter::filter_fn(|m| {
        *m.level() <= tracing::Level::WARN && m.target().starts_with("ssecfs")
    });
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(filter).with_filter(floor()))
        .with(Recent.with_filter(problems))
        .try_init();
}

/// Crates whose verbose events carry request or response headers, hence the key (base64 in
/// `x-amz-server-side-encryption-customer-key`, the signer's canonical request, hyper's
/// buffers) or its MD5 (response structs), with the most verbose level that is safe.
const CAPPED: [(&str, tracing::Level); 10] = [
    ("aws_sigv4", tracing::Level::INFO),
    ("aws_smithy_runtime", tracing::Level::DEBUG),
    ("aws_smithy_runtime_api", tracing::Level::DEBUG),
    ("aws_smithy_http_client", tracing::Level::DEBUG),
    ("aws_smithy_http", tracing::Level::DEBUG),
    ("aws_sdk_s3", tracing::Level::DEBUG),
    ("aws_runtime", tracing::Level::DEBUG),
    ("hyper", tracing::Level::DEBUG),
    ("hyper_util", tracing::Level::DEBUG),
    ("h2", tracing::Level::DEBUG),
];

/// Whether an event or span of `target` at `level` may be logged at all: a hard floor below
/// the user's filter that no `SSECFS_LOG` directive can lift (an EnvFilter directive for a
/// module, e.g. `aws_smithy_runtime::client::orchestrator=trace`, overrides one for its
/// crate, which is how a cap written as directives was bypassed).
fn allowed(target: &str, level: &tracing::Level) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    match CAPPED.iter().find(|(name, _)| *name == krate) {
        Some((_, cap)) => level <= cap,
        // rustls and anything else below the HTTP stack: warnings only
        None if krate == "rustls" || krate.starts_with("tower") => *level <= tracing::Level::WARN,
        None => true,
    }
}

fn floor() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|m| allowed(m.target(), m.level()))
}

/// How many of the last warnings and errors `ssecfs status` shows.
const RECENT: usize = 20;

static PROBLEMS: Mutex<VecDeque<(Instant, String)>> = Mutex::new(VecDeque::new());

/// The mount's last warnings and errors, oldest first, each with its age.
pub fn recent_problems() -> Vec<String> {
    let now = Instant::now();
    PROBLEMS
        .lock()
        .unwrap()
        .iter()
        .map(|(at, line)| format!("{} s ago: {line}", now.duration_since(*at).as_secs()))
        .collect()
}

/// Keeps the last [`RECENT`] warnings and errors of ssecfs itself (which name the file and
/// the cause) for `ssecfs status`.
struct Recent;

impl<S: tracing::Subscriber> Layer<S> for Recent {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = format!("{} ", event.metadata().level());
        event.record(&mut Fields(&mut line));
        let mut q = PROBLEMS.lock().unwrap();
        if q.len() == RECENT {
            q.pop_front();
        }
        q.push_back((Instant::now(), line));
    }
}

/// An event's message, then its other fields as `name=value`.
struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// One tracing event → one syslog line (journald picks it up on systemd machines).
struct SyslogWriter;

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let priority = if text.contains("ERROR") {
            libc::LOG_ERR
        } else if text.contains("WARN") {
            libc::LOG_WARNING
        } else {
            libc::LOG_INFO
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Ok(c) = std::ffi::CString::new(line.replace('\0', " ")) {
                crate::sys::syslog(priority, &c);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_floor_holds_whatever_module_a_directive_names() {
        assert!(!allowed(
            "aws_smithy_runtime::client::orchestrator",
            &Level::TRACE
        ));
        assert!(!allowed("aws_sigv4::http_request::sign", &Level::DEBUG));
        assert!(!allowed("aws_sigv4", &Level::TRACE));
        assert!(!allowed("hyper_util::client::legacy::pool", &Level::TRACE));
        assert!(!allowed("rustls::client", &Level::DEBUG));
        assert!(allowed(
            "aws_smithy_runtime::client::retries",
            &Level::DEBUG
        ));
        assert!(allowed("aws_sigv4", &Level::INFO));
        assert!(allowed("ssecfs::fs", &Level::TRACE));
        // a crate whose name only starts like a capped one is not capped
        assert!(allowed("hyperfine", &Level::TRACE));
    }
}
