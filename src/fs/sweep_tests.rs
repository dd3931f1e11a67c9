//! Failure-point sweep: every workload is run once to count its requests, then once for each
//! request number *i* and each [`FailKind`], with request *i* failing that way. The mount then
//! retries as it would (the kernel's release after a failed close, fsync, unmount), and the
//! bucket is checked against the model of the workload:
//!
//! - every name a file may have holds, when it exists, either the file's last successfully
//!   closed content or its new content: never a mix, never zeros, never another file's bytes;
//! - a file whose `close()` or `fsync()` of the new content returned 0, or whose unmount
//!   reported no failure, holds the new content under one of its names;
//! - a file that existed before still exists under one of its names.
//!
//! MemStore, no FUSE: hundreds of cases run in seconds.

use std::future::Future;
use std::pin::Pin;

use super::*;
use crate::s3::failing::{FailKind, FailingStore};
use crate::s3::mem::MemStore;
use crate::s3::Metadata;

const PART: u64 = 5 << 20;

/// `len` bytes unique to file `id` at `version` (no two files or versions share a run).
fn pattern(id: u8, version: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(u64::from(id) << 40 | u64::from(version) << 32);
            (x >> 29) as u8 | 1 // never 0: zeros in a file are always a bug here
        })
        .collect()
}

/// A future borrowing the mount and the model for its run.
type Step<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;
type RunFn = for<'a> fn(&'a Arc<Fs>, &'a mut Vec<Expect>) -> Step<'a>;

/// What one file of a workload must look like afterwards.
#[derive(Debug, Clone)]
struct Expect {
    /// Keys the file may live under (a rename may have happened or not).
    names: Vec<String>,
    /// Content before the workload (None: the file is new).
    old: Option<Vec<u8>>,
    new: Vec<u8>,
    /// A close or fsync of the new content returned 0.
    durable: bool,
    /// The application gave up (an open or write failed again when retried): the new
    /// content was never all written, so only "nothing mixed" is required.
    gave_up: bool,
    /// Another content the file may hold: what a rename while writing made durable.
    between: Option<Vec<u8>>,
}

impl Expect {
    fn new(names: Vec<String>, old: Option<Vec<u8>>, new: Vec<u8>, durable: bool) -> Expect {
        Expect {
            names,
            old,
            new,
            durable,
            gave_up: false,
            between: None,
        }
    }
}

/// A workload: what it does through the mount, and the model of its outcome.
struct Workload {
    name: &'static str,
    write_back: bool,
    /// Objects in the bucket before the mount (not through the failing store).
    setup: fn(&MemStore),
    run: RunFn,
}

/// One operation of the workload, in a task of its own as the daemon runs each request: a
/// panic inside becomes a failed operation (EIO), as a FUSE request would.
async fn op<T: Send + 'static>(
    fs: &Arc<Fs>,
    f: impl FnOnce(Arc<Fs>) -> Pin<Box<dyn Future<Output = FsResult<T>> + Send>>,
) -> FsResult<T> {
    let fut = f(fs.clone());
    match tokio::spawn(fut).await {
        Ok(r) => r,
        Err(e) => Err(FsError::Lost(format!("request task died: {e}"))),
    }
}

/// An application that retries a failed write or rename once (one request fails in a case,
/// so a retry may only fail again when the file was poisoned: then it gives up).
async fn retried<T: Send + 'static>(
    fs: &Arc<Fs>,
    f: impl Fn(Arc<Fs>) -> Pin<Box<dyn Future<Output = FsResult<T>> + Send>>,
) -> FsResult<T> {
    match op(fs, &f).await {
        Ok(v) => Ok(v),
        Err(_) => op(fs, &f).await,
    }
}

async fn write_all(fs: &Arc<Fs>, ino: u64, offset: u64, data: &[u8], step: usize) -> bool {
    for (i, piece) in data.chunks(step).enumerate() {
        let piece = piece.to_vec();
        let off = offset + (i * step) as u64;
        let r = retried(fs, move |fs| {
            let piece = piece.clone();
            Box::pin(async move { fs.write(ino, off, &piece).await })
        })
        .await;
        if r.is_err() {
            return false;
        }
    }
    true
}

/// close(): the flush whose result the application sees, then the kernel's release.
async fn close(fs: &Arc<Fs>, ino: u64, fh: u64) -> bool {
    let ok = op(fs, move |fs| Box::pin(async move { fs.flush(ino).await }))
        .await
        .is_ok();
    let _ = op(fs, move |fs| {
        Box::pin(async move { fs.release(ino, fh).await })
    })
    .await;
    ok
}

