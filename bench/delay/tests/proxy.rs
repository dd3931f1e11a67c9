//! The proxy in front of an echo server: a ping-pong costs the RTT, bytes keep their order
//! and all arrive, the end of each direction is passed on, and throughput is not throttled
//! (unless a rate is set). Bounds are loose: the machine may be busy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ssecfs_delay_proxy::{serve, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server: writes back what it reads, shuts its write side down at the client's EOF.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s.set_nodelay(true).unwrap();
                let (mut r, mut w) = s.into_split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    addr
}

async fn proxy(to: SocketAddr, cfg: Config) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(l, to, cfg));
    addr
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Round trips of one byte; returns each one's duration.
async fn ping_pong(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut s = connect(addr).await;
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    for i in 0..n {
        let t = Instant::now();
        s.write_all(&[i as u8]).await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        out.push(t.elapsed());
        assert_eq!(b[0], i as u8);
    }
    out
}

const CHUNK: usize = 1 << 20;

/// Bytes `i % 251` (a period that no power-of-two chunking lines up with), one chunk plus a
/// period long, so that any stream offset's next chunk is one slice of it.
fn pattern() -> Vec<u8> {
    (0..CHUNK + 251).map(|i| (i % 251) as u8).collect()
}

/// Send `len` bytes of a counting pattern and read them back concurrently, then check the end of
/// the stream arrives after the last byte; returns the elapsed time.
async fn transfer(addr: SocketAddr, len: usize) -> Duration {
    let s = connect(addr).await;
    let (mut r, mut w) = s.into_split();
    let t = Instant::now();
    let send = tokio::spawn(async move {
        let pat = pattern();
        let mut off = 0usize;
        while off < len {
            let n = CHUNK.min(len - off);
            w.write_all(&pat[off % 251..off % 251 + n]).await.unwrap();
            off += n;
        }
        // half-close: the echo server must still send everything back
        w.shutdown().await.unwrap();
        w
    });
    let pat = pattern();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0usize;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        // slices compared whole (memcmp), fast even in a debug build
        assert!(
            buf[..n] == pat[got % 251..got % 251 + n],
            "bytes {got}..{} differ",
            got + n
        );
        got += n;
    }
    let elapsed = t.elapsed();
    send.await.unwrap();
    assert_eq!(got, len, "the echo ended early");
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_costs_the_rtt() {
    let rtt = Duration::from_millis(20);
    let p = proxy(echo_server().await, Config::with_rtt(rtt)).await;
    for d in ping_pong(p, 5).await {
        assert!(d >= rtt, "round trip {d:?} shorter than the RTT {rtt:?}");
        assert!(
            d < rtt + Duration::from_millis(50),
            "round trip {d:?} much longer than {rtt:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtt_zero_passes_through() {
    let p = proxy(echo_server().await, Config::with_rtt(Duration::ZERO)).await;
    let d = ping_pong(p, 20).await;
    let mut sorted = d.clone();
    sorted.sort();
    assert!(
        sorted[10] < Duration::from_millis(5),
        "median round trip {:?} at RTT 0",
        sorted[10]
    );
    transfer(p, 4 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_kept_and_not_throttled() {
    let rtt = Duration::from_millis(20);
    let p = proxy(echo_server().await, Config::with_rtt(rtt)).await;
    // 64 MiB each way: a proxy that waited RTT/2 per read would take many seconds
    let d = transfer(p, 64 << 20).await;
    assert!(d >= rtt, "{d:?}: faster than one RTT");
    assert!(
        d < Duration::from_secs(4),
        "64 MiB through a 20 ms RTT took {d:?}: throttled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_adds_one_rtt_to_the_first_exchange() {
    let rtt = Duration::from_millis(20);
    let cfg = Config {
        handshake: true,
        ..Config::with_rtt(rtt)
    };
    let p = proxy(echo_server().await, cfg).await;
    let d = ping_pong(p, 3).await;
    // the handshake RTT counts from the proxy's accept, which may come a little before the
    // client's first write starts the clock
    assert!(
        d[0] >= 2 * rtt - Duration::from_millis(2),
        "first exchange {:?}: no handshake RTT",
        d[0]
    );
    assert!(
        d[0] < 2 * rtt + Duration::from_millis(100),
        "first exchange {:?}",
        d[0]
    );
    for x in &d[1..] {
        assert!(
            *x >= rtt && *x < rtt + Duration::from_millis(50),
            "later exchange {x:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_caps_throughput() {
    // 80 Mbit/s = 10 MB/s per direction of the link, shared by its connections: two of 2 MB
    // each take at least 0.4 s together (both directions in parallel, so not much more)
    let cfg = Config {
        rate_bps: Some(80_000_000),
        ..Config::with_rtt(Duration::from_millis(2))
    };
    let p = proxy(echo_server().await, cfg).await;
    let t = Instant::now();
    let (a, b) = tokio::join!(transfer(p, 2_000_000), transfer(p, 2_000_000));
    let d = t.elapsed();
    assert!(a.max(b) <= d);
    assert!(
        d >= Duration::from_millis(390),
        "2 x 2 MB at 80 Mbit/s in {d:?}: not capped"
    );
    assert!(d < Duration::from_secs(3), "2 x 2 MB at 80 Mbit/s in {d:?}");
}
