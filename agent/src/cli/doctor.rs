//! `aegis doctor`: what a technician runs on a fresh device. One line per finding — the
//! module and Jetson Linux release, GPU libraries and the backend that will run, hardware
//! codecs, V4L2 cameras, ONNX Runtime and its providers, the models, disk, clock sync, the
//! broker, the device keys and trust — then what the agent will use, and an exit code that
//! is non-zero when it cannot run (a `FAIL` line says why).

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aegis_config::AgentConfig;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    /// The agent runs, with less than it could (a missing camera, no clock sync).
    Warn,
    /// The agent cannot run.
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

struct Finding {
    level: Level,
    area: &'static str,
    text: String,
}

/// What was found, in order, and what the agent will use.
#[derive(Default)]
struct Report {
    findings: Vec<Finding>,
    uses: Vec<String>,
}

impl Report {
    fn add(&mut self, level: Level, area: &'static str, text: impl Into<String>) {
        self.findings.push(Finding {
            level,
            area,
            text: text.into(),
        });
    }
}

/// The platform files read: under `root` (default `/`), so an image's root filesystem or a
/// test's fake one can be examined.
struct Platform {
    root: PathBuf,
}

impl Platform {
    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &str) -> Option<String> {
        std::fs::read(self.path(p)).ok().map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches(['\0', '\n'])
                .to_string()
        })
    }
}

use aegis_jetson::platform::{CodecPath, Platform as Jetson};

fn platform(p: &Platform, r: &mut Report) -> Option<Jetson> {
    let Some(j) = Jetson::detect(&p.root) else {
        let cpu = p
            .read("/proc/cpuinfo")
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_else(|| "unknown CPU".into());
        r.add(
            Level::Ok,
            "platform",
            format!("not a Jetson: {cpu} ({})", std::env::consts::ARCH),
        );
        return None;
    };
    let level = match &j.release {
        Some(rel) if rel.supported() => Level::Ok,
        _ => Level::Warn,
    };
    r.add(level, "platform", j.describe());
    Some(j)
}