async fn create(fs: &Arc<Fs>, parent: u64, name: &'static str) -> Option<(u64, u64)> {
    retried(fs, move |fs| {
        Box::pin(async move {
            let (ino, _, fh) = fs.create(parent, name, 0o644, 1000, 1000).await?;
            Ok((ino, fh))
        })
    })
    .await
    .ok()
}

async fn open_existing(fs: &Arc<Fs>, name: &'static str) -> Option<(u64, u64)> {
    retried(fs, move |fs| {
        Box::pin(async move {
            let (ino, _) = fs.lookup(ROOT, name).await?;
            let fh = fs.open(ino, true, false).await?;
            Ok((ino, fh))
        })
    })
    .await
    .ok()
}

async fn setattr(fs: &Arc<Fs>, ino: u64, set: SetAttr) -> bool {
    retried(fs, move |fs| {
        let set = set.clone();
        Box::pin(async move { fs.setattr(ino, set).await.map(|_| ()) })
    })
    .await
    .is_ok()
}

async fn rename(fs: &Arc<Fs>, from: &'static str, to: &'static str) -> bool {
    retried(fs, move |fs| {
        Box::pin(async move { fs.rename(ROOT, from, ROOT, to, false).await })
    })
    .await
    .is_ok()
}

fn put_raw(mem: &MemStore, key: &str, data: Vec<u8>) {
    let mem = mem.clone();
    let key = key.to_owned();
    // a plain thread: the sweep's runtime may be current-thread
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(mem.put(&key, Bytes::from(data), &Metadata::new()))
            .unwrap();
    })
    .join()
    .unwrap();
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "rsync pattern: create temp, write, close, utimens, rename",
            write_back: false,
            setup: |_| {},
            run: |fs, exp| Box::pin(rsync_pattern(fs, exp)),
        },
        Workload {
            name: "rsync pattern in write-back mode",
            write_back: true,
            setup: |_| {},
            run: |fs, exp| Box::pin(rsync_pattern(fs, exp)),
        },
        Workload {
            name: "big file streamed, chmod while open",
            write_back: false,
            setup: |_| {},
            run: |fs, exp| {
                Box::pin(async move {
                    let new = pattern(2, 1, (2 * PART + 123_456) as usize);
                    exp.push(Expect::new(vec!["big".into()], None, new.clone(), false));
                    let Some((ino, fh)) = create(fs, ROOT, "big").await else {
                        exp.last_mut().unwrap().gave_up = true;
                        return;
                    };
                    if !write_all(fs, ino, 0, &new, 1 << 20).await {
                        exp.last_mut().unwrap().gave_up = true;
                        close(fs, ino, fh).await;
                        return;
                    }
                    setattr(
                        fs,
                        ino,
                        SetAttr {
                            mode: Some(0o600),
                            ..Default::default()
                        },
                    )
                    .await;
                    exp[0].durable = close(fs, ino, fh).await;
                })
            },
        },
        Workload {
            name: "big file streamed, renamed while open",
            write_back: false,
            setup: |_| {},
            run: |fs, exp| {
                Box::pin(async move {
                    let new = pattern(3, 1, (2 * PART + 777) as usize);
                    exp.push(Expect::new(
                        vec!["a".into(), "b".into()],
                        None,
                        new.clone(),
                        false,
                    ));
                    let Some((ino, fh)) = create(fs, ROOT, "a").await else {
                        exp.last_mut().unwrap().gave_up = true;
                        return;
                    };
                    let half = (PART + 4096) as usize;
                    // the rename stores what was written so far under the new name
                    exp[0].between = Some(new[..half].to_vec());
                    if !write_all(fs, ino, 0, &new[..half], 1 << 20).await {
                        exp.last_mut().unwrap().gave_up = true;
                        close(fs, ino, fh).await;
                        return;
                    }
                    rename(fs, "a", "b").await;
                    if !write_all(fs, ino, half as u64, &new[half..], 1 << 20).await {
                        exp.last_mut().unwrap().gave_up = true;
                        close(fs, ino, fh).await;
                        return;
                    }
                    exp[0].durable = close(fs, ino, fh).await;
                })
            },
        },
        Workload {
            name: "one-byte edit of a big file (part copies)",
            write_back: false,
            setup: |mem| put_raw(mem, "e", pattern(4, 0, (2 * PART + 7) as usize)),
            run: |fs, exp| {
                Box::pin(async move {
                    let old = pattern(4, 0, (2 * PART + 7) as usize);
                    let mut new = old.clone();
                    let at = (PART + 99) as usize;
                    new[at] ^= 0x5a;
                    exp.push(Expect::new(vec!["e".into()], Some(old), new.clone(), false));
                    let Some((ino, fh)) = open_existing(fs, "e").await else {
                        exp.last_mut().unwrap().gave_up = true;
                        return;
                    };
                    if write_all(fs, ino, at as u64, &new[at..at + 1], 1).await {
                        exp[0].durable = close(fs, ino, fh).await;
                    } else {
                        exp.last_mut().unwrap().gave_up = true;
                        close(fs, ino, fh).await;
                    }
                })
            },
        },
        Workload {
            name: "truncate down, up, write past the old end",
            write_back: false,
            setup: |mem| put_raw(mem, "t", pattern(5, 0, (2 * PART + 11) as usize)),
            run: |fs, exp| {
                Box::pin(async move {
                    let old = pattern(5, 0, (2 * PART + 11) as usize);
                    let (down, up, at) = (PART / 2, 2 * PART - 3, PART + 1000);
                    let mut new = old[..down as usize].to_vec();
                    new.resize(up as usize, 0);
                    let extra = pattern(5, 1, 4096);
                    new[at as usize..at as usize + 4096].copy_from_slice(&extra);
                    exp.push(Expect::new(vec!["t".into()], Some(old), new, false));
                    let Some((ino, fh)) = open_existing(fs, "t").await else {
                        exp.last_mut().unwrap().gave_up = true;
                        return;
                    };
                    let ok = setattr(
                        fs,
                        ino,
                        SetAttr {
                            size: Some(down),
                            ..Default::default()
                        },
                    )
                    .await
                        && setattr(
                            fs,
                            ino,
                            SetAttr {
                                size: Some(up),
                                ..Default::default()
                            },
                        )
                        .await
                        && write_all(fs, ino, at, &extra, 4096).await;
                    let closed = close(fs, ino, fh).await;
                    // a truncation without a handle is durable at once: a failed one in the
                    // middle leaves a state that is neither (the application saw the error)
                    exp[0].durable = ok && closed;
                    if !ok {
                        exp.clear();
                    }
                })
            },
        },
        Workload {
            name: "append to a file",
            write_back: false,
            setup: |mem| put_raw(mem, "p", pattern(6, 0, (PART + 5) as usize)),
            run: |fs, exp| {
                Box::pin(async move {
                    let old = pattern(6, 0, (PART + 5) as usize);
                    let more = pattern(6, 1, (PART / 2) as usize);
                    let mut new = old.clone();
                    new.extend_from_slice(&more);
                    exp.push(Expect {
                        names: vec!["p".into()],
                        old: Some(old.clone()),
                        new,
                        durable: false,
                        gave_up: false,
                        between: None,
                    });
                    let Some((ino, fh)) = open_existing(fs, "p").await else {
                        exp.last_mut().unwrap().gave_up = true;
                        return;
                    };
                    if write_all(fs, ino, old.len() as u64, &more, 1 << 20).await {
                        exp[0].durable = close(fs, ino, fh).await;
                    } else {
                        exp.last_mut().unwrap().gave_up = true;
                        close(fs, ino, fh).await;
                    }
                })
            },
        },
        Workload {
            name: "directory rename",
            write_back: false,
            setup: |mem| {
                put_raw(mem, "dd/", Vec::new());
                put_raw(mem, "dd/x", pattern(7, 0, 1000));
                put_raw(mem, "dd/y", pattern(8, 0, 70_000));
                put_raw(mem, "dd/z", pattern(9, 0, (PART + 3) as usize));
            },
            run: |fs, exp| {
                Box::pin(async move {
                    for (id, name, len) in [(7, "x", 1000), (8, "y", 70_000), (9, "z", PART + 3)] {
                        let v = pattern(id, 0, len as usize);
                        let names = vec![format!("dd/{name}"), format!("ee/{name}")];
                        exp.push(Expect::new(names, Some(v.clone()), v, true));
                    }
                    rename(fs, "dd", "ee").await;
                })
            },
        },
        Workload {
            name: "unmount with pending work (write-back)",
            write_back: true,
            setup: |_| {},
            run: |fs, exp| {
                Box::pin(async move {
                    for (id, name, len) in [(10, "w1", 3000), (11, "w2", PART + PART / 3)] {
                        let new = pattern(id, 1, len as usize);
                        let i = exp.len();
                        exp.push(Expect::new(vec![name.into()], None, new.clone(), false));
                        let Some((ino, fh)) = create(fs, ROOT, name).await else {
                            exp.last_mut().unwrap().gave_up = true;
                            continue;
                        };
                        if write_all(fs, ino, 0, &new, 1 << 20).await {
                            // write-back: a 0 from close is no promise; fsync's is
                            close(fs, ino, fh).await;
                            if i == 0 {
                                exp[i].durable =
                                    op(fs, move |fs| Box::pin(async move { fs.fsync(ino).await }))
                                        .await
                                        .is_ok();
                            }
                        } else {
                            exp.last_mut().unwrap().gave_up = true;
                            close(fs, ino, fh).await;
                        }
                    }
                })
            },
        },
        Workload {
            name: "background renames: a chain, one over a file, then an append to the new name",
            write_back: false,
            setup: |mem| {
                put_raw(mem, "a", pattern(12, 0, 3000));
                put_raw(mem, "x", pattern(13, 0, 2000));
                put_raw(mem, "y", pattern(14, 0, 1000));
            },
            run: |fs, exp| Box::pin(background_renames(fs, exp)),
        },
        Workload {
            name: "files renamed into a directory, then the directory renamed",
            write_back: false,
            setup: |mem| {
                put_raw(mem, "dd/", Vec::new());
                put_raw(mem, "t1", pattern(15, 0, 1500));
                put_raw(mem, "t2", pattern(16, 0, 70_000));
            },
            run: |fs, exp| {
                Box::pin(async move {
                    for (id, name, len) in [(15, "t1", 1500), (16, "t2", 70_000)] {
                        let v = pattern(id, 0, len);
                        let names = vec![name.into(), format!("dd/{name}"), format!("ee/{name}")];
                        exp.push(Expect::new(names, Some(v.clone()), v, true));
                    }
                    for name in ["t1", "t2"] {
                        let _ = retried(fs, move |fs| {
                            Box::pin(async move {
                                let (dd, _) = fs.lookup(ROOT, "dd").await?;
                                fs.rename(ROOT, name, dd, name, false).await
                            })
                        })
                        .await;
                    }
                    rename(fs, "dd", "ee").await;
                })
            },
        },
    ]
}

