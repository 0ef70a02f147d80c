//! Firmware A/B updates end to end with the real binaries and a real mosquitto: orders made
//! by `chimera firmware order` and published by `chimera firmware publish`, the agent's
//! check before any download, the download from a local HTTP server, the privileged steps
//! through `aegis firmware helper` (the spool protocol `aegis-firmware.path` drives on a
//! device), the reboot, the health trial and mark-good after it, the bootloader's fallback
//! from an unhealthy image, and the signed firmware receipts.
//!
//! The board is `aegis_ota::firmware::simulated::SimulatedBoard` in a file (NVIDIA's UEFI
//! A/B retry logic; what only a Jetson shows is in docs/appliance.md). A "reboot" is the
//! board's reboot, written by the helper, and the agent stopping; the test starts it
//! again, as systemd would after the boot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aegis_ota::firmware::FirmwareReceipt;
use aegis_ota::firmware::simulated::{Boot, Content, SimulatedBoard};
use aegis_ota::firmware::updater::{Slot, Updater};
use aegis_ota::receipt::Verdict;
use aegis_tests::files::{Files, Receipts, free_port};
use aegis_tests::*;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits (60 s at most) for it to exit by itself: the agent after a reboot.
    fn exits(mut self, what: &str) {
        let t0 = Instant::now();
        while self.0.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{what}: still running"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn agent(d: &Path, cfg: &Path, log: &str, stall: Option<&str>) -> Proc {
    let mut c = Command::new(aegis_bin());
    c.args(["run", "--config", cfg.to_str().unwrap()])
        .current_dir(d)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(d.join(format!("{log}.out"))).unwrap())
        .stderr(std::fs::File::create(d.join(format!("{log}.log"))).unwrap());
    if let Some(s) = stall {
        c.env("AEGIS_TEST_STALL", s);
    }
    Proc(c.spawn().unwrap())
}

fn board(path: &Path) -> SimulatedBoard {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// An image file of `n` pseudo-random bytes; returns its SHA-256.
fn image(path: &Path, seed: u64, n: usize) -> String {
    let mut rng = XorShift(seed);
    let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
    std::fs::write(path, &bytes).unwrap();
    aegis_ota::sha256_hex(&bytes)
}

/// `chimera firmware order` for `file`, served at `url`, to orin-1, signed by `fw-gw`.
fn order(d: &Path, file: &str, version: &str, board: &str, url: &str, seq: u64) -> PathBuf {
    let out = format!("order-{seq}.signed");
    chimera_ok(
        d,
        &[
            "firmware",
            "order",
            "--file",
            file,
            "--version",
            version,
            "--board",
            board,
            "--url",
            url,
            "--device",
            "orin-1",
            "--sequence",
            &seq.to_string(),
            "--issuer",
            "fw-gw",
            "--key",
            "fw.key",
            "--out",
            &out,
        ],
    );
    d.join(out)
}

fn publish(d: &Path, port: u16, order: &Path) {
    chimera_ok(
        d,
        &[
            "firmware",
            "publish",
            order.to_str().unwrap(),
            "--trust-metadata",
            "trust.signed",
            "--root",
            "root/root.pub",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
        ],
    );
}

/// A gateway, orin-1 provisioned, an issuer `fw-gw` that may order firmware upgrades,
/// the simulated board (both slots 1.0.0, booted from A and confirmed, as the stock boot
/// verifier does), a broker and the agent's config with firmware updates through the
/// helper.
fn fixture(d: &Path) -> (Broker, PathBuf) {
    gateway_and_device(d, "orin-1", &["site-a"]);
    chimera_ok(d, &["keygen", "--out", "fw"]);
    chimera_ok(
        d,
        &[
            "trust",
            "add-issuer",
            "--trust",
            "root/trust.json",
            "--name",
            "fw-gw",
            "--key",
            "fw.pub",
            "--devices",
            "orin-1",
            "--firmware",
            "upgrades",
        ],
    );
    sign_trust(d);
    // One attempt per slot: an unhealthy image falls back after one trial.
    let mut b = SimulatedBoard::flashed("1.0.0", 1);
    b.power_on().unwrap();
    b.mark_good().unwrap();
    std::fs::write(d.join("board.json"), serde_json::to_vec(&b).unwrap()).unwrap();
    let broker = Broker::start(&d.join("broker"));
    let clip = make_clip(d, "clip.mp4", 320, 240, 4.0);
    let (web, dirs) = (free_port(), d.display().to_string());
    let cfg = d.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"device: {{ id: orin-1, groups: [site-a] }}
pipeline:
  sources: [{{ id: cam0, url: "file://{clip}", loop: true, realtime: true }}]
  stages: [{{ kind: timestamp_overlay }}]
  sinks: [{{ kind: discard }}]
store: {{ path: {dirs}/aegis.db }}
fleet: {{ enabled: true, broker_url: "mqtt://127.0.0.1:{port}", telemetry_s: 30, keepalive_s: 5 }}
web: {{ listen: "127.0.0.1:{web}" }}
watchdog: {{ stall_s: 1 }}
workflows:
  enabled: true
  state_dir: {dirs}/wf
  keys_dir: {dirs}/keys
  trust: {{ roots: [{dirs}/root/root.pub], metadata: {dirs}/trust.signed }}
  firmware:
    enabled: true
    image: aegis-image
    board: jetson-orin-nano-devkit
    updater: simulated
    simulated_board: {dirs}/board.json
    dir: {dirs}/fw
    download_hosts: [127.0.0.1]
    https_only: false
    trial_s: 3
    helper_timeout_s: 30
"#,
            clip = clip.display(),
            port = broker.port,
        ),
    )
    .unwrap();
    (broker, cfg)
}

