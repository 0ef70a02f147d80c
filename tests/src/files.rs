//! Test servers: a static file server with `Range` support that can break transfers, and
//! a watcher of a device's receipts topic.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A static file server on 127.0.0.1 that honours `Range: bytes=N-` and, while `cut` is
/// above zero, breaks the connection after that many body bytes (once per request, counting
/// down `cuts`). Counts requests and the ranges asked for.
pub struct Files {
    /// Its port.
    pub port: u16,
    /// Requests answered.
    pub requests: Arc<AtomicUsize>,
    /// Requests with a `Range` header.
    pub ranged: Arc<AtomicUsize>,
    /// Break a response after this many body bytes (0: never)...
    pub cut: Arc<AtomicU64>,
    /// ...this many more times.
    pub cuts: Arc<AtomicUsize>,
}

impl Files {
    /// Serves the files under `root`.
    pub fn serve(root: PathBuf) -> Files {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let f = Files {
            port,
            requests: Arc::default(),
            ranged: Arc::default(),
            cut: Arc::default(),
            cuts: Arc::default(),
        };
        let (requests, ranged, cut, cuts) = (
            f.requests.clone(),
            f.ranged.clone(),
            f.cut.clone(),
            f.cuts.clone(),
        );
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (root, requests, ranged, cut, cuts) = (
                    root.clone(),
                    requests.clone(),
                    ranged.clone(),
                    cut.clone(),
                    cuts.clone(),
                );
                std::thread::spawn(move || {
                    let _ = answer(s, &root, &requests, &ranged, &cut, &cuts);
                });
            }
        });
        f
    }

    /// `http://127.0.0.1:PORT/<dir>`.
    pub fn url(&self, dir: &str) -> String {
        format!("http://127.0.0.1:{}/{dir}", self.port)
    }
}

fn answer(
    s: TcpStream,
    root: &Path,
    requests: &AtomicUsize,
    ranged: &AtomicUsize,
    cut: &AtomicU64,
    cuts: &AtomicUsize,
) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut from = 0u64;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
            ranged.fetch_add(1, Ordering::SeqCst);
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let mut s = s;
    let Ok(data) = std::fs::read(root.join(path.trim_start_matches('/'))) else {
        return s.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let body = &data[(from as usize).min(data.len())..];
    let head = if from > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len(),
            data.len() - 1,
            data.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    };
    s.write_all(head.as_bytes())?;
    let limit = cut.load(Ordering::SeqCst);
    if limit > 0 && (limit as usize) < body.len() && cuts.load(Ordering::SeqCst) > 0 {
        cuts.fetch_sub(1, Ordering::SeqCst);
        s.write_all(&body[..limit as usize])?;
        return s.shutdown(std::net::Shutdown::Both);
    }
    s.write_all(body)
}

/// Signed messages of one `type` on a device's receipts topic, collected from a
/// `mosquitto_sub` started now.
pub struct Receipts {
    child: Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Receipts {
    /// Watches `aegis/v1/<device>/receipts` for JSON receipts whose `type` is `kind`.
    pub fn watch(port: u16, device: &str, kind: &str) -> Receipts {
        let mut child = Command::new("/usr/bin/mosquitto_sub")
            .args([
                "-p",
                &port.to_string(),
                "-t",
                &format!("aegis/v1/{device}/receipts"),
                "-N",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let l2 = lines.clone();
        let start = format!("{{\"type\":\"{kind}\"");
        std::thread::spawn(move || {
            // Each receipt is JSON on one line, then its signature block: split on the
            // JSON line's start.
            let mut text = String::new();
            let mut r = BufReader::new(out);
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                let parts: Vec<&str> = text.split(start.as_str()).collect();
                let mut l = l2.lock().unwrap();
                l.clear();
                for p in parts.iter().skip(1) {
                    // Another kind's receipt may follow: cut at the next JSON line.
                    let p = p.split("\n{\"type\"").next().unwrap_or(p);
                    l.push(format!("{start}{p}"));
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        Receipts { child, lines }
    }

    /// Every receipt so far that `verify` accepts.
    pub fn verified<T>(&self, verify: impl Fn(&[u8]) -> Option<T>) -> Vec<T> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|t| verify(t.trim_end().as_bytes()))
            .collect()
    }

    /// The `n`-th receipt (0-based), once `verify` accepts it (90 s at most).
    pub fn nth<T>(&self, n: usize, verify: impl Fn(&[u8]) -> Option<T>) -> T {
        let t0 = Instant::now();
        loop {
            let text = self.lines.lock().unwrap().get(n).cloned();
            if let Some(t) = text
                && let Some(r) = verify(t.trim_end().as_bytes())
            {
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "no receipt #{n}; got {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many receipts of the kind arrived (verified or not).
    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }
}

impl Drop for Receipts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