/// a → b → c, x over y, then an append to c: every move is in the background, and the
/// append must land after the moves of its file.
async fn background_renames(fs: &Arc<Fs>, exp: &mut Vec<Expect>) {
    let a = pattern(12, 0, 3000);
    let more = pattern(12, 1, 500);
    let mut appended = a.clone();
    appended.extend_from_slice(&more);
    let names = vec!["a".into(), "b".into(), "c".into()];
    exp.push(Expect::new(names, Some(a.clone()), appended, false));
    let x = pattern(13, 0, 2000);
    let mut over = Expect::new(vec!["x".into(), "y".into()], Some(x.clone()), x, true);
    // y holds its own content until the rename over it is stored
    over.between = Some(pattern(14, 0, 1000));
    exp.push(over);
    rename(fs, "a", "b").await;
    rename(fs, "b", "c").await;
    rename(fs, "x", "y").await;
    let Some((ino, fh)) = open_existing(fs, "c").await else {
        exp[0].gave_up = true;
        return;
    };
    if write_all(fs, ino, a.len() as u64, &more, 1 << 20).await {
        exp[0].durable = close(fs, ino, fh).await;
    } else {
        exp[0].gave_up = true;
        close(fs, ino, fh).await;
    }
}

async fn rsync_pattern(fs: &Arc<Fs>, exp: &mut Vec<Expect>) {
    let new = pattern(1, 1, 100_000);
    exp.push(Expect::new(
        vec![".f.tmp".into(), "f".into()],
        None,
        new.clone(),
        false,
    ));
    let Some((ino, fh)) = create(fs, ROOT, ".f.tmp").await else {
        exp.last_mut().unwrap().gave_up = true;
        return;
    };
    if !write_all(fs, ino, 0, &new, 32 << 10).await {
        exp.last_mut().unwrap().gave_up = true;
        close(fs, ino, fh).await;
        return;
    }
    let closed = close(fs, ino, fh).await;
    exp[0].durable = closed && fs.cfg.write_back.is_none();
    setattr(
        fs,
        ino,
        SetAttr {
            mtime: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
            ..Default::default()
        },
    )
    .await;
    rename(fs, ".f.tmp", "f").await;
}

