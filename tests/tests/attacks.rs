//! The attack suite (issue 15, docs/security.md "Threats"): a real agent, a real mosquitto,
//! real keys; an adversary on the fleet link and on the device's loopback. Every case
//! asserts the verdict, that the device signed nothing it may not sign (only statements
//! about documents whose signature verified against valid trust), the audit row, and that
//! the pipeline kept its frames. The test names are the ones docs/security.md cites.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_ota::maml::{Draft, format_time, normalise, now_s, workflow_text};
use aegis_ota::receipt::{Receipt, Verdict};
use aegis_ota::sign::{PublicKey, Purpose, SecretKey};
use aegis_ota::trust::{Issuer, Roots, TrustMetadata};
use aegis_tests::*;

const DEVICE: &str = "orin-1";
const DEVICE_TOPIC: &str = "aegis/v1/orin-1/workflows";
const GROUP_TOPIC: &str = "aegis/v1/groups/site-a/workflows";
const TRUST_TOPIC: &str = "aegis/v1/fleet/trust";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn b64(k: &SecretKey) -> String {
    use base64_lite::encode;
    encode(&k.public().to_bytes())
}

/// Standard base64 without a dependency (the suite only encodes public keys).
mod base64_lite {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(b: &[u8]) -> String {
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// Polls `check` every `every` until it yields a value; fails with `why()` once `limit` has
/// passed (a bound on waiting for the device, not a performance assertion).
fn eventually<T>(
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
    why: impl Fn() -> String,
) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{}", why());
        std::thread::sleep(every);
    }
}

/// Receipts and notices published by the device, collected by `mosquitto_sub`.
struct Tap {
    child: Child,
    file: PathBuf,
}

impl Tap {
    fn start(d: &Path, port: u16) -> Tap {
        let file = d.join(format!("tap-{}.txt", free_port()));
        let child = Command::new("/usr/bin/mosquitto_sub")
            .args([
                "-p",
                &port.to_string(),
                "-t",
                "aegis/v1/orin-1/receipts",
                "-q",
                "1",
                "-F",
                "%p@@END@@",
            ])
            .stdout(std::fs::File::create(&file).unwrap())
            .spawn()
            .unwrap();
        wait_subscribed(port, "aegis/v1/orin-1/receipts", &file);
        Tap { child, file }
    }

    fn messages(&self) -> Vec<String> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .split("@END@")
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty() && m != PROBE)
            .collect()
    }

    /// Signed receipts, each verified with the device's key (a receipt that does not
    /// verify fails the test).
    fn receipts(&self, device_key: &PublicKey) -> Vec<Receipt> {
        self.messages()
            .iter()
            .filter(|m| !m.starts_with('{'))
            .map(|m| {
                Receipt::verify(m.as_bytes(), device_key)
                    .unwrap_or_else(|e| panic!("a receipt that does not verify ({e}): {m}"))
            })
            .collect()
    }

    /// Unsigned rejection notices.
    fn notices(&self) -> Vec<serde_json::Value> {
        self.messages()
            .iter()
            .filter(|m| m.starts_with('{'))
            .map(|m| serde_json::from_str(m).unwrap())
            .collect()
    }

    fn wait_receipt(&self, key: &PublicKey, what: impl Fn(&Receipt) -> bool) -> Receipt {
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            || self.receipts(key).into_iter().find(|r| what(r)),
            || format!("the receipt never came; got: {:?}", self.messages()),
        )
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One provisioned device with its gateway side (root, two issuers, trust metadata), a
/// broker, and the agent playing a looping clip.
struct Rig {
    dir: tempfile::TempDir,
    broker: Broker,
    root: SecretKey,
    gw: SecretKey,
    gw2: SecretKey,
    trust: TrustMetadata,
    web: u16,
    agent: Option<Child>,
    runs: usize,
    device_key: PublicKey,
    tap: Option<Tap>,
}

/// The light pipeline a workflow sets: the looping clip through `stages`.
fn pipeline(d: &Path, id: &str, stages: &str) -> String {
    format!(
        "sources: [{{ id: {id}, url: \"file://{}\", loop: true, realtime: true }}]\nstages: {stages}\nsinks: [{{ kind: discard }}]",
        d.join("clip.mp4").display()
    )
}

