//! Randomized tests of the parsers that take user input: key files, sizes and the `-o` list
//! of mount(8). The same properties as the cargo-fuzz targets in `fuzz/` (which need an
//! instrumented build, see scripts/fuzz.sh), cheap enough for every `cargo test`; no server.

use std::ffi::OsString;
use std::path::Path;

use base64::Engine;
use proptest::prelude::*;
use ssecfs::cli::{expand_args, parse_size};
use ssecfs::key::CustomerKey;

fn args(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_key_file_loads_or_is_refused(data in proptest::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(k) = CustomerKey::parse(&data, Path::new("k")) {
            prop_assert_eq!(k.raw().len(), 32);
            let shown = format!("{:?}", k);
            prop_assert!(!shown.contains(k.base64()), "Debug shows the key");
        }
    }

    #[test]
    fn a_key_loads_raw_or_as_base64_with_trailing_whitespace(
        raw in any::<[u8; 32]>(),
        tail in "[ \t\r\n]{0,3}",
    ) {
        let k = CustomerKey::parse(&raw, Path::new("k")).unwrap();
        prop_assert_eq!(k.raw(), &raw[..]);
        let text = base64::engine::general_purpose::STANDARD.encode(raw) + &tail;
        let k = CustomerKey::parse(text.as_bytes(), Path::new("k")).unwrap();
        prop_assert_eq!(k.raw(), &raw[..]);
    }

    #[test]
    fn any_size_parses_or_is_refused(s in "\\PC{0,24}") {
        if let Ok(n) = parse_size(&s) {
            prop_assert!(n > 0);
            prop_assert_eq!(parse_size(&s.to_ascii_uppercase()).ok(), Some(n));
        }
    }

    #[test]
    fn sizes_with_suffixes_multiply(n in 1u64..1_000_000, unit in 0usize..5, form in 0usize..3) {
        let (suffix, mult) = [("", 1u64), ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40)][unit];
        let text = match (suffix, form) {
            ("", _) | (_, 0) => format!("{n}{suffix}"),
            (_, 1) => format!("{n}{}", suffix.to_uppercase()),
            _ => format!("{n}{}iB", suffix.to_uppercase()),
        };
        prop_assert_eq!(parse_size(&text).ok(), n.checked_mul(mult));
    }

    #[test]
    fn any_option_list_expands_or_is_refused(
        opts in "[a-z_=,.0-9 -]{0,60}",
        helper in any::<bool>(),
        attached in any::<bool>(),
    ) {
        let argv0 = if helper { "/sbin/mount.ssecfs" } else { "ssecfs" };
        let mut v = vec![argv0, "bucket", "/mnt"];
        let joined = format!("-o{opts}");
        if attached {
            v.push(&joined);
        } else {
            v.extend(["-o", opts.as_str()]);
        }
        if let Ok((out, kernel)) = expand_args(args(&v)) {
            prop_assert!(out.iter().all(|a| a != "-o"));
            prop_assert!(kernel.iter().all(|k| !k.contains(',')));
        }
    }
}

#[test]
fn the_mount8_form_expands_known_options() {
    let (out, kernel) = expand_args(args(&[
        "/sbin/mount.ssecfs",
        "bucket:prefix",
        "/mnt",
        "-n",
        "-o",
        "ro,nosuid,_netdev,attr_ttl=5,x-systemd.automount",
    ]))
    .unwrap();
    let out: Vec<String> = out.iter().map(|a| a.to_string_lossy().into()).collect();
    assert!(out.contains(&"--read-only".to_string()), "{out:?}");
    assert!(out.contains(&"--attr-ttl=5".to_string()), "{out:?}");
    assert!(!out.contains(&"-n".to_string()), "{out:?}");
    assert_eq!(kernel, vec!["nosuid".to_string()]);
}