fn fs_with(store: Arc<dyn ObjectStore>, write_back: bool) -> Arc<Fs> {
    let mut cfg = FsConfig::new("", 1000, 1000);
    cfg.upload.part_size = PART;
    cfg.upload.part_concurrency = 2;
    if write_back {
        cfg.write_back = Some(WriteBack {
            delay: Duration::from_millis(20),
            max_pending: 32 << 20,
            concurrency: 2,
        });
    }
    Fs::new(cfg, store, Arena::with_cap_unchecked(64 << 20))
}

/// Run `w` with request `at` failing as `kind` (0: none); returns the requests made and the
/// violations of the model found.
async fn run_case(w: &Workload, at: u64, kind: FailKind) -> (u64, Vec<String>) {
    let mem = MemStore::new("k");
    (w.setup)(&mem);
    let failing = Arc::new(FailingStore::new(Arc::new(mem.clone()), at, kind));
    let fs = fs_with(failing.clone(), w.write_back);
    let mut exp = Vec::new();
    (w.run)(&fs, &mut exp).await;
    // What the mount does next on its own: the write-back timer, then unmount (twice: a
    // failure injected into the first is retried by the second, as a later close would).
    tokio::time::sleep(Duration::from_millis(if w.write_back { 60 } else { 0 })).await;
    let first = fs.upload_all(UploadAll::Unmount).await;
    let second = fs.upload_all(UploadAll::Unmount).await;
    let settled = second == 0;
    let requests = failing.requests();
    let mut bad = Vec::new();
    for e in &exp {
        let held: Vec<(String, Vec<u8>)> = e
            .names
            .iter()
            .filter_map(|n| mem.raw(n).map(|d| (n.clone(), d)))
            .collect();
        for (name, data) in &held {
            let is_new = *data == e.new;
            let is_old = e.old.as_ref().is_some_and(|o| data == o);
            let is_between = e.between.as_ref().is_some_and(|b| data == b);
            if !is_new && !is_old && !is_between {
                let zeros = data.iter().filter(|&&b| b == 0).count();
                bad.push(format!(
                    "{name}: {} bytes, neither the old nor the new content ({zeros} zero bytes)",
                    data.len()
                ));
            }
        }
        let has_new = held.iter().any(|(_, d)| *d == e.new);
        if (e.durable || (settled && !e.gave_up)) && !has_new {
            bad.push(format!(
                "{:?}: the new content is not stored (durable={}, unmount failures {first} then {second})",
                e.names, e.durable
            ));
        }
        if e.old.is_some() && held.is_empty() {
            bad.push(format!("{:?}: the file is gone", e.names));
        }
    }
    if !bad.is_empty() {
        bad.push(format!(
            "requests: {:?}; failed: {:?}",
            failing.log(),
            failing.failed_op()
        ));
    }
    (requests, bad)
}

