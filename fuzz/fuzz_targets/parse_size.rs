//! Sizes as given to --cache-size and friends: parse or refuse, never panic; a parsed size is
//! positive and the same however the input is cased or padded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssecfs::cli::parse_size;

fuzz_target!(|s: &str| {
    if let Ok(n) = parse_size(s) {
        assert!(n > 0);
        assert_eq!(parse_size(&s.to_ascii_uppercase()).ok(), Some(n));
        assert_eq!(parse_size(&format!(" {s} ")).ok(), Some(n));
    }
});
