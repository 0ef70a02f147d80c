//! The source URL policy, tested against what libavformat really does: TCP listeners on
//! 127.0.0.1..=127.0.0.9 (and [::1]) record which address each connection reached, a corpus
//! of tricky URLs goes through the strict parser and the policy's host check (allow-list:
//! 127.0.0.2), and every accepted URL is opened in its canonical form through the agent's
//! live source. The policy's host must be the host that got the connection, every time.
//!
//! To show the corpus has teeth, the same URLs go raw through libavformat (what the agent did
//! before) and are compared with the old policy's naive host extraction: some must connect
//! somewhere else than that host (the attacks the old check missed).
//!
//! Also here: an RTSP server that answers with a 302 redirect gets nothing from the live
//! source on the redirect target (libavformat itself follows the redirect and sends the
//! camera's credentials there).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::url::{Host, NetScheme, NetUrl};
use aegis_hal::StreamId;
use aegis_hal::source::{LiveSource, LiveSourceSettings, VideoSource};

const ALLOWED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The host check of the workflow policy before this change (ota/src/device.rs `url_host`).
fn naive_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    Some(match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    })
}

/// Non-blocking listeners that accept, record the local address and close at once.
struct Listeners {
    all: Vec<TcpListener>,
}

impl Listeners {
    fn bind(port: u16, port2: u16) -> Option<(Listeners, bool)> {
        let mut all = Vec::new();
        for last in 1..=9u8 {
            all.push(TcpListener::bind((Ipv4Addr::new(127, 0, 0, last), port)).ok()?);
        }
        all.push(TcpListener::bind((ALLOWED, port2)).ok()?);
        let v6 = TcpListener::bind(("::1", port)).ok();
        let have_v6 = v6.is_some();
        all.extend(v6);
        for l in &all {
            l.set_nonblocking(true).ok()?;
        }
        Some((Listeners { all }, have_v6))
    }

    fn drain(&self, seen: &mut Vec<SocketAddr>) {
        for l in &self.all {
            while let Ok((stream, _)) = l.accept() {
                if let Ok(local) = stream.local_addr() {
                    seen.push(local);
                }
            }
        }
    }

    /// Runs `f` on a thread and returns every connection it made.
    fn observe(&self, f: impl FnOnce() + Send + 'static) -> Vec<SocketAddr> {
        let mut seen = Vec::new();
        let t = std::thread::spawn(f);
        while !t.is_finished() {
            self.drain(&mut seen);
            std::thread::sleep(Duration::from_millis(1));
        }
        t.join().expect("opener panicked");
        // Every connection it made completed its handshake before its connect() returned,
        // so it is in a listener's queue now: no wait needed.
        self.drain(&mut seen);
        seen
    }
}

/// One connection attempt through the agent's live source; returns its error.
fn open_live_once(url: String) -> String {
    let mut s = LiveSourceSettings::new(url, StreamId::new("diff"));
    s.connect_timeout = Duration::from_secs(3);
    s.backoff_min = Duration::from_secs(60);
    s.backoff_max = Duration::from_secs(60);
    let mut src = LiveSource::new(s);
    let (stopper, health) = (src.stopper(), src.health());
    let t = std::thread::spawn(move || {
        let _ = src.next_frame();
    });
    // A hang guard, not a speed check: the attempt itself is bounded by connect_timeout.
    let t0 = Instant::now();
    while health.snapshot().last_error.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "gave up waiting for the connection attempt to fail"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    stopper.stop();
    t.join().expect("live source panicked");
    health.snapshot().last_error.unwrap_or_default()
}

