//! Key file contents: any bytes either load as a 32-byte key or are refused with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssecfs::key::CustomerKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = CustomerKey::parse(data, std::path::Path::new("fuzz.key")) {
        assert_eq!(k.raw().len(), 32);
        // a key that loads is shown only by fingerprint
        let shown = format!("{k:?}");
        assert!(!shown.contains(k.base64()), "Debug shows the key");
    }
});