fn codecs(p: &Platform, m: Option<&Jetson>, r: &mut Report) -> String {
    let cpu_encoder = aegis_hal::codec::h264_encoder_name();
    let Some(m) = m else {
        return match cpu_encoder {
            Some(e) => {
                r.add(Level::Ok, "codecs", format!("H.264 encoder {e} (CPU)"));
                e.to_string()
            }
            None => {
                r.add(
                    Level::Warn,
                    "codecs",
                    "no H.264 encoder in this FFmpeg: recording and live view cannot encode",
                );
                "none".into()
            }
        };
    };
    if m.codecs() == CodecPath::VideoCodecSdk {
        let cpu = cpu_encoder.unwrap_or("none");
        r.add(
            Level::Ok,
            "codecs",
            format!(
                "{:?}: NVDEC/NVENC through the Video Codec SDK (the cuda backend's path; \
                 recordings encode on the CPU: {cpu})",
                m.module
            ),
        );
        return cpu.to_string();
    }
    // The nodes r36's samples try, in their order; the first present is the one opened.
    use aegis_jetson::m2m::device::{DECODER_NODES, ENCODER_NODES};
    let node = |nodes: &[&'static str]| nodes.iter().copied().find(|n| p.path(n).exists());
    let (dec, enc) = (node(&DECODER_NODES), node(&ENCODER_NODES));
    let shown = |found: Option<&str>, nodes: &[&str]| match found {
        Some(n) => format!("{n} present"),
        None => format!("missing ({})", nodes.join(", ")),
    };
    r.add(
        if dec.is_some() {
            Level::Ok
        } else {
            Level::Warn
        },
        "codecs",
        format!(
            "hardware decoder {} (the jetson backend decodes into NVMM with it)",
            shown(dec, &DECODER_NODES)
        ),
    );
    let cpu = cpu_encoder.unwrap_or("none");
    if m.codecs() == (CodecPath::V4l2M2m { encoder: false }) {
        r.add(
            Level::Warn,
            "codecs",
            format!("this module has no NVENC (Orin Nano): H.264 encodes on the CPU ({cpu})"),
        );
        return format!("{cpu} (CPU; no NVENC on this module)");
    }
    r.add(
        if enc.is_some() {
            Level::Ok
        } else {
            Level::Warn
        },
        "codecs",
        format!(
            "hardware encoder {} (the jetson backend records NVMM frames with it; others encode on the CPU: {cpu})",
            shown(enc, &ENCODER_NODES)
        ),
    );
    cpu.to_string()
}

fn gpu_and_backend(cfg: &AgentConfig, r: &mut Report) {
    let probe = aegis_hal::backend::probe();
    let found = |b: bool| if b { "found" } else { "missing" };
    r.add(
        Level::Ok,
        "gpu",
        format!(
            "CUDA driver {}, NVRTC {}, NVDEC {}",
            found(probe.driver),
            found(probe.nvrtc),
            found(probe.nvdec)
        ),
    );
    match crate::runtime::check_backend(cfg) {
        Ok(kind) => {
            r.add(
                Level::Ok,
                "backend",
                format!(
                    "will use {kind} (config: {})",
                    format!("{:?}", cfg.backend.kind).to_lowercase()
                ),
            );
            r.uses.push(format!("backend {kind}"));
        }
        Err(e) => r.add(Level::Fail, "backend", e.to_string()),
    }
}

fn v4l2(p: &Platform, cfg: &AgentConfig, r: &mut Report) {
    let mut present = Vec::new();
    if let Ok(entries) = std::fs::read_dir(p.path("/sys/class/video4linux")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let label = p
                .read(&format!("/sys/class/video4linux/{name}/name"))
                .unwrap_or_default();
            present.push((format!("/dev/{name}"), label));
        }
    }
    present.sort();
    let wanted: Vec<(String, String)> = cfg
        .pipeline
        .sources
        .iter()
        .filter_map(|s| {
            let dev = s
                .url
                .strip_prefix("v4l2://")
                .or_else(|| s.url.starts_with("/dev/").then_some(s.url.as_str()))?;
            Some((s.id.clone(), dev.to_string()))
        })
        .collect();
    if present.is_empty() && wanted.is_empty() {
        r.add(Level::Ok, "v4l2", "no V4L2 devices, none configured");
    }
    for (dev, label) in &present {
        let users: Vec<&str> = wanted
            .iter()
            .filter(|(_, d)| d == dev)
            .map(|(id, _)| id.as_str())
            .collect();
        let used = if users.is_empty() {
            String::new()
        } else {
            format!(" (configured: {})", users.join(", "))
        };
        r.add(Level::Ok, "v4l2", format!("{dev} {label:?}{used}"));
    }
    for (id, dev) in &wanted {
        if !present.iter().any(|(d, _)| d == dev) && !p.path(dev).exists() {
            r.add(
                Level::Warn,
                "v4l2",
                format!(
                    "{dev}: configured for {id}, not present (that stream retries; the others run)"
                ),
            );
        }
    }
}

fn inference(cfg: &AgentConfig, r: &mut Report) {
    let inf = &cfg.inference;
    if inf.models.is_empty() {
        r.add(Level::Ok, "onnxruntime", "no models configured: not needed");
        return;
    }
    match aegis_models::engine::runtime_providers(&inf.runtime) {
        Ok(p) => {
            let wanted = format!("{:?}", inf.provider).to_lowercase();
            // `auto` names the library it found.
            let library = aegis_models::engine::resolve_runtime(&inf.runtime)
                .unwrap_or_else(|_| inf.runtime.clone());
            r.add(
                Level::Ok,
                "onnxruntime",
                format!("{}: providers {}", library.display(), p.join(", ")),
            );
            let have = p.iter().any(|x| *x == wanted) || wanted == "cpu";
            if !have {
                r.add(
                    if inf.cpu_fallback {
                        Level::Warn
                    } else {
                        Level::Fail
                    },
                    "onnxruntime",
                    format!(
                        "inference.provider {wanted} is not in this ONNX Runtime{}",
                        if inf.cpu_fallback {
                            ": models run on the CPU (cpu_fallback)"
                        } else {
                            " and cpu_fallback is off"
                        }
                    ),
                );
            }
            r.uses.push(format!(
                "inference {}",
                if have { wanted.as_str() } else { "cpu" }
            ));
        }
        Err(e) => r.add(Level::Fail, "onnxruntime", e.to_string()),
    }
    for m in &inf.models {
        let text = match std::fs::read(&m.file) {
            Err(e) => {
                r.add(
                    Level::Fail,
                    "models",
                    format!("{} {}: {e}", m.name, m.file.display()),
                );
                continue;
            }
            Ok(bytes) => {
                let digest = aegis_ota::sha256_hex(&bytes);
                match &m.sha256 {
                    Some(want) if !want.eq_ignore_ascii_case(&digest) => {
                        r.add(
                            Level::Fail,
                            "models",
                            format!(
                                "{} {}: sha256 {digest}, the config expects {want}",
                                m.name,
                                m.file.display()
                            ),
                        );
                        continue;
                    }
                    _ => format!(
                        "{} v{} {} ({} bytes, sha256 {}…)",
                        m.name,
                        m.version,
                        m.file.display(),
                        bytes.len(),
                        &digest[..12]
                    ),
                }
            }
        };
        r.add(Level::Ok, "models", text);
    }
}

