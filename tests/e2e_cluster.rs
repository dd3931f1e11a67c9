//! End-to-end on a 3-node Garage cluster (replication factor 3): one node crashes (SIGKILL)
//! in the middle of an `rsync -a` into a mount; the mount keeps working, the rsync completes,
//! the node comes back on its kept data, and every file verifies by checksum through a fresh
//! mount served by the node that crashed, and straight from the server with the key.
//!
//! Uses the cluster of `eval "$(scripts/test-server.sh cluster)"` when `S3_CLUSTER=1` is set;
//! otherwise starts its own (same script, under `$SSECFS_TEST_DIR/cluster`) and stops it at
//! the end, even when the test fails. Node 1 serves the S3 endpoint of the mount, so the
//! crashed node is node 3.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const CRASHED: &str = "3";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-server.sh")
}

fn script_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(script());
    c.args(args);
    c
}

/// The cluster under test; stops it on drop when this test started it.
struct Cluster {
    owned: bool,
}

impl Cluster {
    fn get() -> Cluster {
        if std::env::var("S3_CLUSTER").as_deref() == Ok("1") {
            assert!(
                std::env::var_os("SSECFS_CLUSTER_DIR").is_some(),
                "S3_CLUSTER=1 but SSECFS_CLUSTER_DIR is unset: eval the output of \
                 `scripts/test-server.sh cluster`"
            );
            return Cluster { owned: false };
        }
        // Our own cluster. Its state goes under SSECFS_TEST_DIR (scripts/test.sh's cleanup
        // stops it there if this process is killed), never over a single-node server's.
        let mut cmd = script_cmd(&["cluster"]);
        cmd.env_remove("SSECFS_CLUSTER_DIR")
            .env_remove("S3_BUCKET")
            .env_remove("GARAGE_CONFIG");
        let cluster = Cluster { owned: true };
        let out = output_of(&mut cmd, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "scripts/test-server.sh cluster failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The test harness reads its endpoint and credentials from the environment; nothing
        // else runs in this process yet (one test per binary).
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((k, v)) = line
                .strip_prefix("export ")
                .and_then(|kv| kv.split_once('='))
            else {
                continue;
            };
            // the values are `printf %q`-quoted; ours never need quoting except paths
            let v = v.trim_matches('\'');
            std::env::set_var(k, v);
        }
        eprintln!(
            "started a 3-node cluster at {} (state in {})",
            endpoint(),
            std::env::var("SSECFS_CLUSTER_DIR").unwrap_or_default()
        );
        cluster
    }

    fn kill_node(&self, n: &str) {
        run_cmd(&mut script_cmd(&["kill-node", n]));
    }

    fn start_node(&self, n: &str) {
        run_cmd(&mut script_cmd(&["start-node", n]));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            let _ = output_of(&mut script_cmd(&["cluster-stop"]), Duration::from_secs(60));
        } else {
            // leave a shared cluster whole for whoever runs next
            let _ = output_of(
                &mut script_cmd(&["start-node", CRASHED]),
                Duration::from_secs(60),
            );
        }
    }
}

/// A seeded tree: `dirs` directories, `files` files of 1–64 KiB, a few of 1–2 MiB.
fn make_tree(root: &Path, files: usize, seed: u64) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut names = Vec::new();
    for i in 0..files {
        let dir = format!("d{}/s{}", i % 12, i % 3);
        std::fs::create_dir_all(root.join(&dir)).unwrap();
        let len = if i % 40 == 7 {
            rng.gen_range(1 << 20..2 << 20)
        } else {
            rng.gen_range(1024..64 << 10)
        };
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let rel = format!("{dir}/f{i:04}.bin");
        std::fs::write(root.join(&rel), data).unwrap();
        names.push(rel);
    }
    names
}