/// The raw string through libavformat, as the agent opened it before (no canonical form, no
/// protocol whitelist).
fn open_raw(url: &str) {
    aegis_hal::init();
    let mut opts = ffmpeg_next::Dictionary::new();
    if url.starts_with("rtsp") {
        opts.set("rtsp_transport", "tcp");
        opts.set("timeout", "2000000");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let _ = ffmpeg_next::format::input_with_interrupt_and_dictionary(
        url,
        move || Instant::now() > deadline,
        opts,
    );
}

/// Whether `host` resolves without DNS (a numeric address for getaddrinfo, or localhost),
/// so the raw run stays on loopback.
fn resolves_locally(host: &str) -> bool {
    if host.is_empty() || host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Ok(c) = std::ffi::CString::new(host) else {
        return false;
    };
    // SAFETY: getaddrinfo with a NUL-terminated host, no service, zeroed hints and a valid
    // out-pointer; the result list is freed when the call succeeded.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_flags = libc::AI_NUMERICHOST;
        let mut res = std::ptr::null_mut();
        let rc = libc::getaddrinfo(c.as_ptr(), std::ptr::null(), &hints, &mut res);
        if rc == 0 {
            libc::freeaddrinfo(res);
        }
        rc == 0
    }
}

fn default_port(scheme: NetScheme) -> u16 {
    match scheme {
        NetScheme::Rtsp => 554,
        NetScheme::Rtsps => 322,
        NetScheme::Rtmp => 1935,
        NetScheme::Rtmps => 443,
        NetScheme::Srt => 0,
    }
}

/// The corpus: templates with `{A}` (the allowed host), `{E}` (another loopback address),
/// `{P}`/`{Q}` (the listening ports) and `{B}` (2^32 + P), for each scheme.
fn corpus(port: u16, port2: u16) -> Vec<String> {
    let templates = [
        // Plain, and the same with case, userinfo, encodings.
        "{s}://{A}:{P}/cam",
        "{s}://{A}:{Q}/cam",
        "{s}://{A}/cam",
        "{S}://{A}:{P}/cam",
        "{s}://user:pw@{A}:{P}/cam",
        "{s}://user:p%40ss%3Aw%2Frd@{A}:{P}/cam",
        "{s}://us%3Aer:pw@{A}:{P}/cam",
        "{s}://user:pa@ss@{A}:{P}/cam",
        "{s}://user:pa%ss@{A}:{P}/cam",
        "{s}://{A}:{P}/cam?x=1&y=%2F",
        "{s}://{A}:{P}/a@b:c/cam",
        // The authority ends at '?' or '#' for libavformat, not only at '/'.
        "{s}://{E}:{P}?@{A}:{P}/cam",
        "{s}://{E}:{P}?x=@{A}:{P}/cam",
        "{s}://{E}:{P}#@{A}:{P}/cam",
        "{s}://{E}:{P}#x@{A}:{P}/cam",
        "{s}://user:pw@{E}:{P}?@{A}:{P}/cam",
        "{s}://{E}:{Q}?@{A}:{P}/cam",
        "{s}://localhost:{P}?@{A}:{P}/cam",
        "{s}://[::1]:{P}?@{A}:{P}/cam",
        "{s}://[::1]:{P}#@{A}:{P}/cam",
        "{s}://{E}:{P}?{A}:{P}/cam",
        // Several '@': libavformat takes the last one.
        "{s}://u@{E}:{P}@{A}:{P}/cam",
        "{s}://{A}:{P}@{E}:{P}/cam",
        "{s}://a@b@c@{A}:{P}/cam",
        "{s}://{E}:{P}%40{A}:{P}/cam",
        "{s}://{E}:{P}\\@{A}:{P}/cam",
        "{s}://{E}:{P} @{A}:{P}/cam",
        // Brackets.
        "{s}://[{A}]:{P}/cam",
        "{s}://[::ffff:{A}]:{P}/cam",
        "{s}://[::1]:{P}/cam",
        "{s}://[::1]:{P}@{A}:{P}/cam",
        "{s}://[{E}]@{A}:{P}/cam",
        "{s}://[{A}:{P}/cam",
        "{s}://{A}]:{P}/cam",
        "{s}://[::1%25lo]:{P}/cam",
        "{s}://[::1]x:{P}/cam",
        // Ports with junk: libavformat atoi()s whatever follows the first ':'.
        "{s}://{A}:{P}junk/cam",
        "{s}://{A}:+{P}/cam",
        "{s}://{A}: {P}/cam",
        "{s}://{A}:0{P}/cam",
        "{s}://{A}:{B}/cam",
        "{s}://{A}:{P}:{Q}/cam",
        "{s}://{A}:/cam",
        "{s}://{A}:0/cam",
        "{s}://{A}:65536/cam",
        // Numeric forms getaddrinfo accepts.
        "{s}://127.2:{P}/cam",
        "{s}://127.0.2:{P}/cam",
        "{s}://2130706434:{P}/cam",
        "{s}://0x7f000002:{P}/cam",
        "{s}://0x7f.0.0.2:{P}/cam",
        "{s}://0177.0.0.2:{P}/cam",
        "{s}://127.000.000.002:{P}/cam",
        "{s}://127.0.0.02:{P}/cam",
        "{s}://127.0.0.2.:{P}/cam",
        "{s}://127.0.0.3.2:{P}/cam",
        "{s}://2130706435:{P}/cam",
        // Percent-encoding, white space, control characters, backslashes, slashes.
        "{s}://127.0.0.%32:{P}/cam",
        "{s}://%31%32%37.0.0.2:{P}/cam",
        "{s}://{A}:{P}/c%zzam",
        "{s}://{A}:{P}/c am",
        "{s}://{A}:{P}/cam\t",
        "{s}://{A} :{P}/cam",
        "{s}://{A}\\:{P}/cam",
        "{s}://{A}:{P}\\cam",
        "{s}:{A}:{P}/cam",
        "{s}:/{A}:{P}/cam",
        "{s}:///{A}:{P}/cam",
        "{s}:////{E}:{P}/cam",
        // Long names and userinfo (libavformat's fixed buffers).
        "{s}://{LONGUSER}@{A}:{P}/cam",
        "{s}://{LONGHOST}:{P}/cam",
        "{s}://{A}:{P}/{LONGPATH}",
        // Query options.
        "{s}://{A}:{P}/cam?tcp",
        "{s}://{A}:{P}/cam?udp&x=1",
        "{s}://{A}:{P}/cam?passphrase=x",
    ];
    let mut out = Vec::new();
    // The TLS schemes too: their whitelists must let libavformat reach the host (the
    // listeners speak no TLS, so the handshake then fails).
    for scheme in ["rtsp", "rtmp", "rtsps", "rtmps"] {
        for t in templates {
            let url = t
                .replace("{s}", scheme)
                .replace("{S}", &scheme.to_ascii_uppercase())
                .replace("{A}", "127.0.0.2")
                .replace("{E}", "127.0.0.3")
                .replace("{P}", &port.to_string())
                .replace("{Q}", &port2.to_string())
                .replace("{B}", &(u64::from(port) + (1u64 << 32)).to_string())
                .replace("{LONGUSER}", &"u".repeat(1100))
                .replace("{LONGHOST}", &format!("{}.127.0.0.2", "a".repeat(1100)))
                .replace("{LONGPATH}", &"p".repeat(1100));
            out.push(url);
        }
    }
    // With a user name in front of every trick that involves another host.
    let with_user: Vec<String> = out
        .iter()
        .filter(|u| u.contains("127.0.0.3"))
        .map(|u| u.replacen("://", "://viewer:secret@", 1))
        .collect();
    out.extend(with_user);
    out
}

