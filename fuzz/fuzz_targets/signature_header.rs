//! `X-Flowd-Signature`: the input's first line is the header value, the rest the body. The
//! header is parsed at a fixed "now" (and at the ends of the clock), and a header that parses is
//! verified against the body with the secret `secret`. A header signed correctly for the body
//! must parse and verify.
#![no_main]

use flowd::triggers::http::{parse_signature, verify_signature};
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

/// The clock the seeds are signed for (`t=1700000000`).
const NOW: i64 = 1_700_000_000;
const SECRET: &str = "secret";

fuzz_target!(|data: &[u8]| {
    let (header_bytes, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(header) = std::str::from_utf8(header_bytes) else {
        return;
    };
    for now in [NOW, 0, i64::MIN, i64::MAX] {
        if let Ok(parsed) = parse_signature(header, now) {
            let _ = verify_signature(&parsed, body, SECRET);
        }
    }

    // A correct signature of this body, at a timestamp taken from the input, always verifies.
    let skew = i64::from(data.first().copied().unwrap_or(0)) - 128;
    let timestamp = NOW + skew;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let good = hex::encode(mac.finalize().into_bytes());
    let signed = format!("t={timestamp},v1={good}");
    let parsed = parse_signature(&signed, NOW).expect("a well-formed header parses");
    verify_signature(&parsed, body, SECRET).expect("a correct signature verifies");
});
