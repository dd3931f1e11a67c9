//! End-to-end, adversarial: the custody promises of SECURITY.md tried as an attacker or a
//! careless user would — log filters aimed at the HTTP stack, an http:// endpoint from the
//! AWS config file, objects planted by another client.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Every form of the key a log line could carry.
fn key_forms(k: &Key) -> Vec<(&'static str, String)> {
    let hex: String = k.bytes().iter().map(|b| format!("{b:02x}")).collect();
    let debug = format!("{:?}", k.bytes());
    vec![
        ("base64", k.base64()),
        ("MD5", k.md5_base64()),
        ("hex", hex),
        ("byte list", debug[1..debug.len() - 1].to_owned()),
    ]
}

/// Whatever `SSECFS_LOG` asks for — module-level directives under the SDK's orchestrator and
/// signer, the HTTP stack, everything at trace — the key reaches no log line. The workload
/// makes every kind of keyed request: PUT, GET, HEAD, CopyObject (rename, chmod, with the
/// copy-source trio), multipart with UploadPartCopy (an edit of a big file).
#[test]
fn no_log_filter_gets_the_key_into_the_log() {
    let filters = [
        "aws_smithy_runtime::client::orchestrator=trace,aws_sigv4::http_request=trace",
        "trace",
        "aws_sigv4=trace,aws_sigv4::http_request::sign=trace,aws_smithy_runtime_api=trace",
        "hyper=trace,hyper_util=trace,h2=trace,rustls=trace,aws_smithy_http_client=trace",
        "aws_sdk_s3=trace,aws_runtime=trace,aws_smithy_runtime::client::http=trace,ssecfs=trace",
    ];
    for filter in filters {
        let b = TestBucket::new();
        let mut m = Mount::with_log_filter(&b, filter, &["--log-level", "trace"]);
        keyed_workload(&m, b"hello", &random_bytes(12 << 20));
        let _ = fs::read(m.path("b")).unwrap();
        m.unmount();
        let log = m.log();
        assert!(
            log.lines().count() > 5,
            "{filter}: the log was written:\n{log}"
        );
        for (form, value) in key_forms(m.key()) {
            if let Some(i) = log.find(&value) {
                let from = log[..i].rfind('\n').map_or(0, |n| n + 1);
                panic!(
                    "SSECFS_LOG={filter}: the key ({form}) is in the log: {}",
                    &log[from..(i + value.len()).min(log.len())]
                );
            }
        }
    }
}

/// An `endpoint_url = http://…` in the AWS config file (the profile's, or its `[services]`
/// section's) is refused like `--endpoint http://…` without `--allow-http`, and the refusal
/// names where the URL came from.
#[test]
fn an_http_endpoint_from_the_aws_config_file_is_refused() {
    let dir = tempdir("aws-config");
    let key = dir.path().join("key");
    Key::random().write_file(&key);
    let http = endpoint().replace("https://", "http://");
    let config = dir.path().join("config");
    let profile = format!("[default]\nregion = {}\nendpoint_url = {http}\n", region());
    let services = format!(
        "[default]\nregion = {}\nservices = s3-local\n\n[services s3-local]\ns3 =\n  endpoint_url = {http}\n",
        region()
    );
    for (what, text) in [("profile", profile), ("services section", services)] {
        fs::write(&config, text).unwrap();
        let out = output_of(
            Command::new(SSECFS)
                .env_remove("AWS_ENDPOINT_URL")
                .env_remove("AWS_ENDPOINT_URL_S3")
                .env("AWS_CONFIG_FILE", &config)
                .args(["check", "--key-file"])
                .arg(&key)
                .arg("some-bucket"),
            Duration::from_secs(60),
        );
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: check over http succeeded");
        assert!(
            msg.contains("http://") && msg.contains("--allow-http"),
            "{what}: {msg}"
        );
        assert!(
            msg.contains("AWS config"),
            "{what}: the refusal names the config file: {msg}"
        );
    }
}

