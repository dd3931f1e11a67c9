//! Command lines as mount(8) and fstab pass them (`mount.ssecfs SPEC DIR -o a,b=c`): the
//! `-o` expansion accepts or refuses, never panics, and what it produces has no `-o` left.
#![no_main]

use std::ffi::OsString;

use libfuzzer_sys::fuzz_target;
use ssecfs::cli::expand_args;

fuzz_target!(|input: (bool, Vec<String>)| {
    let (helper, rest) = input;
    let argv0 = if helper {
        "/sbin/mount.ssecfs"
    } else {
        "ssecfs"
    };
    let mut args: Vec<OsString> = vec![argv0.into()];
    args.extend(rest.into_iter().take(16).map(OsString::from));
    if let Ok((out, kernel)) = expand_args(args) {
        assert!(!out.is_empty());
        for k in &kernel {
            assert!(!k.contains(','), "kernel flag {k:?} not split");
        }
    }
});