fn disk(cfg: &AgentConfig, r: &mut Report) {
    let store = std::path::absolute(&cfg.store.path).unwrap_or_else(|_| cfg.store.path.clone());
    let probe_dir = store
        .ancestors()
        .skip(1)
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    let Some(free) = free_bytes(probe_dir) else {
        r.add(
            Level::Warn,
            "disk",
            format!("{}: cannot read free space", probe_dir.display()),
        );
        return;
    };
    let budget = cfg.store.size_budget_mb << 20;
    let gib = free as f64 / (1u64 << 30) as f64;
    let level = if free < budget {
        Level::Warn
    } else {
        Level::Ok
    };
    r.add(
        level,
        "disk",
        format!(
            "{}: {gib:.1} GiB free (store budget {} MiB)",
            probe_dir.display(),
            cfg.store.size_budget_mb
        ),
    );
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs reads the NUL-terminated path and writes only into `s`, which we own.
    let ok = unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0;
    ok.then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

fn clock(r: &mut Report) {
    if aegis_ota::state::clock_synchronized() {
        r.add(
            Level::Ok,
            "clock",
            "synchronised (the kernel's STA_UNSYNC is clear)",
        );
    } else {
        r.add(
            Level::Warn,
            "clock",
            "not synchronised: workflow and trust expiry, receipts and recordings use this \
             clock (NTP, chrony or GPS: sensors.fusion.gps_time_floor)",
        );
    }
}

fn broker(cfg: &AgentConfig, r: &mut Report) {
    if !cfg.fleet.enabled {
        r.add(Level::Ok, "broker", "fleet link off");
        return;
    }
    let url = &cfg.fleet.broker_url;
    let hostport = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let hostport = hostport.trim_end_matches('/');
    let default_port = if url.starts_with("mqtts") { 8883 } else { 1883 };
    let target = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    };
    let t0 = Instant::now();
    let reached = target
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
        .and_then(|a| {
            TcpStream::connect_timeout(&a, Duration::from_secs(3)).map_err(|e| e.to_string())
        });
    match reached {
        Ok(_) => r.add(
            Level::Ok,
            "broker",
            format!("{url}: reachable (TCP, {} ms)", t0.elapsed().as_millis()),
        ),
        Err(e) => r.add(
            Level::Warn,
            "broker",
            format!("{url}: not reachable ({e}); the agent runs and keeps events until it is"),
        ),
    }
}

fn keys_and_trust(cfg: &AgentConfig, r: &mut Report) {
    if !cfg.workflows.enabled {
        r.add(Level::Ok, "trust", "signed workflows off");
        return;
    }
    match aegis_ota::state::Workflows::inspect(cfg) {
        Ok(v) => {
            r.add(
                Level::Ok,
                "keys",
                format!(
                    "device key {} in {}",
                    v["device_key"].as_str().unwrap_or("?"),
                    cfg.workflows.keys_dir.display()
                ),
            );
            let t = &v["trust"];
            let level = if t["state"] == "valid" {
                Level::Ok
            } else {
                Level::Warn
            };
            r.add(
                level,
                "trust",
                format!(
                    "trust metadata version {}, {}, expires {}{}",
                    t["version"],
                    t["state"].as_str().unwrap_or("?"),
                    t["expires_at"].as_str().unwrap_or("?"),
                    t["problem"]
                        .as_str()
                        .map(|p| format!(": {p}"))
                        .unwrap_or_default()
                ),
            );
        }
        Err(e) => r.add(Level::Fail, "trust", e.to_string()),
    }
}

