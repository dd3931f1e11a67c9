//! A TCP proxy that puts a network's latency (and optionally its rate) between a client and a
//! server on one machine, for `scripts/bench.sh --rtt`.
//!
//! Each accepted connection gets its own upstream connection. Each direction is a pipeline: a
//! reader stamps every chunk it reads with its arrival time and queues it; a writer writes each
//! chunk at arrival + RTT/2, in order. Many chunks are in flight at once, so the proxy adds
//! latency without limiting throughput (a proxy that waited RTT/2 per read would cap a
//! connection at one read per RTT/2). What may be queued per direction is bounded (64 MiB by
//! default), so a fast sender meets back-pressure instead of filling memory. The end of a
//! direction (FIN) travels like data, delayed and after the last byte, and becomes a
//! `shutdown(SHUT_WR)` on the other socket; a connection is done when both directions are.
//! The writers wait on their own timer thread (src/timer.rs), not tokio's millisecond wheel,
//! which would add ~1 ms per direction.
//!
//! With a rate, a chunk also waits for the bytes before it to be sent at that rate
//! (serialization delay): a direction of the link, all connections together (they share it,
//! as a real link's), never goes faster than the rate.
//!
//! With `handshake`, a connection's first client bytes wait one more RTT after the accept:
//! the proxy accepts at once (the kernel completes the handshake locally), so without it a new
//! connection would cost nothing, where over a real link its SYN/SYN-ACK costs one RTT before
//! the client can send.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

mod timer;

/// Default bound on the bytes queued in one direction of one connection.
pub const DEFAULT_BUFFER: usize = 64 << 20;
/// Largest read; a chunk holds at most this much.
const READ_CHUNK: usize = 256 << 10;
/// What a queued chunk counts against the bound beyond its bytes (its queue entry), so that
/// many tiny chunks cannot exceed it either.
const CHUNK_OVERHEAD: usize = 256;

/// How the link behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Round-trip time: each direction adds half of it.
    pub rtt: Duration,
    /// Bits per second each direction may carry; `None`: no cap.
    pub rate_bps: Option<u64>,
    /// The client's first bytes on a connection wait one more RTT (a TCP handshake).
    pub handshake: bool,
    /// Most bytes queued per direction of a connection (less with a rate: see `queue_bound`).
    pub buffer: usize,
}

impl Config {
    /// `rtt`, no rate cap, no handshake, the default buffer.
    pub fn with_rtt(rtt: Duration) -> Self {
        Config {
            rtt,
            rate_bps: None,
            handshake: false,
            buffer: DEFAULT_BUFFER,
        }
    }
}

