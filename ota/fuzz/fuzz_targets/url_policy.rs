//! The source URL parser on arbitrary bytes. For every URL it accepts: the canonical form
//! (what libavformat receives) uses only the safe characters and parses back to the same
//! URL, and libavformat's own split of it (`av_url_split`, ported in
//! `aegis_config::url::libav_split`, with the buffer sizes of the RTSP/TCP/SRT, RTMP and TLS
//! code that reads the scheme's URLs) yields the host and port the policy checked. A
//! disagreement would be a policy bypass.
#![no_main]

use aegis_config::url::{NetUrl, is_safe_url_byte, libav_split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = NetUrl::parse(text) else {
        return;
    };
    let canonical = url.to_libav(None, None);
    assert!(
        canonical.bytes().all(is_safe_url_byte),
        "unsafe byte in {canonical:?}"
    );
    assert_eq!(
        NetUrl::parse(&canonical).as_ref(),
        Ok(&url),
        "{canonical:?} does not parse back"
    );
    let port = url.port.map_or(-1, i32::from);
    // libavformat's hostname buffers: 1024 bytes in the RTSP demuxer and the TCP and SRT
    // protocols, 256 in RTMP, 200 in the TLS layer (rtsps, rtmps).
    let mut sizes = vec![1024];
    if url.scheme.is_rtmp() {
        sizes.push(256);
    }
    if url.scheme.is_tls() {
        sizes.push(200);
    }
    for size in sizes {
        let split = libav_split(&canonical, size);
        assert_eq!(
            split.hostname,
            url.host_str(),
            "host of {canonical:?} ({size})"
        );
        assert_eq!(split.port, port, "port of {canonical:?}");
        assert_eq!(split.proto, url.scheme.as_str(), "scheme of {canonical:?}");
    }
    // The user information libavformat sees is the percent-encoded user[:password].
    let split = libav_split(&canonical, 1024);
    assert_eq!(split.authorization.is_empty(), !url.has_userinfo());
    // The policy's redacted form never shows the user information or the query.
    let shown = url.redacted();
    assert!(!shown.contains('@') || url.path.contains('@'), "{shown:?}");
    assert!(shown.bytes().all(is_safe_url_byte) || shown.contains("***"));
});
