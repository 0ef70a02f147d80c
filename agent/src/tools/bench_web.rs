//! `aegis bench web`: the technician page against a real agent process (this binary,
//! `aegis run`) playing a 30 fps clip through a recorder — page load times with the pipeline
//! running, and the live view's cost: the agent's CPU with 0, 1 and 4 live viewers
//! (interleaved rounds, ratios against no viewer in the same run), bytes per second per
//! viewer, and the delivery latency (the frame's decode time stamped in its metadata →
//! its fragment's arrival at the viewer, both on this machine's clock). Glass-to-glass
//! latency needs a browser's decode and display: the browser test measures it.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::proc::{Child, cpu_seconds, free_port, pct};
use crate::http::{Limits, get, get_with, post};

/// One page's load times.
#[derive(Debug, Clone, Serialize)]
pub struct PageTiming {
    /// The path.
    pub path: &'static str,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// Response size, bytes.
    pub bytes: usize,
}

/// One viewer count's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerRun {
    /// Live viewers.
    pub viewers: usize,
    /// Agent CPU, percent of one core (user + system), averaged over the rounds.
    pub cpu_pct: f64,
    /// This CPU / the CPU with no viewer.
    pub cpu_ratio: f64,
    /// Video bytes per second each viewer received.
    pub bytes_per_s_per_viewer: f64,
    /// Frames per second each viewer received.
    pub fps_per_viewer: f64,
    /// Frame decoded → fragment received, ms (median over all viewers).
    pub delivery_p50_ms: f64,
    /// 95th percentile of the same.
    pub delivery_p95_ms: f64,
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct WebBench {
    /// Page load times (session cookie, loopback, pipeline running).
    pub pages: Vec<PageTiming>,
    /// 0, 1 and 4 viewers.
    pub viewers: Vec<ViewerRun>,
    /// Seconds per measured window.
    pub window_s: f64,
    /// Rounds of (0, 1, 4) viewers.
    pub rounds: usize,
}

/// What one viewer received in a window.
#[derive(Default)]
struct Received {
    bytes: u64,
    fragments: u64,
    delivery_ms: Vec<f64>,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// One live viewer for `window` (after the first keyframe arrived): bytes, fragments and
/// the delivery latency of each fragment (its metadata's `c` → arrival).
async fn view(
    addr: SocketAddr,
    cookie: String,
    stream: String,
    window: Duration,
) -> anyhow::Result<Received> {
    let mut req = format!("ws://{addr}/api/live/{stream}/ws").into_client_request()?;
    req.headers_mut().insert("cookie", cookie.parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let mut got = Received::default();
    let mut pending_c: Option<f64> = None;
    let mut started: Option<Instant> = None;
    let deadline = Instant::now() + window + Duration::from_secs(10);
    while Instant::now() < deadline {
        if started.is_some_and(|s| s.elapsed() >= window) {
            break;
        }
        let msg = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(m)) => m?,
            _ => anyhow::bail!("the live socket went quiet"),
        };
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t)?;
                if v.get("type").and_then(|t| t.as_str()) == Some("init") {
                    started.get_or_insert_with(Instant::now);
                } else if let Some(c) = v.get("c").and_then(|c| c.as_f64()) {
                    pending_c = Some(c);
                }
            }
            Message::Binary(b) => {
                if started.is_none() {
                    continue;
                }
                got.bytes += b.len() as u64;
                // The init segment has no metadata before it; fragments follow their frame's.
                if let Some(c) = pending_c.take() {
                    got.fragments += 1;
                    got.delivery_ms.push(now_ms() - c);
                }
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(got)
}

/// The config: the 720p bench clip looped in real time, the time stamped on every frame,
/// recorded (whose H.264 the live view shares).
fn config(dir: &std::path::Path, clip: &std::path::Path, port: u16) -> String {
    format!(
        "device: {{ id: bench-web }}\n\
         pipeline:\n  sources:\n    - {{ id: cam0, url: \"file:{clip}\", loop: true, realtime: true }}\n\
         \x20 stages:\n    - kind: timestamp_overlay\n\
         \x20 sinks:\n    - {{ kind: record, dir: \"{rec}\", segment_seconds: 10, disk_budget_mb: 100 }}\n\
         store: {{ path: \"{db}\" }}\n\
         web: {{ listen: \"127.0.0.1:{port}\" }}\n",
        clip = clip.display(),
        rec = dir.join("rec").display(),
        db = dir.join("aegis.db").display(),
    )
}