impl Rig {
    /// The rig with trust metadata expiring in `trust_expires_in_s` and extra `web:` keys.
    fn new(trust_expires_in_s: i64, web_extra: &str) -> Option<Rig> {
        if !have_mosquitto() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let broker = Broker::start(&d.join("broker"));
        make_clip(d, "clip.mp4", 320, 240, 2.0);
        aegis_ok(d, &["provision", "--dir", "keys"]);
        let device_key = PublicKey::read(&d.join("keys/device.pub")).unwrap();
        let root = SecretKey::generate().unwrap();
        let gw = SecretKey::generate().unwrap();
        let gw2 = SecretKey::generate().unwrap();
        std::fs::write(d.join("root.pub"), root.public().to_file_text()).unwrap();
        let issuer = |name: &str, k: &SecretKey| Issuer {
            name: name.into(),
            key: b64(k),
            devices: vec!["*".into()],
            groups: vec!["*".into()],
            models: false,
            firmware: Default::default(),
        };
        let trust = TrustMetadata {
            kind: "aegis-trust".into(),
            version: 1,
            expires_at: format_time(now_s() + trust_expires_in_s),
            root: Roots {
                threshold: 1,
                keys: vec![b64(&root)],
            },
            issuers: vec![issuer("gw-1", &gw), issuer("gw-2", &gw2)],
            revoked: vec![],
        };
        std::fs::write(d.join("trust.signed"), trust.sign(&[&root]).unwrap()).unwrap();
        let web = free_port();
        let dd = d.display();
        std::fs::write(
            d.join("aegis.yaml"),
            format!(
                "device: {{ id: {DEVICE}, groups: [site-a] }}\n\
                 pipeline:\n  sources: [{{ id: cam0, url: \"file://{dd}/clip.mp4\", loop: true, realtime: true }}]\n  stages: [{{ kind: timestamp_overlay }}]\n  sinks: [{{ kind: discard }}]\n\
                 store: {{ path: {dd}/aegis.db }}\n\
                 fleet: {{ enabled: true, broker_url: \"mqtt://127.0.0.1:{}\", telemetry_s: 30, keepalive_s: 5 }}\n\
                 web: {{ listen: \"127.0.0.1:{web}\"{web_extra} }}\n\
                 workflows:\n  enabled: true\n  state_dir: {dd}/wf\n  keys_dir: {dd}/keys\n  \
                 trust: {{ roots: [{dd}/root.pub], metadata: {dd}/trust.signed }}\n  \
                 policy: {{ paths: [{dd}], source_hosts: [\"127.0.0.2\", v4l2], devices: [/dev/video0] }}\n  \
                 health: {{ window_s: 2, frames: 5 }}\n",
                broker.port
            ),
        )
        .unwrap();
        let tap = Tap::start(d, broker.port);
        Some(Rig {
            dir,
            broker,
            root,
            gw,
            gw2,
            trust,
            web,
            agent: None,
            runs: 0,
            device_key,
            tap: Some(tap),
        })
    }

    /// [`Rig::new`], then the agent started.
    fn started(trust_expires_in_s: i64, web_extra: &str) -> Option<Rig> {
        let mut rig = Rig::new(trust_expires_in_s, web_extra)?;
        rig.start();
        Some(rig)
    }

    /// The end of every case: the pipeline still delivers, then a clean stop with no frame
    /// dropped over the whole run.
    fn finish(mut self) {
        self.assert_streaming();
        let report = self.stop();
        let (_, _, dropped) = stream_counts(&report, "cam0");
        assert_eq!(dropped, 0, "frames dropped: {report}");
    }

