#!/usr/bin/env python3
"""Turn the results of scripts/bench.sh into Markdown tables (stdout, docs/BENCHMARKS.md) and a
bar chart (docs/benchmarks.png, needs matplotlib; skipped with a warning without it).

Input: --results, a TSV with one line per contender/workload/run:
    contender workload run status seconds amount rss_kib lck_kib note
(status `ok` or `FAIL`, note = the failure reason or a remark), and --meta, a TSV of key/value
lines (machine facts, sizes, the command, timings, the latency profile).

A run without a latency profile (no `proxy` in the meta) writes the main part of the Markdown
file and docs/benchmarks.png; a run with one (`scripts/bench.sh --rtt 20ms`) writes only its
own section, between markers, and its own chart: the file holds one section per RTT (and rate),
each replaced only by the next run with the same ones.
"""

import argparse
import os
import re
import statistics
import sys
from collections import OrderedDict, defaultdict

LABELS = OrderedDict(
    [
        ("raw", "raw S3 (aws-sdk-s3)"),
        ("ssecfs", "ssecfs"),
        ("ssecfs-wb", "ssecfs --write-back"),
        ("ssecfs-spill", "ssecfs --spill-dir"),
        ("s3fs", "s3fs"),
        ("s3fs-nomp", "s3fs nomultipart"),
        ("rclone-off", "rclone cache off (https)"),
        ("rclone-writes", "rclone cache writes (https)"),
    ]
)
COLORS = {
    "raw": "#7f7f7f",
    "ssecfs": "#1f77b4",
    "ssecfs-wb": "#17becf",
    "ssecfs-spill": "#9467bd",
    "s3fs": "#ff7f0e",
    "s3fs-nomp": "#ffbb78",
    "rclone-off": "#2ca02c",
    "rclone-writes": "#98df8a",
}
SHORT = {
    "raw": "raw S3",
    "ssecfs": "ssecfs",
    "ssecfs-wb": "ssecfs wb",
    "ssecfs-spill": "ssecfs spill",
    "s3fs": "s3fs",
    "s3fs-nomp": "s3fs nomp",
    "rclone-off": "rclone off",
    "rclone-writes": "rclone writes",
}
WORKLOADS = ["write", "read", "read-warm", "randread", "rsync", "rsync-noop", "ls", "cp"]