#[test]
fn the_policy_host_is_where_libav_connects() {
    common::with_hang_guard(
        "the_policy_host_is_where_libav_connects",
        Duration::from_secs(240),
        the_policy_host_is_where_libav_connects_body,
    );
}

fn the_policy_host_is_where_libav_connects_body() {
    aegis_hal::init();
    let t0 = Instant::now();
    let (listeners, have_v6, port, port2) = (0..50)
        .find_map(|_| {
            let (p, q) = (common::free_port(), common::free_port());
            (p != q)
                .then(|| Listeners::bind(p, q))
                .flatten()
                .map(|(l, v6)| (l, v6, p, q))
        })
        .expect("no free port on 127.0.0.1..=9");
    let corpus = corpus(port, port2);
    let (mut accepted, mut refused, mut connected, mut raw_runs) = (0, 0, 0, 0);
    let mut attacks: Vec<(String, String, SocketAddr)> = Vec::new();
    for url in &corpus {
        // The new code: strict parse, the policy's host check, then the canonical string
        // through the agent's live source.
        match NetUrl::parse(url) {
            Ok(parsed) if parsed.host == Host::Ipv4(ALLOWED) => {
                accepted += 1;
                let canonical = parsed.to_libav(None, None);
                let expected = SocketAddr::new(
                    IpAddr::V4(ALLOWED),
                    parsed.port.unwrap_or(default_port(parsed.scheme)),
                );
                let c = canonical.clone();
                let seen = listeners.observe(move || {
                    open_live_once(c);
                });
                assert!(
                    seen.iter().all(|a| *a == expected),
                    "{url} (canonical {canonical}) passed the policy as {expected} but \
                     libavformat connected to {seen:?}"
                );
                if expected.port() == port || expected.port() == port2 {
                    assert!(
                        !seen.is_empty(),
                        "{canonical}: no connection reached {expected}"
                    );
                    connected += 1;
                }
            }
            Ok(_) | Err(_) => refused += 1,
        }
        // The old code: the naive host, and the raw string through libavformat.
        if naive_host(url) != Some("127.0.0.2") {
            continue;
        }
        let libav_host = aegis_config::url::libav_split(url, 1024).hostname;
        if !resolves_locally(&libav_host) || (libav_host.contains(':') && !have_v6) {
            continue;
        }
        raw_runs += 1;
        let u = url.clone();
        let seen = listeners.observe(move || open_raw(&u));
        if let Some(elsewhere) = seen.iter().find(|a| a.ip() != IpAddr::V4(ALLOWED)) {
            attacks.push((url.clone(), libav_host, *elsewhere));
        }
    }
    println!(
        "url policy corpus: {} URLs, {accepted} accepted ({connected} reached 127.0.0.2 on a \
         listening port), {refused} refused; old check: {raw_runs} raw URLs the naive host \
         check passed as 127.0.0.2 opened through libavformat, {} of them connected elsewhere \
         (attacks the old check missed); IPv6 listener: {have_v6}; {:.1} s",
        corpus.len(),
        attacks.len(),
        t0.elapsed().as_secs_f64()
    );
    for (url, host, addr) in &attacks {
        println!("  missed by the old check: {url}  -> libav host {host:?}, connected to {addr}");
    }
    assert!(corpus.len() >= 300, "corpus of {}", corpus.len());
    assert!(
        accepted >= 10 && connected >= 10,
        "{accepted} accepted, {connected} connected"
    );
    assert!(
        attacks.len() >= 3,
        "the corpus shows only {} attacks on the old check",
        attacks.len()
    );
    // Every attack URL is refused now, or opens the allowed host (checked above).
    for (url, _, _) in &attacks {
        if let Ok(u) = NetUrl::parse(url) {
            assert_ne!(u.host, Host::Ipv4(ALLOWED), "{url} is accepted");
        }
    }
}

