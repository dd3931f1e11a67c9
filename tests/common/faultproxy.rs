//! A fault-injecting HTTP/1.1 proxy for the test bed: ssecfs talks to the proxy (plain HTTP on
//! loopback, `--endpoint http://127.0.0.1:<port> --allow-http`), the proxy talks to Garage.
//!
//! Design: one OS thread per client connection (the SDK keeps a small pool), each with its own
//! upstream connection, relaying one request/response exchange at a time. The proxy parses
//! just enough HTTP to act per request: the request head and body (`Content-Length` or
//! chunked) and the response head and body (`Content-Length`, chunked — re-framed with a
//! `Content-Length` — or until close; no body for HEAD, 1xx, 204, 304). Whole responses are
//! buffered (ranged GETs of at most a few MiB), which makes "forward part of the body" easy.
//!
//! For each request one seeded RNG draw picks a fault from [`Faults`] (cumulative fractions),
//! so a run with the same seed and the same request order injects the same faults; with
//! concurrent requests the order, hence the exact faults, can vary. [`FaultStats`] counts what
//! was injected, by kind. Faults can be restricted to some methods (`only_methods`) and the
//! configuration swapped at any time ([`FaultProxy::set`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to inject, as fractions of the requests (summing to at most 1).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Forward the request, then close the client connection without answering (the server
    /// did the work; the client does not know).
    pub drop: f64,
    /// Forward the request, send the response head and part of the body, then reset (RST).
    pub reset_mid_body: f64,
    /// Answer 503 SlowDown without forwarding, or 500 InternalError after forwarding (half
    /// each).
    pub error_5xx: f64,
    /// Forward, then garble the answer: garbage XML body, a wrong Content-Length, or missing
    /// headers (ETag, Content-Range, x-amz-*). HEAD answers only lose headers.
    pub malformed: f64,
    /// Forward after a delay of `stall_for`.
    pub stall: f64,
    pub stall_for: Duration,
    /// Only requests with one of these methods get faults (empty: all).
    pub only_methods: Vec<&'static str>,
    /// Only ranged GETs (object data, not listings) get faults.
    pub only_ranged_gets: bool,
}

/// Faults injected so far, by kind.
#[derive(Debug, Default)]
pub struct FaultStats {
    pub requests: AtomicU64,
    pub drops: AtomicU64,
    pub resets: AtomicU64,
    pub err503: AtomicU64,
    pub err500: AtomicU64,
    pub garbage_xml: AtomicU64,
    pub wrong_length: AtomicU64,
    pub missing_headers: AtomicU64,
    pub stalls: AtomicU64,
    /// Upstream could not be reached (the server is down): the client connection is closed.
    pub upstream_down: AtomicU64,
}

impl FaultStats {
    pub fn injected(&self) -> u64 {
        [
            &self.drops,
            &self.resets,
            &self.err503,
            &self.err500,
            &self.garbage_xml,
            &self.wrong_length,
            &self.missing_headers,
            &self.stalls,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

impl std::fmt::Display for FaultStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "requests={} injected={} (drop={} reset_mid_body={} 503={} 500={} garbage_xml={} \
             wrong_length={} missing_headers={} stall={}) upstream_down={}",
            g(&self.requests),
            self.injected(),
            g(&self.drops),
            g(&self.resets),
            g(&self.err503),
            g(&self.err500),
            g(&self.garbage_xml),
            g(&self.wrong_length),
            g(&self.missing_headers),
            g(&self.stalls),
            g(&self.upstream_down),
        )
    }
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    stats: FaultStats,
    stop: AtomicBool,
    /// CopyObject requests still to refuse with 403 (see [`FaultProxy::refuse_copies`]).
    copies_to_refuse: AtomicU64,
    /// Remove the SSE-C echo from every answer (see [`FaultProxy::hide_sse_c`]).
    hide_sse_c: AtomicBool,
}

/// The proxy; stops accepting on drop (connections in progress finish on their own).
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Listen on an ephemeral loopback port, forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str, seed: u64, faults: Faults) -> FaultProxy {
        let hostport = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("fault proxy needs a plain http upstream, got {upstream}"))
            .trim_end_matches('/');
        let upstream: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .expect("resolve upstream")
            .next()
            .expect("an upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(faults),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            stats: FaultStats::default(),
            stop: AtomicBool::new(false),
            copies_to_refuse: AtomicU64::new(0),
            hide_sse_c: AtomicBool::new(false),
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let sh = sh.clone();
                std::thread::spawn(move || serve(conn, &sh));
            }
        });
        FaultProxy { addr, shared }
    }

    /// The endpoint URL to give ssecfs.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replace the fault configuration (applies to the next requests).
    pub fn set(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    pub fn stats(&self) -> &FaultStats {
        &self.shared.stats
    }

    /// Answer the next `n` CopyObject requests (not UploadPartCopy) with 403 AccessDenied,
    /// without forwarding them: a policy or a server refusing one step of a flush.
    pub fn refuse_copies(&self, n: u64) {
        self.shared.copies_to_refuse.store(n, Ordering::SeqCst);
    }

    /// Answer like a server that ignores SSE-C (moto, s3s-fs): no answer carries the
    /// `x-amz-server-side-encryption-customer-*` echo of what the server applied.
    pub fn hide_sse_c(&self, on: bool) {
        self.shared.hide_sse_c.store(on, Ordering::SeqCst);
    }

    /// CopyObject requests still to be refused.
    pub fn copies_left_to_refuse(&self) -> u64 {
        self.shared.copies_to_refuse.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // wake the accept loop
        let _ = TcpStream::connect(self.addr);
    }
}

