//! The RFC 3339 time parser and formatter on arbitrary input: no panic, and every accepted
//! time formats back to a time that parses to the same second.
#![no_main]

use aegis_ota::maml::{MAX_TIME_S, MIN_TIME_S, format_time, parse_time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Arbitrary text: parse_time never panics; what it accepts is in range and round-trips
    // (the fraction is truncated, so the re-formatted text may differ).
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(t) = parse_time(text)
    {
        assert!((MIN_TIME_S..=MAX_TIME_S).contains(&t), "{text:?} -> {t}");
        let again = format_time(t);
        assert_eq!(parse_time(&again), Some(t), "{text:?} -> {again:?}");
        if !text.contains('.') {
            assert_eq!(again, text);
        }
    }
    // Arbitrary i64 (the first 8 bytes): format_time never panics and always writes a time
    // that parses back, to the same second where it is in range.
    if let Some(bytes) = data.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        let t = i64::from_le_bytes(bytes);
        let text = format_time(t);
        let back = parse_time(&text);
        assert_eq!(
            back,
            Some(t.clamp(MIN_TIME_S, MAX_TIME_S)),
            "{t} -> {text:?}"
        );
    }
});