def size_text(mib):
    return "%d GiB" % (mib // 1024) if mib % 1024 == 0 else "%d MiB" % mib


def workload_info(meta):
    """workload -> (title, unit, amount divisor)."""
    size = size_text(int(meta["file_mib"]))
    n = int(meta["small_files"])
    nl = int(meta["list_objects"])
    return {
        "write": ("sequential write, %s" % size, "MiB/s", 1 << 20),
        "read": ("sequential read, %s (cold)" % size, "MiB/s", 1 << 20),
        "read-warm": ("sequential read again, same mount (warm)", "MiB/s", 1 << 20),
        "randread": ("random 4 KiB reads (fio, %s s)" % meta["fio_seconds"], "IOPS", 1),
        "rsync": ("rsync -a, %s small files" % f"{n:,}", "files/s", 1),
        "rsync-noop": ("rsync -a again (no-op)", "files/s", 1),
        "ls": ("ls -l, %s objects (cold)" % f"{nl:,}", "entries/s", 1),
        "cp": ("cp -r out, %s small files (cold)" % f"{n:,}", "files/s", 1),
    }


def load(results_path, meta_path):
    meta = {}
    with open(meta_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "\t" in line:
                k, v = line.split("\t", 1)
                meta[k] = v
    rows = []
    with open(results_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 8:
                continue
            parts += [""] * (9 - len(parts))
            c, w, run, status, sec, amount, rss, lck, note = parts[:9]
            rows.append(
                {
                    "c": c,
                    "w": w,
                    "run": int(run),
                    "ok": status == "ok",
                    "seconds": float(sec),
                    "amount": float(amount),
                    "rss": int(rss or 0),
                    "lck": int(lck or 0),
                    "note": note,
                }
            )
    return meta, rows


def fmt_num(x):
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_sec(s):
    return f"{s:.1f} s" if s >= 10 else f"{s:.2f} s"


def fmt_mib(kib):
    mib = kib / 1024
    return f"{mib:,.0f} MiB" if mib >= 10 else f"{mib:.1f} MiB"


class Cell:
    """Median result of one contender on one workload."""

    def __init__(self, runs, divisor):
        self.runs = runs
        ok = [r for r in runs if r["ok"] and r["seconds"] > 0]
        self.failed = [r for r in runs if not r["ok"]]
        self.ok = bool(ok)
        self.thr = statistics.median(r["amount"] / divisor / r["seconds"] for r in ok) if ok else None
        self.sec = statistics.median(r["seconds"] for r in ok) if ok else None
        self.rss = max((r["rss"] for r in ok), default=0)
        self.lck = max((r["lck"] for r in ok), default=0)
        notes = []
        counts = []
        for r in ok:
            note = r["note"]
            if note.startswith(REQUESTS):
                counts.append([int(x) for x in note[len(REQUESTS):].split()])
            elif note and note not in notes:
                notes.append(note)
        self.notes = notes
        # requests the server received per kind (REQUEST_KINDS), median over runs
        self.requests = [statistics.median(col) for col in zip(*counts)] if counts else None

    def fail_reason(self):
        return self.failed[0]["note"] if self.failed else "no result"


# a note "requests TOTAL PUT COPY DELETE HEAD GET OTHER": what the server received from the
# contender during the workload (scripts/bench.sh requests_since)
REQUESTS = "requests "
REQUEST_KINDS = ["all", "PUT", "copy", "DELETE", "HEAD", "GET", "other"]


def short(text, n=90):
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def build(meta, rows):
    info = workload_info(meta)
    contenders = [c for c in meta.get("contenders", "").split() if c]
    if not contenders:
        contenders = list(OrderedDict((r["c"], 1) for r in rows))
    by = defaultdict(list)
    for r in rows:
        by[(r["c"], r["w"])].append(r)
    cells = {}
    for c in contenders:
        for w in WORKLOADS:
            if by.get((c, w)):
                cells[(c, w)] = Cell(by[(c, w)], info[w][2])
    workloads = [w for w in WORKLOADS if any((c, w) in cells for c in contenders)]
    return info, contenders, workloads, cells


def table(header, body, align="---:"):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [align] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(out)


def results_md(meta, info, contenders, workloads, cells):
    runs = int(meta.get("runs", "1"))
    what = "median of %d runs" % runs if runs > 1 else "1 run"
    parts = []

    # throughput
    body = []
    for w in workloads:
        title, unit, _ = info[w]
        row = [f"{title} ({unit})"]
        for c in contenders:
            cell = cells.get((c, w))
            if cell is None:
                row.append("–")
            elif not cell.ok:
                row.append("**FAIL**: " + short(cell.fail_reason(), 70))
            else:
                t = f"**{fmt_num(cell.thr)}**<br>{fmt_sec(cell.sec)}"
                if cell.failed:
                    t += f"<br>⚠ {len(cell.failed)}/{len(cell.runs)} runs failed"
                for n in cell.notes:
                    t += f"<br><sub>{short(n, 50)}</sub>"
                row.append(t)
        body.append(row)
    parts.append(f"### Throughput ({what}; higher is better, time below)\n")
    parts.append(table(["workload"] + [LABELS.get(c, c) for c in contenders], body))

    # ratios (the spill variant only as a column: its own table would repeat ssecfs's)
    mine = [c for c in ("ssecfs", "ssecfs-wb") if c in contenders]
    for m in mine:
        # the other ssecfs variant only in the first table (the second would be its inverse)
        peers = [c for c in contenders if c != m and not (c.startswith("ssecfs") and m != mine[0])]
        if not peers:
            continue
        body = []
        for w in workloads:
            row = [info[w][0]]
            a = cells.get((m, w))
            for p in peers:
                b = cells.get((p, w))
                if a and b and a.ok and b.ok and b.thr > 0:
                    row.append(f"{a.thr / b.thr:.2f}×")
                else:
                    row.append("n/a")
            body.append(row)
        parts.append(
            f"\n### {LABELS[m]} relative to each contender (throughput ratio {LABELS[m]} / other, "
            "same invocation; > 1 means ssecfs is faster)\n"
        )
        parts.append(table(["workload"] + [f"{LABELS[m]} / {LABELS.get(p, p)}" for p in peers], body))

    # memory
    body = []
    for w in workloads:
        row = [info[w][0]]
        for c in contenders:
            cell = cells.get((c, w))
            if cell is None or not cell.ok:
                row.append("–")
            elif c.startswith("ssecfs"):
                row.append(f"{fmt_mib(cell.rss)}<br>locked {fmt_mib(cell.lck)}")
            else:
                row.append(fmt_mib(cell.rss))
        body.append(row)
    parts.append(
        "\n### Peak memory (max over runs): daemon VmHWM; for ssecfs also peak VmLck (locked); "
        "for raw, the client process\n"
    )
    parts.append(table(["workload"] + [LABELS.get(c, c) for c in contenders], body))
    return "\n".join(parts)


def failures_md(rows, info):
    fails = [r for r in rows if not r["ok"]]
    if not fails:
        return "None: every contender completed every workload."
    lines = []
    for r in fails:
        lines.append(f"- **{LABELS.get(r['c'], r['c'])}**, {info[r['w']][0]}, run {r['run']}: FAIL: {short(r['note'], 300)}")
    return "\n".join(lines)


def runs_md(rows, info):
    body = []
    for r in rows:
        unit = info[r["w"]][1]
        if r["ok"]:
            thr = r["amount"] / info[r["w"]][2] / r["seconds"] if r["seconds"] > 0 else 0
            body.append(
                [
                    LABELS.get(r["c"], r["c"]),
                    r["w"],
                    str(r["run"]),
                    f"{r['seconds']:.3f}",
                    f"{fmt_num(thr)} {unit}",
                    str(r["rss"]),
                    str(r["lck"]),
                    short(r["note"], 60),
                ]
            )
        else:
            body.append([LABELS.get(r["c"], r["c"]), r["w"], str(r["run"]), "–", "FAIL", "–", "–", short(r["note"], 120)])
    return table(["contender", "workload", "run", "seconds", "throughput", "peak RSS KiB", "VmLck KiB", "note"], body)


def machine_md(meta):
    keys = [
        ("CPU", f"{meta.get('cpu', '?')}, nproc {meta.get('nproc', '?')} (shared with Garage)"),
        ("Memory", meta.get("memory", "?")),
        ("Kernel", meta.get("kernel", "?")),
        ("TCP", meta.get("tcp", "?")),
        ("OS", meta.get("os", "?")),
        ("Garage", meta.get("garage", "?") + " (local, single node, sqlite, http on 127.0.0.1)"),
        ("ssecfs", meta.get("ssecfs", "?")),
        ("rustc", meta.get("rustc", "?")),
        ("s3fs", meta.get("s3fs", "?")),
        ("rclone", meta.get("rclone", "?")),
        ("fio", meta.get("fio", "?")),
        ("rsync", meta.get("rsync", "?")),
    ]
    return table(["", ""], [[k, v.replace("|", "/")] for k, v in keys], align="---")


def duration(s):
    s = float(s)
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


METHOD = """\
- **Server**: a fresh Garage from `scripts/test-server.sh` (own state dir and ports, so the
  test suite's server is left alone), one bucket per contender, all on this machine, over
  plain http on 127.0.0.1 — except rclone, see below.
- **Network**: Garage writes an SSE-C GET's response headers and body in two writes on a
  socket without `TCP_NODELAY`; the body (ready ~8 ms later, after the block is decrypted)
  then waits for the client's delayed ACK, so every small SSE-C GET costs ~40 ms whatever the
  client (seen with strace on both ends). Per-file and random-read workloads would all measure
  that timer. Unless run with `--no-netns`, the script therefore runs in private network and
  mount namespaces: loopback routes with delayed ACKs off (`ip route … quickack 1`; the
  Machine table says which stack was used) and a private tmpfs on /dev/shm.
- **Key**: one random SSE-C key for every contender. ssecfs, s3fs (`use_sse=custom:FILE`) and
  the raw tool read it as a base64 line; rclone gets `sse_customer_key_base64`. Every write is
  checked on the server with a keyed HEAD that must succeed and an unkeyed HEAD that must be
  refused, so a contender that silently skipped SSE-C would fail.
- **Contenders**
  - *raw S3*: `ssecfs-raw-bench` (aws-sdk-s3, no filesystem): multipart upload with 8 MiB
    parts, 8 in flight; sequential read as ranged GETs of 8 MiB, 8 in flight; random reads as
    4 KiB ranged GETs, one at a time; small files as one PutObject each, one at a time (as rsync
    sends them); the no-op sync as one listing compared by size; `ls` as ListObjectsV2 with
    delimiter; `cp` as one GetObject per file, one at a time. Its uploads have ssecfs's request
    shape: a CRC32C on every PutObject and UploadPart and no SigV4 payload hash
    (UNSIGNED-PAYLOAD). Its memory column is the client.
  - *ssecfs*: `ssecfs mount --endpoint … --allow-http --key-file KEY BUCKET MNT`, defaults
    otherwise (256 MiB locked cache, 8 MiB parts, 8 uploads in flight);
    `--write-back` too when `ssecfs mount --help` lists it.
  - *ssecfs --spill-dir*: the same with `--spill-dir` in the scratch tmpfs (the tier holds
    only AES-GCM-sealed blocks, never plaintext) and `--spill-size` twice the file; for the
    random reads it first reads the whole file once, untimed (the cell says so), so that what
    the locked cache cannot hold is in the tier. With the 256 MiB default cache it differs
    from plain ssecfs only when the file is larger (the full run's 1 GiB, not `--quick`'s).
  - *s3fs*: `s3fs BUCKET MNT -o url=…,endpoint=garage,use_path_request_style,use_sse=custom:KEY,
    passwd_file=…,tmpdir=/dev/shm/…`, with default multipart and with `nomultipart`.
  - *rclone*: `rclone mount remote:BUCKET MNT --daemon` with an S3 remote (provider Other,
    `force_path_style`, `sse_customer_algorithm=AES256`, `sse_customer_key_base64`). rclone
    refuses to send SSE-C keys over http ("cannot send SSE keys over HTTP"), so it alone talks
    https to the test server's TLS front-end (stunnel, `--ca-cert`): it pays for TLS and one
    proxy hop that the others do not. `AWS_CA_BUNDLE` is unset for it (rclone's S3 client
    fails to start with it set). Once with `--vfs-cache-mode off` and once with
    `--vfs-cache-mode writes` (cache dir in /dev/shm, deleted afterwards), otherwise defaults:
    in cache mode writes an upload starts 5 s after the file's last close
    (`--vfs-write-back 5s`), and that wait is in its write and rsync times. (With 0 s, rsync's
    renames race the uploads of its temporary files and the rsync fails.)
- **Latency** (the sections *At N ms round-trip time*, `scripts/bench.sh --rtt N`): one
  `ssecfs-delay-proxy` (bench/delay) in front of Garage's S3 port, and every contender's
  endpoint is the proxy (rclone's TLS front-end forwards to it). It delays each direction by
  RTT/2 per chunk read, many chunks in flight, so latency is added but throughput is not
  limited (`--rate` caps it, when given), and holds a new connection's first bytes one RTT
  more (`--handshake`: over a real link the TCP handshake costs that; the proxy accepts
  locally). Not modelled: TLS handshakes (rclone's are with the local front-end), loss,
  jitter, a congestion window that starts small. The script's own requests (bucket setup, and
  the HEADs and listings that time "until the server has it") go to Garage directly, so that
  they add nothing to a contender's time. *Round trips per file* is a per-file workload's
  elapsed time over files × RTT: what each file costs in waits for the server.
- **Requests per file** (rsync): the requests Garage logged with the contenders' access key
  from the rsync's start until the listing held every file, over the number of files. The
  script's observer uses a second key (`scripts/test-server.sh key`), so its HEADs and
  listings are not counted; requests still in flight after that point (a background
  rename's delete) are not either.
- **Workloads** (contenders interleaved within each run, in an order rotated from run to run,
  each contender, and each 1 GiB write and cold read, started once the server has been idle
  (under 5% of a core) for a second; each
  workload on a fresh mount, so reads are cold and the daemon's peak RSS is that workload's):
  1. `dd if=/dev/shm/random of=MNT/f bs=1M`, timed until a keyed HEAD shows the whole size;
  2. `dd if=MNT/f of=/dev/null bs=1M` (then the first, middle and last MiB are compared with
     the source, untimed);
  3. `fio --name=r --rw=randread --bs=4k --size=SIZE --runtime=T --time_based
     --ioengine=psync --direct=0 --filename=MNT/f`, IOPS;
  4. `rsync -a` of a tree of small files (1–16 KiB, 20 directories), timed until the bucket
     listing holds every file with its size; then the same `rsync -a` again on the same mount
     (a note says if it re-sent files or reset attributes);
  5. `ls -l` of a directory of objects made directly with the raw tool (64 bytes each);
  6. `cp -r` of the small-file tree out to /dev/shm, then `diff -r` against the source.
  A workload that errors, times out or returns wrong data is recorded as FAIL with its reason.
  If a contender's write fails, the raw tool uploads the file (or tree) so that its read
  workloads still run; those cells say so.
- **Memory**: peak RSS is the daemon's `VmHWM` at the end of the workload (and `VmRSS` polled
  every 0.2 s); locked memory is `VmLck`, polled, for ssecfs. s3fs stages file contents in
  temporary files and rclone (cache mode writes) in its cache directory; both are on tmpfs
  here, and that memory is not in their RSS.
- **Plaintext** exists only in /dev/shm (the source data, the copies, rclone's cache, s3fs's
  temporary files; a private tmpfs that goes away with the script's namespace) and is deleted
  at the end; all mounts are undone on exit.
"""


def is_profile(meta):
    """A run through the delaying proxy (--rtt/--rate): it writes its own section."""
    return bool(meta.get("proxy"))


def rtt_text(us):
    us = int(us)
    if us % 1000 == 0:
        return "%d ms" % (us // 1000)
    return "%g ms" % (us / 1000) if us >= 1000 else "%d µs" % us


def profile_title(meta):
    t = "At %s round-trip time" % rtt_text(meta.get("rtt_us", "0"))
    if meta.get("rate"):
        t += ", %s per direction" % meta["rate"]
    return t


def network_line(meta):
    kept, new, direct = meta.get("rtt_kept_ms", "?"), meta.get("rtt_new_ms", "?"), meta.get("rtt_direct_ms", "?")
    if not is_profile(meta):
        return (
            f"- Network: loopback, no added latency; measured with curl (request to first byte, "
            f"median of 5): {kept} ms on a kept-alive connection, {new} ms on a new one"
        )
    return (
        f"- Network: every contender through `{meta['proxy']}` in front of Garage (rclone: the TLS "
        f"front-end forwards to it); measured through it with curl (request to first byte, median "
        f"of 5): **{kept} ms** on a kept-alive connection ({direct} ms direct to the server), "
        f"{new} ms for a new connection's first request (its handshake wait included)"
    )


def run_lines(meta, contenders):
    quick = meta.get("mode") == "quick"
    spent = ", ".join(
        f"{LABELS.get(c, c)} {duration(meta.get('spent_' + c, '0'))}" for c in contenders
    )
    return [
        f"- Command: `{meta.get('command', 'scripts/bench.sh')}`"
        + (" (quick mode: 1 run, smaller sizes; for checking the harness, not for quoting)" if quick else ""),
        network_line(meta),
        f"- Date: {meta.get('date', '?')}; total time {duration(meta.get('total_seconds', '0'))} "
        f"(per contender, all runs: {spent})",
        f"- Sizes: {size_text(int(meta['file_mib']))} file, {int(meta['small_files']):,} small files "
        f"in {meta.get('small_dirs', '20')} directories, {int(meta['list_objects']):,}-object "
        f"listing, fio {meta['fio_seconds']} s; {meta.get('runs', '1')} run(s) each",
    ]


# per-file workloads: what a round trip per file costs shows there
PER_FILE = ["rsync", "rsync-noop", "cp"]


def round_trips_md(meta, info, contenders, cells):
    """Elapsed / (files × RTT) per contender on the per-file workloads; '' without an RTT."""
    rtt = int(meta.get("rtt_us", "0")) / 1e6
    if rtt <= 0:
        return ""
    n = int(meta["small_files"])
    ws = [w for w in PER_FILE if any((c, w) in cells for c in contenders)]
    if not ws:
        return ""
    body = []
    for c in contenders:
        row = [LABELS.get(c, c)]
        for w in ws:
            cell = cells.get((c, w))
            row.append(f"{cell.sec / (n * rtt):.2f}" if cell and cell.ok else "–")
        body.append(row)
    return (
        f"\n\n### Round trips per file (elapsed seconds / ({n:,} files × RTT "
        f"{rtt_text(meta['rtt_us'])}); lower is better)\n\n"
        + table(["contender"] + [info[w][0] for w in ws], body)
    )


def requests_md(meta, contenders, cells):
    """Requests the server received per small file during the rsync, by kind; '' if none
    was counted."""
    n = int(meta.get("small_files", "0"))
    counted = [c for c in contenders if cells.get((c, "rsync")) and cells[(c, "rsync")].requests]
    if not n or not counted:
        return ""
    body = []
    for c in counted:
        req = cells[(c, "rsync")].requests
        body.append([LABELS.get(c, c)] + [f"{x / n:.2f}" for x in req])
    return (
        f"\n\n### Requests per file, rsync -a of {n:,} small files (received by the server from "
        "the contender, from the start until the listing holds every file; copy = CopyObject "
        "and UploadPartCopy; lower is better)\n\n" + table(["contender"] + REQUEST_KINDS, body)
    )


def markdown(meta, rows, png_name):
    """(Markdown for the file, text for stdout, built tables): the main part for a run without
    a latency profile, its own section for one with."""
    info, contenders, workloads, cells = build(meta, rows)
    res = (
        results_md(meta, info, contenders, workloads, cells)
        + round_trips_md(meta, info, contenders, cells)
        + requests_md(meta, contenders, cells)
    )
    fails = failures_md(rows, info)
    chart_md = f"![Benchmark chart]({png_name})"
    if is_profile(meta):
        key = section_key(meta)
        md_lines = [
            f"<!-- bench section {key}: written by scripts/bench.sh, replaced by its next run with "
            "this RTT and rate -->",
            f"## {profile_title(meta)}",
            "",
            *run_lines(meta, contenders),
            f"- Machine: {meta.get('cpu', '?')}, nproc {meta.get('nproc', '?')}; {meta.get('kernel', '?')}; "
            f"{meta.get('ssecfs', '?')}; {meta.get('garage', '?')} (all below, with every run)",
            "",
            res,
            "",
            chart_md,
            "",
            "### Failures",
            "",
            fails,
            "",
            "<details><summary>Machine and every run</summary>",
            "",
            machine_md(meta),
            "",
            runs_md(rows, info),
            "",
            "</details>",
            "",
            f"<!-- end bench section {key} -->",
            "",
        ]
        md = "\n".join(md_lines)
    else:
        head = [
            "# Benchmarks",
            "",
            "Generated by `scripts/bench.sh`; do not edit by hand, run it again.",
            "",
            *run_lines(meta, contenders),
            "",
            "## Machine",
            "",
            machine_md(meta),
            "",
            "## Results",
            "",
        ]
        tail = [
            "",
            chart_md,
            "",
            "## Failures",
            "",
            fails,
            "",
            "## Method",
            "",
            METHOD,
            "<details><summary>Every run</summary>",
            "",
            runs_md(rows, info),
            "",
            "</details>",
            "",
        ]
        md = "\n".join(head) + "\n" + res + "\n" + "\n".join(tail)
    stdout_text = "\n".join(
        [
            f"# {meta.get('command', 'scripts/bench.sh')} — {meta.get('date', '')}, "
            f"total {duration(meta.get('total_seconds', '0'))}",
            network_line(meta),
            "",
            res,
            "",
            "### Failures",
            "",
            fails,
            "",
        ]
    )
    return md, stdout_text, (info, contenders, workloads, cells)


def chart(path, meta, built):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib not available, no chart written", file=sys.stderr)
        return False
    info, contenders, workloads, cells = built
    n = len(workloads) + 1
    cols = 4
    rows_n = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.6 * rows_n), squeeze=False)
    axes = [a for row in axes for a in row]
    xs = list(range(len(contenders)))
    names = [SHORT.get(c, c) for c in contenders]

    def bars(ax, values, title, unit, fails, allow_log=True):
        present = [v for v in values if v]
        top = max(present or [1])
        low = min(present or [1])
        log = allow_log and low > 0 and top / low > 30
        ax.bar(xs, [v or 0 for v in values], color=[COLORS.get(c, "#999") for c in contenders])
        base = low / 3 if log else 0
        for x, v, f in zip(xs, values, fails):
            if f:
                ax.text(x, base if log else top * 0.03, "FAIL", rotation=90, ha="center", va="bottom",
                        color="#d62728", fontsize=9, fontweight="bold")
            elif v is not None:
                ax.text(x, v, fmt_num(v), ha="center", va="bottom", fontsize=7)
        ax.set_title(title + (" — log scale" if log else ""), fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels(names, fontsize=7, rotation=30, ha="right")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(low / 4, top * 3)
        else:
            ax.set_ylim(0, top * 1.15)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)

    for ax, w in zip(axes, workloads):
        vals, fails = [], []
        for c in contenders:
            cell = cells.get((c, w))
            vals.append(cell.thr if cell and cell.ok else None)
            fails.append(bool(cell) and not cell.ok)
        bars(ax, vals, info[w][0], info[w][1] + " (higher is better)", fails)
    ax = axes[len(workloads)]
    rss = []
    for c in contenders:
        m = [cells[(c, w)].rss for w in workloads if (c, w) in cells and cells[(c, w)].ok]
        rss.append(max(m) / 1024 if m else None)
    bars(ax, rss, "peak RSS over all workloads", "MiB (lower is better)", [False] * len(contenders),
         allow_log=False)
    for c_i, c in enumerate(contenders):
        if c.startswith("ssecfs"):
            lk = [cells[(c, w)].lck for w in workloads if (c, w) in cells and cells[(c, w)].ok]
            if lk:
                ax.bar([c_i], [max(lk) / 1024], color="none", edgecolor="black", hatch="//", width=0.5)
    ax.text(0.98, 0.97, "hatched: ssecfs locked (VmLck)", transform=ax.transAxes, ha="right", va="top",
            fontsize=7)
    for ax in axes[n:]:
        ax.axis("off")
    runs = int(meta.get("runs", "1"))
    where = "local Garage"
    if is_profile(meta):
        where += " through a %s RTT link" % rtt_text(meta.get("rtt_us", "0"))
        if meta.get("rate"):
            where += " (%s)" % meta["rate"]
    fig.suptitle(
        f"ssecfs vs raw S3, s3fs, rclone — SSE-C on {where}, {meta.get('nproc', '?')} cores "
        f"({'median of %d runs' % runs if runs > 1 else '1 run'}"
        f"{', quick mode' if meta.get('mode') == 'quick' else ''}; {meta.get('date', '')})",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# The first heading of the hand-measured sections kept at the end of BENCHMARKS.md.
KEPT_FROM = "## Spill tier"

SECTION_RE = re.compile(
    r"<!-- bench section (rtt=(\d+)us rate=(\S+)):.*?-->\n.*?<!-- end bench section \1 -->\n?", re.S
)
STUB = "# Benchmarks\n\nGenerated by `scripts/bench.sh`; do not edit by hand, run it again.\n"


def section_key(meta):
    return "rtt=%dus rate=%s" % (int(meta.get("rtt_us", "0")), meta.get("rate") or "none")


def rate_bps(text):
    """For sorting the sections: the rate in bits/s (no rate sorts last)."""
    m = re.match(r"([0-9.]+)([kmg]?)", text.lower())
    if text == "none" or not m:
        return float("inf")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


def merge(old, md, meta):
    """The new file: the main part (this run's, or the old one's for a profile run), then one
    section per RTT and rate (this run's replacing its own), then the hand-measured sections."""
    kept_at = old.find(KEPT_FROM)
    kept = old[kept_at:] if kept_at >= 0 else ""
    body = old[:kept_at] if kept_at >= 0 else old
    sections = {}
    for m in SECTION_RE.finditer(body):
        sections[m.group(1)] = ((int(m.group(2)), rate_bps(m.group(3))), m.group(0).rstrip("\n") + "\n")
    first = SECTION_RE.search(body)
    main = body[: first.start()] if first else body
    if is_profile(meta):
        key = section_key(meta)
        sections[key] = ((int(meta.get("rtt_us", "0")), rate_bps(meta.get("rate") or "none")), md.rstrip("\n") + "\n")
        if not main.strip():
            main = STUB
    else:
        main = md
    out = main.rstrip("\n") + "\n"
    for _, text in sorted(sections.values(), key=lambda x: x[0]):
        out += "\n" + text
    if kept:
        out += "\n" + kept
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--md", help="write the Markdown report here (a profile run: its section of it)")
    ap.add_argument("--png", help="write the chart here")
    a = ap.parse_args()
    meta, rows = load(a.results, a.meta)
    png_name = os.path.basename(a.png) if a.png else "benchmarks.png"
    md, text, built = markdown(meta, rows, png_name)
    if a.png:
        if not chart(a.png, meta, built):
            md = md.replace(f"![Benchmark chart]({png_name})", "(no chart: matplotlib was not available)")
    if a.md:
        # the other RTTs' sections and those measured by other scripts (e.g. bench-spill.sh)
        # survive a regeneration
        try:
            with open(a.md) as f:
                old = f.read()
        except OSError:
            old = ""
        md = merge(old, md, meta)
        tmp = a.md + ".tmp"
        with open(tmp, "w") as f:
            f.write(md)
        os.replace(tmp, a.md)
    print(text)


if __name__ == "__main__":
    main()