/// Firmware updates: the running version the image names, the updater's tools, and an
/// order under way. A missing version file or tool is a warning: video runs, firmware
/// orders are refused (or, on trial, the slot is never confirmed and the bootloader falls
/// back).
fn firmware(p: &Platform, cfg: &AgentConfig, r: &mut Report) {
    use crate::firmware::steps::{Done, Local, Step, Steps};
    let f = &cfg.workflows.firmware;
    if !f.enabled {
        r.add(Level::Ok, "firmware", "firmware updates off");
        return;
    }
    let dir = cfg.workflows.firmware_dir();
    match Local::new(f, &dir).run(&Step::Version) {
        Ok(Done::Version(v)) => r.add(
            Level::Ok,
            "firmware",
            format!("{} {v} on {} ({:?} updater)", f.image, f.board, f.updater),
        ),
        Ok(_) => {}
        Err(e) => r.add(
            Level::Warn,
            "firmware",
            format!("running version: {e}: firmware orders cannot be checked"),
        ),
    }
    if f.updater == aegis_config::FirmwareUpdaterKind::Swupdate {
        for tool in [
            &f.swupdate.binary,
            &f.swupdate.nvbootctrl,
            &f.swupdate.certificate,
        ] {
            let t = tool.to_string_lossy();
            if p.path(t.trim_start_matches('/')).exists() {
                continue;
            }
            r.add(
                Level::Warn,
                "firmware",
                format!("{t} is missing: firmware updates cannot install"),
            );
        }
    }
    match super::firmware::existing_record(&dir) {
        Ok(None) => {}
        Ok(Some(st)) => {
            if let Some(pe) = st.pending() {
                r.add(
                    Level::Ok,
                    "firmware",
                    format!(
                        "order under way: {} {} → {} ({:?})",
                        pe.image, pe.from_version, pe.version, pe.phase
                    ),
                );
            }
        }
        Err(e) => r.add(Level::Warn, "firmware", e.to_string()),
    }
}

/// Runs every check for the config at `path`; `root` prefixes the platform files.
pub(super) fn doctor(path: &Path, root: Option<&Path>, json: bool) -> std::process::ExitCode {
    let mut r = Report::default();
    let p = Platform {
        root: root.unwrap_or(Path::new("/")).to_path_buf(),
    };
    let cfg = match aegis_config::load(path) {
        Ok(c) => {
            r.add(
                Level::Ok,
                "config",
                format!(
                    "{}: valid ({} streams)",
                    path.display(),
                    c.pipeline.sources.len()
                ),
            );
            Some(c)
        }
        Err(e) => {
            r.add(Level::Fail, "config", e.to_string());
            None
        }
    };
    let m = platform(&p, &mut r);
    let encoder = codecs(&p, m.as_ref(), &mut r);
    r.uses.push(format!("H.264 encoder {encoder}"));
    if let Some(cfg) = &cfg {
        gpu_and_backend(cfg, &mut r);
        v4l2(&p, cfg, &mut r);
        inference(cfg, &mut r);
        disk(cfg, &mut r);
        clock(&mut r);
        broker(cfg, &mut r);
        keys_and_trust(cfg, &mut r);
        firmware(&p, cfg, &mut r);
        r.uses
            .push(format!("{} streams", cfg.pipeline.sources.len()));
    }
    let worst = r
        .findings
        .iter()
        .map(|f| f.level)
        .max()
        .unwrap_or(Level::Ok);
    let mut failed: Vec<&str> = r
        .findings
        .iter()
        .filter(|f| f.level == Level::Fail)
        .map(|f| f.area)
        .collect();
    failed.dedup();
    let warnings = r.findings.iter().filter(|f| f.level == Level::Warn).count();
    let verdict = if failed.is_empty() {
        format!(
            "ready ({warnings} warning{})",
            if warnings == 1 { "" } else { "s" }
        )
    } else {
        format!("cannot run: {}", failed.join(", "))
    };
    if json {
        let findings: Vec<serde_json::Value> = r
            .findings
            .iter()
            .map(
                |f| serde_json::json!({ "level": f.level.label(), "area": f.area, "text": f.text }),
            )
            .collect();
        println!(
            "{}",
            serde_json::json!({ "findings": findings, "will_use": r.uses, "result": verdict })
        );
    } else {
        println!(
            "aegis doctor ({} {})",
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION")
        );
        for f in &r.findings {
            println!("{:<5} {:<12} {}", f.level.label(), f.area, f.text);
        }
        println!("will use: {}", r.uses.join(", "));
        println!("result: {verdict}");
    }
    if worst == Level::Fail {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