/// A one-shot RTSP peer on `listener`: answers every request with `reply(request, cseq)`
/// until the client closes, and records everything it received.
fn rtsp_peer(
    listener: TcpListener,
    reply: impl Fn(&str, usize) -> String + Send + 'static,
) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let out = log.clone();
    std::thread::spawn(move || {
        while let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut got = String::new();
            let mut buf = [0u8; 4096];
            let mut answered = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
                while got.matches("\r\n\r\n").count() > answered {
                    answered += 1;
                    let request = got.split("\r\n\r\n").nth(answered - 1).unwrap_or_default();
                    let cseq = request
                        .lines()
                        .find_map(|l| l.strip_prefix("CSeq: "))
                        .and_then(|c| c.trim().parse().ok())
                        .unwrap_or(answered);
                    let _ = s.write_all(reply(request, cseq).as_bytes());
                }
            }
            out.lock().unwrap().push(got);
        }
    });
    log
}

/// Marks the end of a connection's log (see [`logged`]); never an RTSP request.
const MARKER: &str = "end-of-test-marker";

/// Everything the [`rtsp_peer`] on `addr` logged before now: connects once more itself and
/// waits until that marker connection is logged. The peer takes connections one at a time in
/// the order they arrived, so every earlier one is then in the log: a positive signal, where
/// a sleep would only guess. A hang guard bounds the wait.
fn logged(addr: (&str, u16), log: &Arc<Mutex<Vec<String>>>) -> String {
    let mut marker = std::net::TcpStream::connect(addr).expect("marker connection");
    marker.write_all(MARKER.as_bytes()).expect("marker");
    drop(marker);
    let t0 = Instant::now();
    loop {
        {
            let entries = log.lock().unwrap();
            if let Some(at) = entries.iter().position(|e| e == MARKER) {
                return entries[..at].concat();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "gave up waiting for the peer on {addr:?} to log its connections"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn rtsp_redirects_are_not_followed() {
    common::with_hang_guard(
        "rtsp_redirects_are_not_followed",
        Duration::from_secs(120),
        rtsp_redirects_are_not_followed_body,
    );
}

fn rtsp_redirects_are_not_followed_body() {
    aegis_hal::init();
    for (user, old_code) in [(true, false), (true, true), (false, false)] {
        let camera = TcpListener::bind("127.0.0.2:0").unwrap();
        let target = TcpListener::bind("127.0.0.3:0").unwrap();
        let (cam_port, target_port) = (
            camera.local_addr().unwrap().port(),
            target.local_addr().unwrap().port(),
        );
        let location = format!("rtsp://127.0.0.3:{target_port}/elsewhere");
        let redirect = location.clone();
        let camera_log = rtsp_peer(camera, move |_, cseq| {
            format!("RTSP/1.0 302 Found\r\nCSeq: {cseq}\r\nLocation: {redirect}\r\n\r\n")
        });
        // The redirect target asks for credentials.
        let target_log = rtsp_peer(target, |_, cseq| {
            format!(
                "RTSP/1.0 401 Unauthorized\r\nCSeq: {cseq}\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\r\n"
            )
        });
        let creds = if user { "admin:s3cret@" } else { "" };
        let url = format!("rtsp://{creds}127.0.0.2:{cam_port}/cam");
        let error = if old_code {
            open_raw(&url);
            String::new()
        } else {
            assert_eq!(NetUrl::parse(&url).unwrap().to_libav(None, None), url);
            open_live_once(url.clone())
        };
        let camera_got = logged(("127.0.0.2", cam_port), &camera_log);
        let target_got = logged(("127.0.0.3", target_port), &target_log);
        assert!(camera_got.starts_with("OPTIONS "), "{camera_got:?}");
        if old_code {
            // What libavformat does on its own: follows the redirect and hands the camera's
            // credentials to the new host.
            assert!(
                target_got.contains("OPTIONS rtsp://127.0.0.3"),
                "{target_got:?}"
            );
            assert!(
                target_got.contains("Authorization: Basic YWRtaW46czNjcmV0"),
                "{target_got:?}"
            );
        } else {
            assert_eq!(target_got, "", "the redirect target received a request");
            assert!(
                error.contains(&format!(
                    "redirected to rtsp://127.0.0.3:{target_port}/elsewhere"
                )) && error.contains("redirects are not followed"),
                "{error}"
            );
            assert!(!error.contains("s3cret"), "{error}");
        }
    }
    // A redirect whose Location carries credentials is reported without them.
    let camera = TcpListener::bind("127.0.0.2:0").unwrap();
    let cam_port = camera.local_addr().unwrap().port();
    let target = TcpListener::bind("127.0.0.3:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let target_log = rtsp_peer(target, |_, cseq| {
        format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\r\n")
    });
    let _log = rtsp_peer(camera, move |_, cseq| {
        format!(
            "RTSP/1.0 301 Moved\r\nCSeq: {cseq}\r\nLocation: rtsp://u:leak@127.0.0.3:{target_port}/x?token=t0k\r\n\r\n"
        )
    });
    let error = open_live_once(format!("rtsp://127.0.0.2:{cam_port}/cam"));
    assert!(
        error.contains(&format!(
            "redirected to rtsp://127.0.0.3:{target_port}/x?***"
        )),
        "{error}"
    );
    assert!(!error.contains("leak") && !error.contains("t0k"), "{error}");
    assert_eq!(logged(("127.0.0.3", target_port), &target_log), "");
}
