//! `ssecfs-delay-proxy --listen ADDR --to ADDR --rtt 20ms [--rate 1gbit] [--handshake]`: see
//! the library (src/lib.rs) for what the link does.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ssecfs_delay_proxy::{parse_duration, parse_rate, serve, Config, DEFAULT_BUFFER};

/// A TCP proxy that adds a round-trip time (and optionally a rate cap) to every connection,
/// without limiting throughput otherwise: scripts/bench.sh --rtt.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to accept connections on
    #[arg(long)]
    listen: SocketAddr,
    /// Server each connection is relayed to
    #[arg(long)]
    to: SocketAddr,
    /// Round-trip time added (half in each direction): 0, 20ms, 1.5ms, 500us, 0.06s
    #[arg(long, value_parser = parse_duration)]
    rtt: Duration,
    /// Cap on each direction of the link (all connections together), bits per second: 1gbit,
    /// 100mbit, 500k
    #[arg(long, value_parser = parse_rate)]
    rate: Option<u64>,
    /// A connection's first client bytes wait one more RTT, as a TCP handshake over the link
    /// would make them (the proxy itself accepts at once)
    #[arg(long)]
    handshake: bool,
    /// Most bytes queued per direction of a connection, in MiB (with --rate: at most what the
    /// link carries in RTT + 10 ms, at least 1 MiB)
    #[arg(long, default_value_t = (DEFAULT_BUFFER >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    buffer_mib: u32,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let cfg = Config {
        rtt: a.rtt,
        rate_bps: a.rate,
        handshake: a.handshake,
        buffer: (a.buffer_mib as usize) << 20,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssecfs-delay-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen).await?;
        eprintln!(
            "ssecfs-delay-proxy: {} -> {}, rtt {:?}{}{}",
            listener.local_addr()?,
            a.to,
            cfg.rtt,
            cfg.rate_bps
                .map(|r| format!(", rate {r} bit/s"))
                .unwrap_or_default(),
            if cfg.handshake { ", handshake" } else { "" },
        );
        serve(listener, a.to, cfg).await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ssecfs-delay-proxy: {}: {e}", a.listen);
            ExitCode::FAILURE
        }
    }
}