#[test]
fn a_signed_image_boots_on_trial_and_is_confirmed_an_unhealthy_one_falls_back_and_bad_orders_install_nothing()
 {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (broker, cfg) = fixture(d);
    let files = Files::serve(d.join("www"));
    std::fs::create_dir_all(d.join("www")).unwrap();
    let device_pub = aegis_ota::sign::PublicKey::read(&d.join("keys/device.pub")).unwrap();
    let verify = |t: &[u8]| FirmwareReceipt::verify(t, &device_pub).ok();
    let receipts = Receipts::watch(broker.port, "orin-1", "firmware-receipt");
    // The privileged helper (root on a device, started by aegis-firmware.path).
    let _helper = Proc(
        Command::new(aegis_bin())
            .args(["firmware", "helper", "--watch", "--config"])
            .arg(&cfg)
            .current_dir(d)
            .stderr(std::fs::File::create(d.join("helper.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut run = agent(d, &cfg, "boot0", None);
    wait_online(broker.port);
    let writes = board(&d.join("board.json")).writes();
    let url = |f: &str| format!("{}/{f}", files.url("").trim_end_matches('/'));

    // 1. An order for another board: refused before any download, answered signed.
    let good_sha = image(&d.join("www/aegis-1.1.0.swu"), 11, 3 << 20);
    let o = order(
        d,
        "www/aegis-1.1.0.swu",
        "1.1.0",
        "jetson-agx-orin-devkit",
        &url("aegis-1.1.0.swu"),
        1,
    );
    publish(d, broker.port, &o);
    let r = receipts.nth(0, verify);
    assert_eq!(r.verdict, Verdict::Rejected, "{r:?}");
    assert!(r.reason.contains("board"), "{}", r.reason);
    assert_eq!(files.requests.load(std::sync::atomic::Ordering::SeqCst), 0);

    // 2. An image the fleet ordered but the updater's key never signed: downloaded,
    //    refused by the updater before it wrote anything.
    image(&d.join("www/unsigned.swu"), 12, 1 << 20);
    let o = order(
        d,
        "www/unsigned.swu",
        "1.1.0",
        "jetson-orin-nano-devkit",
        &url("unsigned.swu"),
        2,
    );
    publish(d, broker.port, &o);
    let r = receipts.nth(1, verify);
    assert_eq!(r.verdict, Verdict::Rejected, "{r:?}");
    assert!(r.reason.contains("refused the image"), "{}", r.reason);
    let b = board(&d.join("board.json"));
    assert_eq!(b.writes(), writes, "the refused image wrote nothing");
    assert_eq!(b.nv().contents[1], Content::Image("1.0.0".into()));

    // 3. The signed 1.1.0 image: downloaded, installed into B, switched, rebooted.
    {
        let mut b = board(&d.join("board.json"));
        b.sign(&good_sha, "1.1.0");
        b.sign(&image(&d.join("www/aegis-1.2.0.swu"), 13, 2 << 20), "1.2.0");
        std::fs::write(d.join("board.json"), serde_json::to_vec(&b).unwrap()).unwrap();
    }
    let o = order(
        d,
        "www/aegis-1.1.0.swu",
        "1.1.0",
        "jetson-orin-nano-devkit",
        &url("aegis-1.1.0.swu"),
        3,
    );
    publish(d, broker.port, &o);
    run.exits("the agent after the reboot into the new image");
    let b = board(&d.join("board.json"));
    assert_eq!(b.running(), Some(Boot::Slot(Slot::B)));
    assert_eq!(b.running_version().as_deref(), Some("1.1.0"));
    assert_eq!(
        b.state().unwrap().slot(Slot::B).attempts_left,
        0,
        "on trial"
    );
    // The boot verifier leaves the trial to the agent.
    let check = aegis(
        d,
        &["firmware", "boot-check", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    // The new boot: healthy for the trial → confirmed → applied.
    run = agent(d, &cfg, "boot1", None);
    let r = receipts.nth(2, verify);
    assert_eq!(r.verdict, Verdict::Applied, "{r:?}");
    assert_eq!(
        (r.version.as_str(), r.running_version.as_str()),
        ("1.1.0", "1.1.0")
    );
    let b = board(&d.join("board.json"));
    assert_eq!(
        b.state().unwrap().slot(Slot::B).attempts_left,
        1,
        "confirmed"
    );
    let check = aegis(
        d,
        &["firmware", "boot-check", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(check.status.code(), Some(0), "{check:?}");

    // 4. 1.2.0 installs into A and boots, but the agent is unhealthy on it (a stage
    //    thread stalls): never confirmed; the bootloader falls back to B (1.1.0).
    let o = order(
        d,
        "www/aegis-1.2.0.swu",
        "1.2.0",
        "jetson-orin-nano-devkit",
        &url("aegis-1.2.0.swu"),
        4,
    );
    publish(d, broker.port, &o);
    run.exits("the agent after the reboot into 1.2.0");
    assert_eq!(
        board(&d.join("board.json")).running_version().as_deref(),
        Some("1.2.0")
    );
    // Its stage thread never returns, so its stop hangs as it would on a device, where
    // systemd kills it (TimeoutStopSec) once the reboot was asked for: here, once the board
    // has rebooted.
    let unhealthy = agent(d, &cfg, "boot2", Some("cam0:5"));
    let boots = board(&d.join("board.json")).boots().len();
    let t0 = Instant::now();
    while board(&d.join("board.json")).boots().len() == boots {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the unhealthy image never rebooted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(unhealthy);
    let b = board(&d.join("board.json"));
    assert_eq!(b.running(), Some(Boot::Slot(Slot::B)), "fell back: {b:?}");
    assert!(!b.nv().bootable[0], "A is marked unbootable");
    run = agent(d, &cfg, "boot3", None);
    let r = receipts.nth(3, verify);
    assert_eq!(r.verdict, Verdict::RolledBack, "{r:?}");
    assert_eq!(
        (r.version.as_str(), r.running_version.as_str()),
        ("1.2.0", "1.1.0")
    );
    assert!(r.reason.contains("fell back"), "{}", r.reason);

    // 5. The retained order, delivered again at every start and now once more: answered
    //    once, never again.
    publish(d, broker.port, &o);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receipts.count(), 4, "{:?}", receipts.verified(verify));
    drop(run);
}