/// One HTTP message head: the start line and the header lines, as received.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    fn set(&mut self, name: &str, value: String) {
        self.remove(name);
        self.headers.push((name.to_owned(), value));
    }

    fn is_chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Read a message head; `None` at a clean end of stream.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut start = String::new();
    loop {
        start.clear();
        if r.read_line(&mut start)? == 0 {
            return Ok(None);
        }
        if !start.trim().is_empty() {
            break;
        }
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Some(Head {
        start: start.trim_end().to_owned(),
        headers,
    }))
}

/// Read a chunked body (decoded).
fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // trailers up to the empty line
            loop {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let at = body.len();
        body.resize(at + size, 0);
        r.read_exact(&mut body[at..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

fn read_exact_vec(r: &mut impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Close with RST instead of FIN (SO_LINGER 0).
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid socket fd with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    Drop,
    Reset,
    Err503,
    Err500,
    GarbageXml,
    WrongLength,
    MissingHeaders,
    Stall,
}

fn pick(sh: &Shared, method: &str, ranged: bool) -> (Fault, Duration, u64) {
    let f = sh.faults.lock().unwrap().clone();
    let mut rng = sh.rng.lock().unwrap();
    let (r, sub, extra): (f64, f64, u64) = (rng.gen(), rng.gen(), rng.gen());
    if (!f.only_methods.is_empty() && !f.only_methods.contains(&method))
        || (f.only_ranged_gets && !(method == "GET" && ranged))
    {
        return (Fault::None, Duration::ZERO, extra);
    }
    let mut edge = 0.0;
    let mut hit = |p: f64| {
        edge += p;
        r < edge
    };
    let fault = if hit(f.drop) {
        Fault::Drop
    } else if hit(f.reset_mid_body) {
        Fault::Reset
    } else if hit(f.error_5xx) {
        if sub < 0.5 {
            Fault::Err503
        } else {
            Fault::Err500
        }
    } else if hit(f.malformed) {
        match (sub * 3.0) as u32 {
            0 => Fault::GarbageXml,
            1 => Fault::WrongLength,
            _ => Fault::MissingHeaders,
        }
    } else if hit(f.stall) {
        Fault::Stall
    } else {
        Fault::None
    };
    (fault, f.stall_for, extra)
}

/// 403 AccessDenied, as a bucket policy answers a request it refuses.
fn refusal() -> Vec<u8> {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
                <Message>injected refusal</Message></Error>";
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error_response(status: u16, code: &str) -> Vec<u8> {
    let reason = if status == 503 {
        "Service Unavailable"
    } else {
        "Internal Server Error"
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected \
         by the fault proxy</Message><RequestId>faultproxy</RequestId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// A relayed response, whole.
struct Response {
    head: Head,
    body: Vec<u8>,
    /// The upstream connection cannot be reused (body read to close).
    close: bool,
}

fn relay(
    up: &mut Option<(TcpStream, BufReader<TcpStream>)>,
    sh: &Shared,
    req: &[u8],
    method: &str,
) -> std::io::Result<Response> {
    // A pooled upstream connection may have been closed by the server: retry once on a new one
    // when nothing came back at all.
    for attempt in 0..2 {
        if up.is_none() {
            let s = TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            let r = BufReader::new(s.try_clone()?);
            *up = Some((s, r));
        }
        let (w, r) = up.as_mut().unwrap();
        let head = match w.write_all(req).and_then(|_| read_head(r)) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) if attempt == 0 => {
                *up = None;
                continue;
            }
            Ok(None) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) => return Err(e),
        };
        let status: u16 = head
            .start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let no_body = method == "HEAD" || status < 200 || status == 204 || status == 304;
        let mut close = head
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut head = head;
        let body = if no_body {
            Vec::new()
        } else if head.is_chunked() {
            let b = read_chunked(r)?;
            head.remove("transfer-encoding");
            head.set("content-length", b.len().to_string());
            b
        } else if let Some(n) = head.content_length() {
            read_exact_vec(r, n)?
        } else {
            close = true;
            let mut b = Vec::new();
            r.read_to_end(&mut b)?;
            head.set("content-length", b.len().to_string());
            b
        };
        if close {
            *up = None;
        }
        return Ok(Response { head, body, close });
    }
    unreachable!()
}

/// Serve one client connection until it closes or a fault ends it.
fn serve(client: TcpStream, sh: &Shared) {
    let _ = client.set_nodelay(true);
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut cr = BufReader::new(read_half);
    let mut cw = client;
    let mut up: Option<(TcpStream, BufReader<TcpStream>)> = None;
    loop {
        let Ok(Some(mut head)) = read_head(&mut cr) else {
            return;
        };
        let body = if head.is_chunked() {
            match read_chunked(&mut cr) {
                Ok(b) => {
                    head.remove("transfer-encoding");
                    head.set("content-length", b.len().to_string());
                    b
                }
                Err(_) => return,
            }
        } else {
            match read_exact_vec(&mut cr, head.content_length().unwrap_or(0)) {
                Ok(b) => b,
                Err(_) => return,
            }
        };
        if head
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            // the body was already read; answer the interim response the client waits for
            head.remove("expect");
        }
        let method = head
            .start
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned();
        let mut req = head.bytes();
        req.extend_from_slice(&body);
        sh.stats.requests.fetch_add(1, Ordering::Relaxed);
        let is_copy_object = method == "PUT"
            && head.get("x-amz-copy-source").is_some()
            && !head.start.contains("partNumber=");
        if is_copy_object
            && sh
                .copies_to_refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            if cw.write_all(&refusal()).is_err() {
                return;
            }
            continue;
        }
        let ranged = head.get("range").is_some();
        let (fault, stall_for, extra) = pick(sh, &method, ranged);
        let count = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        if fault == Fault::Err503 {
            count(&sh.stats.err503);
            if cw.write_all(&error_response(503, "SlowDown")).is_err() {
                return;
            }
            continue;
        }
        if fault == Fault::Stall {
            count(&sh.stats.stalls);
            std::thread::sleep(stall_for);
        }
        let resp = match relay(&mut up, sh, &req, &method) {
            Ok(r) => r,
            Err(_) => {
                // the server is gone: so is the answer
                count(&sh.stats.upstream_down);
                reset(&cw);
                return;
            }
        };
        let Response {
            mut head,
            mut body,
            close,
        } = resp;
        let mut close_after = close;
        if sh.hide_sse_c.load(Ordering::SeqCst) {
            head.headers.retain(|(k, _)| {
                !k.to_ascii_lowercase()
                    .starts_with("x-amz-server-side-encryption-customer")
            });
        }
        // A HEAD answer has no body to garble: a different Content-Length there is not a
        // framing error but a well-formed lie about the size, which no client can detect.
        let fault = match fault {
            Fault::GarbageXml | Fault::WrongLength if method == "HEAD" => Fault::MissingHeaders,
            f => f,
        };
        match fault {
            Fault::Drop => {
                count(&sh.stats.drops);
                let _ = cw.shutdown(Shutdown::Both);
                return;
            }
            Fault::Err500 => {
                count(&sh.stats.err500);
                let _ = cw.write_all(&error_response(500, "InternalError"));
                continue;
            }
            Fault::Reset if !body.is_empty() => {
                count(&sh.stats.resets);
                let cut = (extra as usize) % body.len();
                let _ = cw.write_all(&head.bytes());
                let _ = cw.write_all(&body[..cut]);
                let _ = cw.flush();
                std::thread::sleep(Duration::from_millis(5));
                reset(&cw);
                return;
            }
            Fault::Reset => {
                // nothing to cut: reset before the answer
                count(&sh.stats.resets);
                reset(&cw);
                return;
            }
            Fault::GarbageXml => {
                count(&sh.stats.garbage_xml);
                body =
                    b"<?xml version=\"1.0\"?><ListBucketResult><Contents><Key>&#xFFFF;<Size>-1</Si"
                        .to_vec();
                head.set("content-type", "application/xml".into());
                head.set("content-length", body.len().to_string());
            }
            Fault::WrongLength => {
                count(&sh.stats.wrong_length);
                // announce a length that does not match, then end the connection
                let n = body.len();
                if n > 0 && extra % 2 == 0 {
                    let short = (extra as usize / 2) % n;
                    head.set("content-length", short.to_string());
                    body.truncate(short);
                } else {
                    head.set(
                        "content-length",
                        (n + 1 + (extra % 1000) as usize).to_string(),
                    );
                }
                close_after = true;
            }
            Fault::MissingHeaders => {
                count(&sh.stats.missing_headers);
                head.headers.retain(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    !(k == "etag" || k == "content-range" || k.starts_with("x-amz-"))
                });
            }
            _ => {}
        }
        if close_after {
            head.set("connection", "close".into());
        }
        if cw.write_all(&head.bytes()).is_err() || cw.write_all(&body).is_err() {
            return;
        }
        if close_after {
            let _ = cw.flush();
            let _ = cw.shutdown(Shutdown::Both);
            return;
        }
    }
}