/// Runs the benchmark on `clip`: `rounds` rounds of 0, 1 and 4 viewers, `window` each.
pub fn bench_web(
    clip: &std::path::Path,
    rounds: usize,
    window: Duration,
) -> anyhow::Result<WebBench> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let cfg_path = dir.path().join("agent.yaml");
    std::fs::write(&cfg_path, config(dir.path(), clip, port))?;
    let exe = std::env::current_exe()?;
    let password = "bench-password-1";
    let mut add = std::process::Command::new(&exe)
        .args(["user", "add", "bench", "--role", "viewer", "--config"])
        .arg(&cfg_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = add.stdin.take() {
        use std::io::Write as _;
        writeln!(stdin, "{password}")?;
    }
    anyhow::ensure!(add.wait()?.success(), "aegis user add failed");
    let agent = Child(
        std::process::Command::new(&exe)
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let pid = agent.0.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let quick = Limits {
        connect: Duration::from_secs(1),
        total: Duration::from_secs(10),
        max_body: 4 << 20,
    };
    let t0 = Instant::now();
    while get(addr, "/healthz", &quick).map(|r| r.status).ok() != Some(200) {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "the agent did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let login = post(
        addr,
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("user=bench&password={password}").as_bytes(),
        &quick,
    )?;
    let cookie = login
        .headers
        .iter()
        .find(|(n, _)| n == "set-cookie")
        .and_then(|(_, v)| v.split(';').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("login failed: {}", login.status))?;
    // Let the stream start and the first segment open.
    std::thread::sleep(Duration::from_secs(3));

    let mut pages = Vec::new();
    for path in ["/", "/api/overview", "/live", "/cameras", "/events"] {
        let mut ms = Vec::new();
        let mut bytes = 0;
        for _ in 0..40 {
            let t = Instant::now();
            let r = get_with(addr, path, &[("Cookie", cookie.as_str())], &quick)?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(r.status == 200, "{path}: {}", r.status);
            bytes = r.body.len();
        }
        pages.push(PageTiming {
            path,
            p50_ms: pct(&mut ms, 0.5),
            p95_ms: pct(&mut ms, 0.95),
            bytes,
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let counts = [0usize, 1, 4];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    let mut recv: Vec<Vec<Received>> = (0..counts.len()).map(|_| Vec::new()).collect();
    for _ in 0..rounds.max(1) {
        for (i, &n) in counts.iter().enumerate() {
            let got = rt.block_on(async {
                let tasks: Vec<_> = (0..n)
                    .map(|_| tokio::spawn(view(addr, cookie.clone(), "cam0".into(), window)))
                    .collect();
                // Viewers connect and wait for their keyframe: measure the window after that.
                tokio::time::sleep(Duration::from_millis(if n > 0 { 700 } else { 0 })).await;
                let c0 = cpu_seconds(pid)?;
                let w0 = Instant::now();
                tokio::time::sleep(window).await;
                let used = (cpu_seconds(pid)? - c0) / w0.elapsed().as_secs_f64() * 100.0;
                let mut got = Vec::new();
                for t in tasks {
                    got.push(t.await??);
                }
                anyhow::Ok((used, got))
            })?;
            cpu[i].push(got.0);
            recv[i].extend(got.1);
        }
    }
    let base = cpu[0].iter().sum::<f64>() / cpu[0].len() as f64;
    let viewers = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let c = cpu[i].iter().sum::<f64>() / cpu[i].len() as f64;
            let r = &recv[i];
            let views = r.len().max(1) as f64;
            let secs = window.as_secs_f64() * views;
            let mut d: Vec<f64> = r.iter().flat_map(|x| x.delivery_ms.clone()).collect();
            ViewerRun {
                viewers: n,
                cpu_pct: c,
                cpu_ratio: c / base,
                bytes_per_s_per_viewer: r.iter().map(|x| x.bytes).sum::<u64>() as f64 / secs,
                fps_per_viewer: r.iter().map(|x| x.fragments).sum::<u64>() as f64 / secs,
                delivery_p50_ms: pct(&mut d, 0.5),
                delivery_p95_ms: pct(&mut d, 0.95),
            }
        })
        .collect();
    drop(agent);
    Ok(WebBench {
        pages,
        viewers,
        window_s: window.as_secs_f64(),
        rounds: rounds.max(1),
    })
}

/// Prints the results as tables.
pub fn print(r: &WebBench) {
    println!("page load (loopback, pipeline running, 40 requests each):");
    println!(
        "  {:<16} {:>8} {:>8} {:>9}",
        "path", "p50 ms", "p95 ms", "bytes"
    );
    for p in &r.pages {
        println!(
            "  {:<16} {:>8.2} {:>8.2} {:>9}",
            p.path, p.p50_ms, p.p95_ms, p.bytes
        );
    }
    println!(
        "live view ({} rounds of {:.0} s windows; CPU = agent process, % of one core):",
        r.rounds, r.window_s
    );
    println!(
        "  {:>7} {:>7} {:>9} {:>12} {:>8} {:>14} {:>14}",
        "viewers", "CPU %", "vs none", "kbit/s each", "fps each", "delivery p50", "delivery p95"
    );
    for v in &r.viewers {
        println!(
            "  {:>7} {:>7.1} {:>8.2}x {:>12.0} {:>8.1} {:>11.1} ms {:>11.1} ms",
            v.viewers,
            v.cpu_pct,
            v.cpu_ratio,
            v.bytes_per_s_per_viewer * 8.0 / 1000.0,
            v.fps_per_viewer,
            v.delivery_p50_ms,
            v.delivery_p95_ms
        );
    }
}