/// Another client with write access to the bucket and no key plants objects: one stored
/// without SSE-C (with a setuid mode in its metadata), and a keyed-looking name with a
/// setuid mode. The plain one is listed but not served (EACCES) and cannot be adopted by a
/// rename or chmod; no mode from metadata carries setuid/setgid/sticky bits. `--allow-plain`
/// serves it read-only, for a migration.
#[test]
fn planted_plain_objects_and_setuid_modes_are_refused() {
    use std::os::unix::fs::MetadataExt;
    let b = TestBucket::new();
    let key = Key::random();
    let setuid = (libc::S_IFREG | 0o4755).to_string();
    put(
        b.name(),
        "planted",
        b"#!/bin/sh\necho owned\n",
        None,
        &[("mode", &setuid)],
    );
    put_with_key(b.name(), "keyed-suid", b"x", &key, &[("mode", &setuid)]);
    let m = Mount::with_key(&b, &key, &[]);
    for name in ["planted", "keyed-suid"] {
        let mode = fs::metadata(m.path(name)).unwrap().mode();
        assert_eq!(mode, libc::S_IFREG | 0o755, "{name}: {mode:o}");
    }
    let e = fs::read(m.path("planted")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    let e = fs::rename(m.path("planted"), m.path("adopted")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    assert!(
        sh_output(&format!("chmod 644 '{}'", m.path("planted").display()))
            .status
            .code()
            .is_some_and(|c| c != 0)
    );
    assert_eq!(fs::read(m.path("keyed-suid")).unwrap(), b"x");
    assert!(
        m.log().contains("planted") && m.log().contains("--allow-plain"),
        "one log line names the object and how to proceed:\n{}",
        m.log()
    );
    // it is still the planter's plain object, not sealed under our key by the attempts
    assert_eq!(
        get_without_key(b.name(), "planted").unwrap(),
        b"#!/bin/sh\necho owned\n"
    );
    drop(m);

    let m = Mount::with_key(&b, &key, &["--allow-plain"]);
    assert_eq!(
        fs::read(m.path("planted")).unwrap(),
        b"#!/bin/sh\necho owned\n"
    );
    let e = fs::OpenOptions::new()
        .append(true)
        .open(m.path("planted"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
}

/// A server (or proxy) that ignores SSE-C stores what it is sent in the clear and says
/// nothing: its answers lack the SSE-C echo. `check` and a read-write mount refuse it, with a
/// message that says so; a write through a live mount that meets it fails (EIO) instead of
/// reporting success.
#[test]
fn a_server_that_ignores_sse_c_is_refused() {
    use common::faultproxy::{FaultProxy, Faults};
    let b = TestBucket::new();
    let key = Key::random();
    let proxy = FaultProxy::start(&endpoint(), 3, Faults::default());
    let mut m = Mount::through(b.name(), &key, &proxy.endpoint(), &[]);
    proxy.hide_sse_c(true);
    // (fs::write ignores the error of close(): fsync reports the failed upload)
    let mut f = fs::File::create(m.path("f")).unwrap();
    std::io::Write::write_all(&mut f, b"must not be stored as if encrypted").unwrap();
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(f);
    // the unmount cannot store it either, and says so in its exit status
    let stopped = m.stop().expect("the mount was running");
    assert!(
        !stopped.clean(),
        "unmount must report the file it could not store"
    );

    let dir = tempdir("ignores-sse-c");
    let key_file = dir.path().join("key");
    key.write_file(&key_file);
    let out = output_of(
        Command::new(SSECFS)
            .args(["check", "--allow-http", "--endpoint", &proxy.endpoint()])
            .arg("--key-file")
            .arg(&key_file)
            .arg(b.name()),
        Duration::from_secs(120),
    );
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check passed a server that ignores SSE-C"
    );
    assert!(msg.contains("did not confirm SSE-C"), "{msg}");
    let Err(err) = Mount::try_through_endpoint(b.name(), &key, &proxy.endpoint(), &[]) else {
        panic!("a mount on a server that ignores SSE-C came up");
    };
    assert!(err.contains("did not confirm SSE-C"), "{err}");
}

/// Another client with the key puts objects whose names are hostile to a listing or to a
/// path: control characters (which XML 1.0 cannot carry unless the listing is URL-encoded),
/// and names no path can hold (an empty component, `.`, `..`, a component over 255 bytes).
/// The mount still comes up, the directory still lists: its neighbours and the names a Linux
/// path can hold are served with their content, the others are skipped with one log line
/// each, and a remount works.
#[test]
fn a_bucket_with_control_character_names_still_mounts_and_lists() {
    let b = TestBucket::new();
    let key = Key::random();
    let long = "L".repeat(256);
    let holdable = ["ok", "a\x01b", "tab\there", "new\nline"];
    let body = |name: &str| format!("the content of {name:?}").into_bytes();
    for name in holdable {
        put_with_key(b.name(), &format!("d/{name}"), &body(name), &key, &[]);
    }
    // what is skipped, as the listing that meets it names it (a directory for a prefix)
    let long_key = format!("d/{long}");
    let unholdable = [
        ("d/x//y", "d/x//"),
        ("d//e", "d//"),
        ("d/./z", "d/./"),
        ("d/../up", "d/../"),
        (long_key.as_str(), long_key.as_str()),
    ];
    for (object, _) in unholdable {
        put_with_key(b.name(), object, &body(object), &key, &[]);
    }

    let mut m = Mount::with_key(&b, &key, &[]);
    let names = |m: &Mount, dir: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(m.path(dir))
            .unwrap_or_else(|e| panic!("read_dir {dir}: {e}; log:\n{}", m.log()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let mut expected: Vec<String> = holdable.iter().map(|s| s.to_string()).collect();
    expected.push("x".into()); // d/x//y: `x` is a directory a path can hold
    expected.sort();
    assert_eq!(names(&m, "d"), expected);
    assert_eq!(
        names(&m, "d/x"),
        Vec::<String>::new(),
        "d/x//y has an empty name"
    );
    assert_eq!(names(&m, ""), ["d"]);
    for name in holdable {
        let got = fs::read(m.path("d").join(name))
            .unwrap_or_else(|e| panic!("read d/{name:?}: {e}; log:\n{}", m.log()));
        assert_eq!(got, body(name), "d/{name:?}");
    }
    // a second listing of each directory names nothing again
    let _ = (names(&m, "d"), names(&m, "d/x"));
    let log = m.log();
    for (object, skipped) in unholdable {
        let named = format!("{skipped:?}");
        let lines = log
            .lines()
            .filter(|l| l.contains(&named) && l.contains("skipped"))
            .count();
        assert_eq!(
            lines, 1,
            "{object:?}: one log line names {named} as skipped; log:\n{log}"
        );
    }

    m.remount();
    assert_eq!(names(&m, "d"), expected);
    assert_eq!(
        fs::read(m.path("d/a\x01b")).unwrap(),
        body("a\x01b"),
        "after the remount"
    );
}

/// A directory read fetches its small files whole with the primary key (one GET each). A
/// plain object and one sealed under another key meet that GET refused: each is still
/// recognised (HEAD, as before), listed, and its read refused (EACCES), while the mount's
/// own file reads back.
#[test]
fn listed_small_objects_without_our_key_are_recognised_not_errors() {
    use std::os::unix::fs::MetadataExt;
    let b = TestBucket::new();
    let key = Key::random();
    let other = Key::random();
    put(b.name(), "d/plain", b"planted", None, &[]);
    put_with_key(b.name(), "d/other", b"another key's", &other, &[]);
    put_with_key(b.name(), "d/mine", b"mine", &key, &[("mode", "33152")]);
    let m = Mount::with_key(&b, &key, &[]);
    let mut names: Vec<String> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["mine", "other", "plain"]);
    assert_eq!(fs::metadata(m.path("d/plain")).unwrap().len(), 7);
    let e = fs::read(m.path("d/plain")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "plain: {e}");
    let e = fs::metadata(m.path("d/other")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "other key: {e}");
    assert_eq!(fs::metadata(m.path("d/mine")).unwrap().mode(), 33152);
    assert_eq!(fs::read(m.path("d/mine")).unwrap(), b"mine");
}