#[test]
fn rsync_survives_a_node_crash_and_every_file_verifies() {
    let cluster = Cluster::get();
    let bucket = TestBucket::new();
    let src_dir = tempdir("e2e-cluster-src-");
    let src = src_dir.path();
    const FILES: usize = 200;
    let names = make_tree(src, FILES, 0xc1_0573);
    let before = snapshot(src);

    let mut m = Mount::new(&bucket, &[]);
    let mut rsync = Command::new("rsync")
        .arg("-a")
        .arg("--out-format=%n")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", m.root().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsync");
    let (tx, rx) = mpsc::channel();
    let stdout = rsync.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // crash node 3 once about a third of the files went through
    let t0 = Instant::now();
    let mut seen = 0usize;
    let mut killed_at = None;
    for _line in rx.iter() {
        seen += 1;
        if killed_at.is_none() && seen >= FILES / 3 {
            cluster.kill_node(CRASHED);
            killed_at = Some(seen);
            eprintln!(
                "killed node {CRASHED} after {seen} rsync lines ({:?})",
                t0.elapsed()
            );
        }
    }
    reader.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = rsync.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = rsync.kill();
            panic!("rsync did not finish within 300 s; log:\n{}", m.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(rsync.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        status.success(),
        "rsync failed with node {CRASHED} down ({status}): {err}\nlog:\n{}",
        log_excerpt(m.log_path())
    );
    assert!(killed_at.is_some(), "rsync printed only {seen} lines");
    eprintln!("rsync done in {:?} ({seen} lines)", t0.elapsed());
    // the mount still works with the node down, and shows the tree
    assert_same_tree("mount with a node down", &before, &snapshot(m.root()));
    m.unmount();
    assert!(!m.log().contains("panicked"), "the daemon panicked");

    cluster.start_node(CRASHED);
    // a fresh mount through the node that crashed
    let node3 = std::env::var(format!("S3_ENDPOINT_NODE{CRASHED}")).unwrap();
    // (the direct client keeps node 1); the revived node may need a moment more before its
    // own requests reach quorum
    let mut tries = 0;
    let fresh = loop {
        // no listing cache: each retry below must ask the server again
        match Mount::try_through_endpoint(bucket.name(), m.key(), &node3, &["--attr-ttl", "0"]) {
            Ok(f) => break f,
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!(
                    "fresh mount via node {CRASHED} not yet: {}",
                    e.lines().next().unwrap_or("")
                );
                std::thread::sleep(Duration::from_secs(3));
            }
            Err(e) => panic!("{e}"),
        }
    };
    // The revived node may list for a while what was deleted while it was down (an rsync temp
    // name whose tombstone it has not synced yet): that is Garage converging, not a lost file.
    // Give it a minute; what rsync wrote must be there and equal at every attempt.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| snapshot(fresh.root())));
        match attempt {
            Ok(snap) if snap == before || Instant::now() >= deadline => {
                assert_same_tree("fresh mount via the revived node", &before, &snap);
                break;
            }
            Ok(_) | Err(_) if Instant::now() < deadline => {
                eprintln!("listing via node {CRASHED} not converged yet; retrying");
                std::thread::sleep(Duration::from_secs(3));
            }
            Ok(_) | Err(_) => {
                // Still listing a name deleted while it was down (seen: rsync's temp name of
                // the file in flight at the kill). Not a loss: every file rsync wrote must
                // still read back whole through this mount.
                eprintln!("listing via node {CRASHED} still stale after 60 s; checking files");
                for rel in &names {
                    let want = std::fs::read(src.join(rel)).unwrap();
                    let got = std::fs::read(fresh.path(rel))
                        .unwrap_or_else(|e| panic!("{rel} via node {CRASHED}: {e}"));
                    assert!(got == want, "{rel} differs via node {CRASHED}");
                }
                break;
            }
        }
    }
    drop(fresh);
    // straight from the server, with the key
    for rel in &names {
        let data = std::fs::read(src.join(rel)).unwrap();
        assert_stored(bucket.name(), rel, m.key(), &data);
    }
    eprintln!(
        "verified {} files by sha256 (fresh mount and server), node {CRASHED} killed after \
         {} files",
        names.len(),
        killed_at.unwrap()
    );
    drop(m);
    drop(bucket);
    drop(cluster);
}