/// Sweep one workload; returns (cases tried, failures as messages).
async fn sweep(w: &Workload) -> (usize, Vec<String>) {
    let (n, bad) = run_case(w, 0, FailKind::Refused).await;
    assert!(bad.is_empty(), "{}: fails without faults: {bad:#?}", w.name);
    let mut cases = 0;
    let mut failures = Vec::new();
    // a failed request can add requests (retries): sweep past the fault-free count too
    for at in 1..=n + 2 {
        for kind in FailKind::ALL {
            cases += 1;
            let (_, bad) = run_case(w, at, kind).await;
            if !bad.is_empty() {
                failures.push(format!("{} / request {at} / {kind:?}: {bad:#?}", w.name));
            }
        }
    }
    (cases, failures)
}

macro_rules! sweep_test {
    ($name:ident, $index:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let w = &workloads()[$index];
            let (cases, failures) = sweep(w).await;
            eprintln!(
                "sweep {}: {cases} cases, {} violated the model",
                w.name,
                failures.len()
            );
            assert!(failures.is_empty(), "{}", failures.join("\n"));
        }
    };
}

sweep_test!(sweep_rsync_pattern, 0);
sweep_test!(sweep_rsync_pattern_write_back, 1);
sweep_test!(sweep_big_file_streamed_with_chmod, 2);
sweep_test!(sweep_big_file_renamed_while_open, 3);
sweep_test!(sweep_one_byte_edit_of_a_big_file, 4);
sweep_test!(sweep_truncate_down_and_up, 5);
sweep_test!(sweep_append, 6);
sweep_test!(sweep_directory_rename, 7);
sweep_test!(sweep_unmount_with_pending_work, 8);
sweep_test!(sweep_background_renames, 9);
sweep_test!(sweep_renames_into_a_renamed_directory, 10);