    /// [`Rig::text`] signed by `key` (the front-matter fields in their document order).
    #[allow(clippy::too_many_arguments)]
    fn by(
        &self,
        key: &SecretKey,
        name: &str,
        devices: &[&str],
        groups: &[&str],
        seq: u64,
        age_s: i64,
        pipeline: &str,
    ) -> Vec<u8> {
        Self::sign(key, &self.text(name, devices, groups, seq, age_s, pipeline))
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn tap(&self) -> &Tap {
        self.tap.as_ref().unwrap()
    }

    fn start(&mut self) {
        self.runs += 1;
        let log = format!("agent{}", self.runs);
        let child = Command::new(aegis_bin())
            .args([
                "run",
                "--config",
                self.d().join("aegis.yaml").to_str().unwrap(),
            ])
            .current_dir(self.d())
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(self.d().join(format!("{log}.out"))).unwrap())
            .stderr(std::fs::File::create(self.d().join(format!("{log}.log"))).unwrap())
            .spawn()
            .unwrap();
        self.agent = Some(child);
        // Online (retained status) and streaming.
        eventually(
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                (self.status()["state"].as_str() == Some("online") && self.frames() > 0)
                    .then_some(())
            },
            || format!("agent never came online: {}", self.log()),
        );
        // Subscriptions go out right after the status.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Stops the agent (SIGTERM) and returns its report; asserts it exited cleanly.
    fn stop(&mut self) -> String {
        let mut c = self.agent.take().expect("agent running");
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().unwrap();
        let out = std::fs::read_to_string(self.d().join(format!("agent{}.out", self.runs)))
            .unwrap_or_default();
        assert!(status.success(), "agent failed: {out}\n{}", self.log());
        out
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.d().join(format!("agent{}.log", self.runs)))
            .unwrap_or_default()
    }

    /// The device's retained status.
    fn status(&self) -> serde_json::Value {
        let o = Command::new("/usr/bin/mosquitto_sub")
            .args([
                "-p",
                &self.broker.port.to_string(),
                "-t",
                "aegis/v1/orin-1/status",
                "-C",
                "1",
                "-W",
                "1",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn healthz(&self) -> serde_json::Value {
        http_get(&format!("127.0.0.1:{}", self.web), "/healthz")
            .ok()
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Frames the running stream has delivered so far.
    fn frames(&self) -> u64 {
        self.healthz()["streams"][0]["frames"].as_u64().unwrap_or(0)
    }

    /// Asserts the pipeline keeps delivering frames.
    fn assert_streaming(&self) {
        let f0 = self.frames();
        eventually(
            Duration::from_secs(15),
            Duration::from_millis(100),
            || (self.frames() > f0 + 10).then_some(()),
            || format!("the pipeline stopped delivering frames: {}", self.healthz()),
        );
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.d().join("api.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn counter(&self, name: &str) -> u64 {
        let req = format!(
            "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
            self.token()
        );
        let body = raw_http(self.web, req.as_bytes()).1;
        metric(
            &body,
            &format!("aegis_component_counter{{component=\"workflows\",counter=\"{name}\"}}"),
        )
        .unwrap_or(0.0) as u64
    }

    fn wait_counter(&self, name: &str, at_least: u64) {
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            || (self.counter(name) >= at_least).then_some(()),
            || {
                format!(
                    "{name} never reached {at_least} (is {}):\n{}",
                    self.counter(name),
                    self.log()
                )
            },
        );
    }

    /// The audit rows (through `aegis db export`).
    fn audit(&self) -> Vec<serde_json::Value> {
        let out = aegis_ok(
            self.d(),
            &[
                "db",
                "export",
                "--db",
                self.d().join("aegis.db").to_str().unwrap(),
                "--table",
                "audit",
                "--since",
                "all",
            ],
        );
        out.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for at least `n` audit rows with `action` whose detail contains `text`.
    fn wait_audit(&self, action: &str, text: &str, n: usize) -> Vec<serde_json::Value> {
        eventually(
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let rows: Vec<_> = self
                    .audit()
                    .into_iter()
                    .filter(|r| {
                        r["action"] == action
                            && r["detail"].as_str().is_some_and(|d| d.contains(text))
                    })
                    .collect();
                (rows.len() >= n).then_some(rows)
            },
            || {
                format!(
                    "{n} audit row(s) {action} containing {text:?} expected; have: {:?}",
                    self.audit()
                )
            },
        )
    }

    fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        let f = self.d().join(format!("pub-{}", free_port()));
        std::fs::write(&f, payload).unwrap();
        let mut args = vec![
            "-p".to_string(),
            self.broker.port.to_string(),
            "-t".into(),
            topic.into(),
            "-q".into(),
            "1".into(),
            "-f".into(),
            f.display().to_string(),
        ];
        if retain {
            args.push("-r".into());
        }
        let s = Command::new("/usr/bin/mosquitto_pub")
            .args(&args)
            .status()
            .unwrap();
        assert!(s.success());
    }

    fn clear_retained(&self, topic: &str) {
        let s = Command::new("/usr/bin/mosquitto_pub")
            .args(["-p", &self.broker.port.to_string(), "-t", topic, "-r", "-n"])
            .status()
            .unwrap();
        assert!(s.success());
    }

    /// Workflow text by issuer `name` (unsigned), issued `age_s` ago.
    fn text(
        &self,
        name: &str,
        devices: &[&str],
        groups: &[&str],
        seq: u64,
        age_s: i64,
        pipeline: &str,
    ) -> String {
        let now = now_s();
        workflow_text(
            &Draft {
                id: &format!("00000000-0000-4000-8000-{:012x}", seq * 1000 + age_s as u64),
                issuer: name,
                devices,
                groups,
                sequence: seq,
                issued_at: &format_time(now - age_s),
                expires_at: &format_time(now + 86_400),
            },
            pipeline,
        )
    }

    fn sign(key: &SecretKey, text: &str) -> Vec<u8> {
        let mut b = normalise(text.as_bytes());
        b.extend_from_slice(
            key.sign_block(&b, Purpose::Workflow)
                .unwrap()
                .render()
                .as_bytes(),
        );
        b
    }

    /// A signed light workflow by gw-1 for this device.
    fn light(&self, seq: u64, stages: &str) -> Vec<u8> {
        self.by(
            &self.gw,
            "gw-1",
            &[DEVICE],
            &[],
            seq,
            60,
            &pipeline(self.d(), "cam0", stages),
        )
    }

    fn signed_trust(&self, t: &TrustMetadata) -> Vec<u8> {
        t.sign(&[&self.root]).unwrap()
    }

    /// Receipts so far (signed, verified).
    fn receipts(&self) -> Vec<Receipt> {
        self.tap().receipts(&self.device_key)
    }

    fn wait_receipt(&self, what: impl Fn(&Receipt) -> bool) -> Receipt {
        self.tap().wait_receipt(&self.device_key, what)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `text` with the front-matter line `key: …` set to `key: value`.
fn set(text: &str, key: &str, value: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with(&format!("{key}:")) {
                format!("{key}: {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// One HTTP/1.0 request on loopback; (status line, body).
fn raw_http(port: u16, request: &[u8]) -> (String, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

fn post_workflow(port: u16, headers: &str, body: &[u8]) -> (String, String) {
    let mut req = format!(
        "POST /workflow HTTP/1.0\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw_http(port, &req)
}

/// High 1 — once the device's trust metadata expired, nothing is verified and nothing is
/// signed: a perfectly signed document (for this device or, the review's case, another),
/// garbage and a deeply nested unsigned document all get the same unsigned refusal.
#[test]
fn attack_expired_trust_is_no_signing_oracle() {
    let created = Instant::now();
    let Some(rig) = Rig::started(15, "") else {
        return;
    };
    let until = created + Duration::from_secs(17);
    // Before expiry a valid document is applied (the rig works).
    rig.publish(
        DEVICE_TOPIC,
        &rig.light(1, "[{ kind: passthrough }]"),
        false,
    );
    rig.wait_receipt(|r| r.sequence == 1 && r.verdict == Verdict::Applied);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let before = rig.receipts().len();
    let foreign = rig.by(
        &rig.gw,
        "gw-1",
        &["orin-9"],
        &[],
        2,
        30,
        &pipeline(rig.d(), "cam0", "[]"),
    );
    let mine = rig.light(3, "[{ kind: timestamp_overlay, scale: 2 }]");
    let nested = format!(
        "---\nmaml_version: \"2.0\"\nid: {}\n---\n```signature\nalg: ml-dsa-65\nkey: k\nsig: s\n```\n",
        "[".repeat(50_000)
    );
    rig.publish(DEVICE_TOPIC, &foreign, false);
    rig.publish(GROUP_TOPIC, &mine, false);
    rig.publish(DEVICE_TOPIC, nested.as_bytes(), false);
    rig.wait_counter("refused", 3);
    let rows = rig.wait_audit("workflow.refused.trust", "expired", 3);
    assert!(
        rows.iter()
            .all(|r| r["detail"].as_str().unwrap().contains("sha256"))
    );
    // The positive signal that the device's answers to the three reach the tap: its unsigned
    // notice saying the trust expired (a hang guard bounds the wait).
    eventually(
        Duration::from_secs(120),
        Duration::from_millis(50),
        || {
            rig.tap()
                .notices()
                .iter()
                .any(|n| n["signed"] == false && n["trust"] == "expired")
                .then_some(())
        },
        || {
            format!(
                "gave up waiting for the expired-trust notice: {:?}",
                rig.tap().messages()
            )
        },
    );
    assert_eq!(
        rig.receipts().len(),
        before,
        "the device signed a statement while its trust was expired: {:?}",
        rig.tap().messages()
    );
    assert_eq!(rig.counter("rejected"), 0);
    assert_eq!(rig.status()["workflow"]["trust"]["state"], "expired");
    rig.finish();
}

/// A listener on a loopback address that records every connection it accepts.
struct Listener {
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Listener {
    fn on(ip: &str, port: u16) -> Listener {
        let l = std::net::TcpListener::bind((ip, port)).unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(c);
            }
        });
        Listener { hits }
    }
    fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// High 2 — URLs that show the policy an allowed host (127.0.0.2) while libavformat would
/// connect elsewhere (127.0.0.3) are refused, and nothing connects anywhere.
#[test]
fn attack_source_url_host_confusion_is_refused_and_connects_nowhere() {
    let Some(rig) = Rig::started(86_400, "") else {
        return;
    };
    let port = free_port();
    let allowed = Listener::on("127.0.0.2", port);
    let elsewhere = Listener::on("127.0.0.3", port);
    let urls = [
        format!("rtsp://127.0.0.3:{port}?@127.0.0.2/x"),
        format!("rtsp://127.0.0.3:{port}#@127.0.0.2/x"),
        format!("rtmp://127.0.0.3:{port}?x=@127.0.0.2/app/k"),
        format!("rtsp://127.0.0.3:{port}\\@127.0.0.2/x"),
        format!("rtsp://127.0.0.2@127.0.0.3:{port}/x"),
        format!("rtsp://127.0.0.3:{port}%2f@127.0.0.2/x"),
    ];
    for (i, url) in urls.iter().enumerate() {
        let seq = i as u64 + 1;
        let p = format!(
            "sources: [{{ id: cam0, url: \"{}\" }}]\nstages: []\nsinks: [{{ kind: discard }}]",
            url.replace('\\', "\\\\")
        );
        let doc = rig.by(&rig.gw, "gw-1", &[DEVICE], &[], seq, 60, &p);
        rig.publish(DEVICE_TOPIC, &doc, false);
        let r = rig.wait_receipt(|r| r.sequence == seq);
        assert_eq!(r.verdict, Verdict::Rejected, "{url}: {r:?}");
        let reason = r.reason.to_lowercase();
        assert!(
            reason.contains("url") || reason.contains("allow-list") || reason.contains("sealed"),
            "{url}: {}",
            r.reason
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        (allowed.hits(), elsewhere.hits()),
        (0, 0),
        "a refused source connected"
    );
    assert_eq!(rig.counter("applied"), 0);
    rig.wait_audit("workflow.rejected", "sequence 1", 1);
    rig.finish();
}

/// Medium 3 — the kept trust file is damaged: the device never goes back to the
/// provisioned (older) metadata whose issuer was since revoked; it refuses everything,
/// says "trust lost", and recovers when the held version is delivered again.
#[test]
fn attack_lost_trust_file_never_falls_back_to_older_trust() {
    let Some(mut rig) = Rig::started(86_400, "") else {
        return;
    };
    let mut v2 = rig.trust.clone();
    v2.version = 2;
    v2.revoked.push(rig.gw2.public().id().to_string());
    let v2 = rig.signed_trust(&v2);
    rig.publish(TRUST_TOPIC, &v2, true);
    // Acknowledged with a signed trust receipt.
    rig.wait_receipt(|r| r.mode == "trust" && r.sequence == 2);
    rig.stop();
    // The broker loses the retained trust; the kept copy on the device is damaged.
    rig.clear_retained(TRUST_TOPIC);
    let kept = rig.d().join("wf/trust.json");
    let mut b = std::fs::read(&kept).unwrap();
    let n = b.len();
    b[n / 3] ^= 0x41;
    std::fs::write(&kept, b).unwrap();
    rig.start();
    assert_eq!(rig.status()["workflow"]["trust"]["state"], "lost");
    let receipts = rig.receipts().len();
    let by_revoked = rig.by(
        &rig.gw2,
        "gw-2",
        &[DEVICE],
        &[],
        1,
        30,
        &pipeline(rig.d(), "cam0", "[{ kind: passthrough }]"),
    );
    rig.publish(DEVICE_TOPIC, &by_revoked, false);
    rig.publish(GROUP_TOPIC, &rig.light(1, "[{ kind: passthrough }]"), false);
    rig.wait_counter("refused", 2);
    rig.wait_audit("workflow.refused.trust", "version 2", 2);
    assert_eq!(rig.counter("applied"), 0, "{}", rig.log());
    assert_eq!(
        rig.receipts().len(),
        receipts,
        "signed while trust was lost"
    );
    // Version 1 again (a rollback of trust) is refused; version 2 restores trust.
    rig.publish(TRUST_TOPIC, &rig.signed_trust(&rig.trust), false);
    rig.wait_audit("trust.refused", "rollback", 1);
    rig.publish(TRUST_TOPIC, &v2, true);
    rig.wait_counter("trust_updates", 1);
    // The counter moves before the retained status is published again.
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || (rig.status()["workflow"]["trust"]["state"] == "valid").then_some(()),
        || rig.status().to_string(),
    );
    // gw-2 stays revoked.
    let again = rig.by(
        &rig.gw2,
        "gw-2",
        &[DEVICE],
        &[],
        2,
        20,
        &pipeline(rig.d(), "cam0", "[{ kind: passthrough }]"),
    );
    rig.publish(DEVICE_TOPIC, &again, false);
    rig.wait_counter("refused", 4);
    assert_eq!(rig.counter("applied"), 0);
    rig.finish();
}

/// Medium 4 — an older group-targeted document (sequence 5, issued an hour ago) does not
/// replace a newer device-targeted one (sequence 9) although its own target's counter
/// would allow it; neither does another issuer's older document.
#[test]
fn attack_older_group_document_does_not_roll_back_a_newer_one() {
    let Some(rig) = Rig::started(86_400, "") else {
        return;
    };
    let p = |stages: &str| pipeline(rig.d(), "cam0", stages);
    let newer = rig.by(
        &rig.gw,
        "gw-1",
        &[DEVICE],
        &[],
        9,
        60,
        &p("[{ kind: passthrough }]"),
    );
    rig.publish(DEVICE_TOPIC, &newer, true);
    rig.wait_receipt(|r| r.sequence == 9 && r.verdict == Verdict::Applied);
    let older = rig.by(
        &rig.gw,
        "gw-1",
        &[],
        &["site-a"],
        5,
        3600,
        &p("[{ kind: timestamp_overlay, scale: 3 }]"),
    );
    rig.publish(GROUP_TOPIC, &older, true);
    let r = rig.wait_receipt(|r| r.sequence == 5);
    assert_eq!(r.verdict, Verdict::Rejected);
    assert!(r.reason.contains("same issuer"), "{}", r.reason);
    let other = rig.by(&rig.gw2, "gw-2", &[DEVICE], &[], 1, 600, &p("[]"));
    rig.publish(DEVICE_TOPIC, &other, false);
    let r = rig.wait_receipt(|r| r.sequence == 1);
    assert_eq!(r.verdict, Verdict::Rejected);
    assert!(r.reason.contains("running workflow"), "{}", r.reason);
    assert_eq!(rig.status()["workflow"]["active"]["sequence"], 9);
    rig.wait_audit("workflow.rejected", "sequence 5", 1);
    rig.finish();
}

/// Medium 5 — trust metadata that revokes the running workflow's issuer stops it at once:
/// signed `revoked` receipt, the previous workflow runs again, status says so, no restart.
#[test]
fn attack_revoking_the_running_issuer_stops_its_workflow_now() {
    let Some(rig) = Rig::started(86_400, "") else {
        return;
    };
    rig.publish(
        DEVICE_TOPIC,
        &rig.light(1, "[{ kind: passthrough }]"),
        false,
    );
    rig.wait_receipt(|r| r.sequence == 1 && r.verdict == Verdict::Applied);
    let by_gw2 = rig.by(
        &rig.gw2,
        "gw-2",
        &[DEVICE],
        &[],
        1,
        10,
        &pipeline(rig.d(), "cam0", "[{ kind: timestamp_overlay, scale: 2 }]"),
    );
    rig.publish(DEVICE_TOPIC, &by_gw2, false);
    // Rig::text's id: sequence * 1000 + age.
    let gw2_id = format!("{:012x}", 1000 + 10);
    let applied =
        rig.wait_receipt(|r| r.verdict == Verdict::Applied && r.workflow_id.ends_with(&gw2_id));
    let mut v2 = rig.trust.clone();
    v2.version = 2;
    v2.revoked.push(rig.gw2.public().id().to_string());
    rig.publish(TRUST_TOPIC, &rig.signed_trust(&v2), true);
    let r = rig.wait_receipt(|r| r.verdict == Verdict::Revoked);
    assert_eq!(r.workflow_sha256, applied.workflow_sha256);
    assert!(r.reason.contains("revoked"), "{}", r.reason);
    rig.wait_receipt(|r| r.mode == "trust" && r.sequence == 2);
    rig.wait_audit("workflow.revoked", "revoked", 1);
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || (rig.status()["workflow"]["active"]["sequence"] == 1).then_some(()),
        || rig.status().to_string(),
    );
    rig.finish();
}

/// Medium 6 — bounded cost: a 62k-deep signed front matter is refused by the depth check
/// (not by a parser that has built the tree), a local flood does not starve the fleet, and
/// a flood on the fleet topic does not lose the retained document.
#[test]
fn attack_floods_and_deep_nesting_do_not_starve_fleet_delivery() {
    let Some(rig) = Rig::started(86_400, "") else {
        return;
    };
    let deep = rig
        .text(
            "gw-1",
            &[DEVICE],
            &[],
            1,
            60,
            &pipeline(rig.d(), "cam0", "[]"),
        )
        .replace(
            "permissions: {",
            &format!("x: {}\npermissions: {{", "[".repeat(62_000)),
        );
    rig.publish(DEVICE_TOPIC, &Rig::sign(&rig.gw, &deep), false);
    rig.wait_counter("refused", 1);
    rig.wait_audit("workflow.refused", "nested deeper", 1);
    // Local flood: 4 clients post garbage as fast as they can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let token = rig.token();
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, token, web) = (stop.clone(), token.clone(), rig.web);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let h = format!("Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n");
                    post_workflow(web, &h, b"---\nnot a workflow\n");
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    rig.publish(DEVICE_TOPIC, &rig.light(2, "[{ kind: passthrough }]"), true);
    rig.wait_receipt(|r| r.sequence == 2 && r.verdict == Verdict::Applied);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let posted: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!(
        "local flood: {posted} posts, {} refused, {} answered busy",
        rig.counter("refused"),
        rig.counter("busy")
    );
    // Fleet flood: garbage on the device topic right after a retained valid document.
    let refused0 = rig.counter("refused");
    let mut p = Command::new("/usr/bin/mosquitto_pub")
        .args([
            "-p",
            &rig.broker.port.to_string(),
            "-t",
            DEVICE_TOPIC,
            "-q",
            "1",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    rig.publish(
        DEVICE_TOPIC,
        &rig.light(3, "[{ kind: timestamp_overlay }]"),
        true,
    );
    let garbage: String = (0..500).map(|i| format!("junk {i}\n")).collect();
    p.stdin
        .take()
        .unwrap()
        .write_all(garbage.as_bytes())
        .unwrap();
    assert!(p.wait().unwrap().success());
    rig.wait_receipt(|r| r.sequence == 3 && r.verdict == Verdict::Applied);
    // Every garbage message is accounted for: refused, or superseded (then re-fetched).
    let accounted = || rig.counter("refused") - refused0 + rig.counter("superseded");
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || (accounted() >= 500).then_some(()),
        || format!("garbage lost silently: {} of 500", accounted()),
    );
    rig.finish();
}

/// Medium 7 — credentials in an unsealed document are refused and never leave the device
/// (receipts, audit rows, logs); workflow state is private.
#[test]
fn attack_credentials_in_unsealed_documents_are_refused_and_never_leak() {
    use std::os::unix::fs::PermissionsExt;
    let Some(mut rig) = Rig::started(86_400, "") else {
        return;
    };
    let secrets = ["Hunter2Secret", "PassPhrase0123456", "Sealed0Secret"];
    let urls = [
        format!("rtsp://admin:{}@127.0.0.2/stream", secrets[0]),
        format!("srt://127.0.0.2:9000?mode=caller&passphrase={}", secrets[1]),
    ];
    for (i, url) in urls.iter().enumerate() {
        let seq = i as u64 + 1;
        let p = format!(
            "sources: [{{ id: cam0, url: \"{url}\" }}]\nstages: []\nsinks: [{{ kind: discard }}]"
        );
        rig.publish(
            DEVICE_TOPIC,
            &rig.by(&rig.gw, "gw-1", &[DEVICE], &[], seq, 60, &p),
            false,
        );
        let r = rig.wait_receipt(|r| r.sequence == seq);
        assert_eq!(r.verdict, Verdict::Rejected);
        assert!(r.reason.contains("sealed"), "{}", r.reason);
    }
    rig.wait_audit("workflow.rejected", "sequence 2", 1);
    // Sealed, with a password, for a host the policy refuses: the receipt names the failed
    // check only, and its mirror covers the sealed section as transmitted (no digest of
    // the cleartext that a broker reader could match guesses against).
    let kem = aegis_ota::seal::SealPublic::read(&rig.d().join("keys/device.kem.pub")).unwrap();
    let p = format!(
        "sources: [{{ id: cam0, url: \"rtsp://10.66.0.9/s\", username: admin, password: {} }}]\nstages: []\nsinks: [{{ kind: discard }}]",
        secrets[2]
    );
    let clear = String::from_utf8(normalise(
        rig.text("gw-1", &[DEVICE], &[], 3, 60, &p).as_bytes(),
    ))
    .unwrap();
    let sealed = aegis_ota::seal::seal(&clear, &[kem]).unwrap();
    rig.publish(DEVICE_TOPIC, &Rig::sign(&rig.gw, &sealed), false);
    let r = rig.wait_receipt(|r| r.sequence == 3);
    assert_eq!(r.verdict, Verdict::Rejected);
    assert!(
        r.reason.starts_with("policy") && r.reason.contains("withheld"),
        "{}",
        r.reason
    );
    let sections: Vec<&str> = r.mirror.iter().map(|m| m.section.as_str()).collect();
    assert_eq!(sections, ["Sealed"]);
    assert!(
        rig.tap()
            .messages()
            .iter()
            .all(|m| !m.contains("10.66.0.9")),
        "a sealed host name left the device"
    );
    // The details stay in the device's own audit log.
    rig.wait_audit("workflow.rejected", "10.66.0.9", 1);
    rig.assert_streaming();
    let report = rig.stop();
    let mut everything = rig.tap().messages().join("\n");
    everything.push_str(&format!("{:?}", rig.audit()));
    everything.push_str(&report);
    everything.push_str(&rig.log());
    for s in secrets {
        assert!(!everything.contains(s), "{s} left the device");
    }
    for f in ["wf/state.json", "api.token"] {
        let mode = std::fs::metadata(rig.d().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f}: {mode:o}");
    }
    let mode = std::fs::metadata(rig.d().join("wf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// Low 8, 9, 10 — out-of-range time fields, flow-style anchors and aliases, and a camera
/// device outside the allow-list: each refused with a reason naming it, nothing applied.
#[test]
fn attack_time_fields_anchors_and_camera_devices_are_refused() {
    let Some(rig) = Rig::started(86_400, "") else {
        return;
    };
    let base = |seq: u64| {
        rig.text(
            "gw-1",
            &[DEVICE],
            &[],
            seq,
            60,
            &pipeline(rig.d(), "cam0", "[{ kind: passthrough }]"),
        )
    };
    let cases: Vec<(u64, String, &str)> = vec![
        (1, set(&base(1), "issued_at", "-0001-01-01T00:00:00Z"), "issued_at"),
        (2, set(&base(2), "issued_at", "99999-12-31T23:59:59Z"), "issued_at"),
        (3, set(&base(3), "expires_at", "2027-02-30T00:00:00Z"), "expires_at"),
        (
            4,
            set(
                &base(4),
                "target",
                "{\"devices\":&d [orin-1],\"groups\":*d}",
            ),
            "anchors",
        ),
        (
            5,
            rig.text(
                "gw-1",
                &[DEVICE],
                &[],
                5,
                60,
                "sources: [{ id: cam0, url: \"v4l2:///dev/video7\" }]\nstages: []\nsinks: [{ kind: discard }]",
            ),
            "/dev/video7",
        ),
    ];
    for (seq, text, want) in &cases {
        rig.publish(DEVICE_TOPIC, &Rig::sign(&rig.gw, text), false);
        // Documents that do not parse are verified but cannot be named: refused unsigned.
        let receipt = eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let receipt = rig.receipts().into_iter().find(|r| r.sequence == *seq);
                let refused = rig.audit().into_iter().any(|r| {
                    r["action"] == "workflow.refused"
                        && r["detail"].as_str().is_some_and(|d| d.contains(want))
                });
                (receipt.is_some() || refused).then_some(receipt)
            },
            || {
                format!(
                    "case {seq}: no verdict naming {want:?}: {:?} {:?}",
                    rig.tap().messages(),
                    rig.audit()
                )
            },
        );
        if let Some(r) = &receipt {
            assert_eq!(r.verdict, Verdict::Rejected, "case {seq}");
            assert!(r.reason.contains(want), "case {seq}: {}", r.reason);
        }
    }
    assert_eq!(rig.counter("applied"), 0, "{}", rig.log());
    rig.finish();
}

/// Low 11, 12 — a retained document redelivered after a restart gets no second receipt;
/// the retained trust file redelivered is audited as a duplicate.
#[test]
fn attack_restart_redelivery_signs_nothing_twice_and_is_audited() {
    let Some(mut rig) = Rig::started(86_400, "") else {
        return;
    };
    let first = rig.light(1, "[{ kind: passthrough }]");
    rig.publish(DEVICE_TOPIC, &first, true);
    let mut v2 = rig.trust.clone();
    v2.version = 2;
    rig.publish(TRUST_TOPIC, &rig.signed_trust(&v2), true);
    rig.wait_receipt(|r| r.sequence == 1 && r.verdict == Verdict::Applied);
    rig.wait_receipt(|r| r.mode == "trust");
    // A rejected (authenticated) document, retained on the group topic.
    let foreign = rig.by(&rig.gw, "gw-1", &[], &["site-a"], 7, 30, "sources: [{ id: cam0, url: \"rtsp://10.9.9.9/x\" }]\nstages: []\nsinks: [{ kind: discard }]");
    rig.publish(GROUP_TOPIC, &foreign, true);
    rig.wait_receipt(|r| r.sequence == 7);
    rig.stop();
    let before = rig.receipts().len();
    rig.start();
    rig.wait_counter("duplicates", 3);
    rig.wait_audit("trust.duplicate", "version 2", 1);
    // The positive signal that whatever the redeliveries caused has been published: the
    // agent answers in order, so a new document's receipt comes after all of it.
    rig.publish(
        DEVICE_TOPIC,
        &rig.light(8, "[{ kind: passthrough }]"),
        false,
    );
    rig.wait_receipt(|r| r.sequence == 8 && r.verdict == Verdict::Applied);
    let since: Vec<u64> = rig.receipts()[before..]
        .iter()
        .map(|r| r.sequence)
        .collect();
    assert_eq!(
        since,
        [8],
        "a second receipt after the restart: {:?}",
        rig.tap().messages()
    );
    // Published live, the first document is asked again: its receipt, read back from the
    // workflow history of the previous run, goes out once more, byte for byte.
    let texts = || -> Vec<String> {
        rig.tap()
            .messages()
            .into_iter()
            .filter(|m| !m.starts_with('{'))
            .collect()
    };
    let original = texts()
        .into_iter()
        .find(|m| {
            Receipt::verify(m.as_bytes(), &rig.device_key)
                .is_ok_and(|r| r.sequence == 1 && r.verdict == Verdict::Applied)
        })
        .unwrap();
    let n = texts().len();
    rig.publish(DEVICE_TOPIC, &first, false);
    let again = eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || texts().get(n).cloned(),
        || format!("not answered again: {:?}", rig.tap().messages()),
    );
    assert_eq!(again, original);
    rig.finish();
}

/// Low 14, 15 — the local endpoint needs the local token and a same-origin IP/localhost
/// Host; `/metrics` needs it too when not public; `/healthz` forgets the streams of a
/// pipeline that was replaced.
#[test]
fn attack_local_endpoint_needs_the_token_and_healthz_forgets_old_streams() {
    let Some(mut rig) = Rig::started(86_400, ", metrics_public: false") else {
        return;
    };
    let doc = rig.light(1, "[]");
    let token = rig.token();
    let auth = format!("Authorization: Bearer {token}\r\n");
    let cases = [
        ("Host: 127.0.0.1\r\n".to_string(), "401"),
        (
            format!(
                "Host: 127.0.0.1\r\nAuthorization: Bearer {}\r\n",
                "0".repeat(64)
            ),
            "401",
        ),
        (format!("Host: evil.example:{}\r\n{auth}", rig.web), "403"),
        (
            format!(
                "Host: 127.0.0.1:{}\r\nOrigin: http://evil.example\r\n{auth}",
                rig.web
            ),
            "403",
        ),
    ];
    for (h, code) in &cases {
        let (status, body) = post_workflow(rig.web, h, &doc);
        assert!(status.contains(code), "{h:?}: {status} {body}");
    }
    let (status, _) = raw_http(rig.web, b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(status.contains("401"), "{status}");
    rig.wait_audit("http.refused", "token", 2);
    rig.wait_audit("http.refused", "evil.example", 2);
    assert_eq!(
        rig.counter("received"),
        0,
        "a refused request reached the applier"
    );
    // With the token and the right host: applied. This workflow renames the stream (a
    // rebuild): /healthz must forget cam0.
    let renamed = rig.by(
        &rig.gw,
        "gw-1",
        &[DEVICE],
        &[],
        2,
        30,
        &pipeline(rig.d(), "cam1", "[]"),
    );
    let (status, body) = post_workflow(
        rig.web,
        &format!(
            "Host: 127.0.0.1:{}\r\nOrigin: http://127.0.0.1:{}\r\n{auth}",
            rig.web, rig.web
        ),
        &renamed,
    );
    assert!(
        status.contains("200") && body.contains("\"applied\""),
        "{body}"
    );
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let h = rig.healthz();
            let ids: Vec<_> = h["streams"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string())
                .collect();
            (ids == ["cam1"] && h["status"] == "ok").then_some(())
        },
        || rig.healthz().to_string(),
    );
    rig.assert_streaming();
    rig.stop();
}

/// The classes that already held, kept under test: a flipped bit, a replayed document, an
/// expired one, one for another device — refused with the right verdict, signed only
/// where the signature verified.
#[test]
fn attack_classic_tamper_replay_expiry_and_foreign_target_still_hold() {
    let Some(rig) = Rig::started(86_400, "") else {
        return;
    };
    let good = rig.light(1, "[{ kind: passthrough }]");
    let mut flipped = good.clone();
    let i = flipped.windows(6).position(|w| w == b"Intent").unwrap();
    flipped[i + 2] ^= 0x01;
    rig.publish(DEVICE_TOPIC, &flipped, false);
    rig.wait_counter("refused", 1);
    rig.wait_audit("workflow.refused", "signature", 1);
    rig.publish(DEVICE_TOPIC, &good, false);
    rig.wait_receipt(|r| r.sequence == 1 && r.verdict == Verdict::Applied);
    // The same bytes again, live: answered already, so it is a question — the receipt
    // signed then goes out once more, byte for byte (nothing signed twice); a third copy
    // within the interval gets nothing.
    let receipts = |rig: &Rig| -> Vec<String> {
        rig.tap()
            .messages()
            .into_iter()
            .filter(|m| !m.starts_with('{'))
            .collect()
    };
    rig.publish(GROUP_TOPIC, &good, false);
    rig.wait_counter("duplicates", 1);
    let sent = eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let r = receipts(&rig);
            (r.len() == 2).then_some(r)
        },
        || format!("the receipt was not sent again: {:?}", rig.tap().messages()),
    );
    assert_eq!(
        sent[0], sent[1],
        "the receipt sent again is the one signed then"
    );
    rig.publish(DEVICE_TOPIC, &good, false);
    rig.wait_counter("duplicates", 2);
    // A new document replaying sequence 1.
    let replay = rig.by(
        &rig.gw,
        "gw-1",
        &[DEVICE],
        &[],
        1,
        5,
        &pipeline(rig.d(), "cam0", "[]"),
    );
    rig.publish(DEVICE_TOPIC, &replay, false);
    let r = rig.wait_receipt(|r| r.verdict == Verdict::Rejected && r.reason.contains("not above"));
    assert_eq!(r.sequence, 1);
    // Expired: issued two days ago, expired yesterday.
    let expired = set(
        &rig.text(
            "gw-1",
            &[DEVICE],
            &[],
            2,
            2 * 86_400,
            &pipeline(rig.d(), "cam0", "[]"),
        ),
        "expires_at",
        &format_time(now_s() - 86_400),
    );
    rig.publish(DEVICE_TOPIC, &Rig::sign(&rig.gw, &expired), false);
    let r = rig.wait_receipt(|r| r.sequence == 2);
    assert!(r.reason.contains("expired"), "{}", r.reason);
    let foreign = rig.by(
        &rig.gw,
        "gw-1",
        &["orin-9"],
        &[],
        3,
        5,
        &pipeline(rig.d(), "cam0", "[]"),
    );
    rig.publish(DEVICE_TOPIC, &foreign, false);
    let r = rig.wait_receipt(|r| r.sequence == 3);
    assert!(r.reason.contains("not this device"), "{}", r.reason);
    assert_eq!(rig.counter("applied"), 1);
    // Sequence 1 twice (the second the same bytes), 1 rejected, 2, 3.
    assert_eq!(rig.receipts().len(), 5, "{:?}", rig.tap().messages());
    rig.finish();
}