/// Parse a duration: `0`, or a number with `us`, `ms` or `s` (`20ms`, `1.5ms`, `0.02s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("'{s}': give a unit (us, ms or s), e.g. 20ms"));
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration such as 20ms"))?;
    if !v.is_finite() || !(0.0..=3600.0).contains(&(v * scale)) {
        return Err(format!("'{s}' is out of range (0 to 1 hour)"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Parse a rate in bits per second: a number with an optional `k`, `m` or `g` (powers of 1000)
/// and an optional `bit`, `bps` or `b/s` (`1gbit`, `100mbit`, `500k`).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let mut t = lower.as_str();
    for unit in ["bit/s", "bits", "bit", "bps", "b/s"] {
        if let Some(n) = t.strip_suffix(unit) {
            t = n;
            break;
        }
    }
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a rate such as 1gbit or 100mbit"))?;
    let bps = v * mult;
    if !bps.is_finite() || !(8.0..=1e13).contains(&bps) {
        return Err(format!("'{s}' is out of range (8 bit/s to 10 Tbit/s)"));
    }
    Ok(bps as u64)
}

/// Accept connections on `listener` forever, relaying each to `to` through the delayed link.
pub async fn serve(listener: TcpListener, to: SocketAddr, cfg: Config) -> io::Result<()> {
    // the two directions of the link, shared by every connection
    let now = Instant::now();
    let up: Wire = Arc::new(Mutex::new(now));
    let down: Wire = Arc::new(Mutex::new(now));
    loop {
        let client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // out of descriptors and the like: wait, the connections may end
                eprintln!("ssecfs-delay-proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (up, down) = (Arc::clone(&up), Arc::clone(&down));
        tokio::spawn(async move {
            if let Err(e) = relay(client, to, cfg, up, down).await {
                // resets are a client's or server's business; only a refused upstream is news
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    eprintln!("ssecfs-delay-proxy: connect {to}: {e}");
                }
            }
        });
    }
}

/// Relay one accepted connection to `to` until both directions have ended.
async fn relay(
    client: TcpStream,
    to: SocketAddr,
    cfg: Config,
    up: Wire,
    down: Wire,
) -> io::Result<()> {
    let accepted = Instant::now();
    client.set_nodelay(true)?;
    let upstream = TcpStream::connect(to).await?;
    upstream.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let not_before = if cfg.handshake {
        Some(accepted + cfg.rtt)
    } else {
        None
    };
    tokio::try_join!(
        pipe(cr, uw, cfg, up, not_before),
        pipe(ur, cw, cfg, down, None)
    )?;
    Ok(())
}

enum Msg {
    Data {
        due: Instant,
        data: Vec<u8>,
        _permit: OwnedSemaphorePermit,
    },
    Eof {
        due: Instant,
    },
}

/// Most bytes queued per direction of a connection. With a rate, what the link carries in
/// RTT + 10 ms (at least 1 MiB): enough for one connection to fill the link, while a burst
/// of many connections cannot queue seconds of data in front of a small request (the proxy
/// drops nothing, so its queue is all that holds senders back).
fn queue_bound(cfg: &Config) -> usize {
    let mut b = cfg.buffer;
    if let Some(bps) = cfg.rate_bps {
        let bdp = bps as f64 / 8.0 * (cfg.rtt.as_secs_f64() + 0.010);
        b = b.min((bdp as usize).max(1 << 20));
    }
    b.max(READ_CHUNK + CHUNK_OVERHEAD)
}

/// One direction of the link, for the rate cap: when the bytes queued so far (by every
/// connection) will have been sent.
type Wire = Arc<Mutex<Instant>>;

/// When each chunk of one direction of a connection leaves the far end of the link.
struct Link {
    half: Duration,
    rate_bps: Option<u64>,
    wire: Wire,
    /// The handshake: nothing leaves before this (plus `half`).
    not_before: Option<Instant>,
}

impl Link {
    fn due(&mut self, arrival: Instant, len: usize) -> Instant {
        let mut sent = arrival;
        if let Some(t) = self.not_before {
            sent = sent.max(t);
        }
        if let Some(bps) = self.rate_bps {
            let mut free_at = self.wire.lock().unwrap_or_else(|e| e.into_inner());
            let start = sent.max(*free_at);
            sent = start + Duration::from_secs_f64(len as f64 * 8.0 / bps as f64);
            *free_at = sent;
        }
        sent + self.half
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the other direction's writer ended",
    )
}

/// One direction: read chunks from `r`, write each to `w` when the link delivers it.
async fn pipe(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    cfg: Config,
    wire: Wire,
    not_before: Option<Instant>,
) -> io::Result<()> {
    // the semaphore bounds the queue; the channel itself need not
    let room = Arc::new(Semaphore::new(queue_bound(&cfg)));
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let mut link = Link {
        half: cfg.rtt / 2,
        rate_bps: cfg.rate_bps,
        wire,
        not_before,
    };
    let reader = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                let due = link.due(Instant::now(), 0);
                tx.send(Msg::Eof { due }).map_err(|_| gone())?;
                return Ok::<(), io::Error>(());
            }
            let permit = Arc::clone(&room)
                .acquire_many_owned((n + CHUNK_OVERHEAD) as u32)
                .await
                .map_err(|_| gone())?;
            // stamped once there is room: until then the bytes wait as they would in a full
            // queue in front of the link
            let due = link.due(Instant::now(), n);
            let data = buf[..n].to_vec();
            tx.send(Msg::Data {
                due,
                data,
                _permit: permit,
            })
            .map_err(|_| gone())?;
        }
    };
    let writer = async move {
        while let Some(msg) = rx.recv().await {
            let (due, data) = match msg {
                Msg::Data { due, data, _permit } => (due, Some((data, _permit))),
                Msg::Eof { due } => (due, None),
            };
            if due > Instant::now() {
                timer::sleep_until(due).await;
            }
            match data {
                Some((data, permit)) => {
                    w.write_all(&data).await?;
                    drop(permit);
                }
                None => {
                    w.shutdown().await?;
                    return Ok(());
                }
            }
        }
        // the reader failed; its error is the one reported
        Ok::<(), io::Error>(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("0.06s"), Ok(Duration::from_millis(60)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1ms").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("100mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("500k"), Ok(500_000));
        assert_eq!(parse_rate("2.5G"), Ok(2_500_000_000));
        assert_eq!(parse_rate("9600bps"), Ok(9600));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("").is_err());
    }

    #[test]
    fn link_rate_and_handshake() {
        let t0 = Instant::now();
        let mut l = Link {
            half: Duration::from_millis(10),
            rate_bps: Some(8_000_000), // 1 MB/s: 1 ms per 1000 bytes
            wire: Arc::new(Mutex::new(t0)),
            not_before: Some(t0 + Duration::from_millis(20)),
        };
        // the first chunk waits for the handshake, then for its own serialization
        assert_eq!(l.due(t0, 1000), t0 + Duration::from_millis(31));
        // a second chunk, arrived at once, queues behind the first
        assert_eq!(l.due(t0, 1000), t0 + Duration::from_millis(32));
        // one that arrives after the link is idle again only pays its own
        let late = t0 + Duration::from_millis(100);
        assert_eq!(l.due(late, 2000), late + Duration::from_millis(12));
    }
}
