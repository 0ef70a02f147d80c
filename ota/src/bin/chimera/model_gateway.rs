//! `chimera model publish|status`: the online side of model delivery.
//!
//! `publish` announces a signed manifest (retained, QoS 1) on a device's or a group's models
//! topic — or, for a canary, on each chosen member's own topic, chosen as workflows are
//! (stable per model name) — with the URL its files are fetched from, or with none and
//! `--serve BUNDLE_DIR`: then it stays connected and answers the devices' chunk requests
//! from that directory ([`aegis_ota::model_chunks::ChunkServer`]), after checking that the
//! directory holds exactly the manifest's files (a bundle that does not match is never
//! announced).
//!
//! Whom it answers: only the devices this publish targets (the device, the group's
//! members, or the canary's), and only requests for this name and version. The bundle is
//! not secret (every byte is checked against the signed manifest), so this is about load
//! and about sharing the fetch topics: a request for another bundle gets no answer at all
//! from here, as another `chimera` may be serving it — an error answer would end that
//! device's transfer.
//!
//! Gateway state (`--state DIR`), beside the workflow records:
//! - `models-sent.json`: per device and model name, the version announced to it (digest of
//!   the signed manifest, how its files travel, topic, when);
//! - `model-receipts.json`: per device, the last model receipt whose signature verified
//!   with its enrolled key (the signed text: it is verified again whenever it is shown).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aegis_ota::maml;
use aegis_ota::model::{ModelManifest, check_bundle_dir, split_manifest};
use aegis_ota::model_chunks::{ChunkServer, parse_fetch_request};
use aegis_ota::model_wire::{
    Announcement, ModelReceipt, chunk_topic, device_models_topic, group_models_topic,
    parse_model_message,
};
use aegis_ota::receipt::Verdict;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event};
use serde::{Deserialize, Serialize};

use crate::GatewayArgs;
use crate::gateway::{
    Audience, AudienceRules, Registry, Session, To, audience, client_id, read_json, registry,
    runtime, write_json,
};
use crate::json_receipts::{self, JsonReceipt as _};

/// Fetch requests from every device.
const FETCH_FILTER: &str = "aegis/v1/+/ota/fetch";
/// Receipts from every device.
const RECEIPTS_FILTER: &str = "aegis/v1/+/receipts";
/// Lines about one device's bad requests before they are only counted.
const BAD_REQUEST_LINES: u64 = 5;

/// `chimera model publish`.
#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    /// The signed manifest (`chimera model sign`).
    manifest: PathBuf,
    /// An enrolled device the manifest targets.
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    device: Option<String>,
    /// A group the manifest targets (its enrolled members get it).
    #[arg(long)]
    group: Option<String>,
    /// Percentage of the group to send to first (a canary, each on its own topic; the same
    /// members for every version of the model); the rest follows with a publish without it.
    #[arg(long, requires = "group", value_parser = crate::parse_percent)]
    canary: Option<f64>,
    /// Base URL of the bundle's files (`URL/PATH`, http or https): devices download them.
    #[arg(long, conflicts_with = "serve", required_unless_present = "serve")]
    url: Option<String>,
    /// Serve the bundle's files from this directory over MQTT, in chunks, until
    /// --serve-for passes, every targeted device has answered this version with a final
    /// receipt (applied or rolled back), or Ctrl-C.
    #[arg(long)]
    serve: Option<PathBuf>,
    /// How long to serve: seconds, or with a unit (`90s`, `15m`, `2h`). Default: until
    /// every targeted device has answered, or Ctrl-C.
    #[arg(long, requires = "serve", value_parser = parse_duration)]
    serve_for: Option<Duration>,
    #[command(flatten)]
    gw: GatewayArgs,
}

/// A duration: `90`, `90s`, `15m`, `2h` (fractions allowed).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s
        .trim()
        .char_indices()
        .find(|(_, c)| c.is_ascii_alphabetic())
    {
        Some((i, _)) => s.trim().split_at(i),
        None => (s.trim(), "s"),
    };
    let mult = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    let v: f64 = num
        .parse()
        .map_err(|e| format!("{s:?}: {e} (a number of seconds, or 90s, 15m, 2h)"))?;
    Duration::try_from_secs_f64(v * mult)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?}: a positive duration"))
}

/// A base URL as devices take it: `http(s)://host[:port][/path]`, no user information, no
/// query or fragment (file paths are appended), nothing a device would read differently.
fn check_url(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| anyhow::anyhow!("--url {url:?}: http:// or https:// only"))?;
    if let Some(c) = url
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\'))
    {
        anyhow::bail!("--url {url:?}: {c:?} is not allowed in a base URL");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    anyhow::ensure!(!authority.is_empty(), "--url {url:?}: no host");
    anyhow::ensure!(
        !authority.contains('@'),
        "--url {url:?}: no user information (devices refuse it)"
    );
    Ok(())
}

/// What was announced to a device (a `models-sent.json` entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SentModel {
    /// The version.
    pub version: u64,
    /// SHA-256 of the signed manifest's signed part (what receipts name).
    pub digest: String,
    /// `url` or `mqtt`.
    pub via: String,
    /// The base URL (for `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where it was announced.
    pub topic: String,
    /// When (RFC 3339).
    pub sent_at: String,
}

type SentModels = BTreeMap<String, BTreeMap<String, SentModel>>;

/// `chimera model publish`.
pub(crate) fn publish(a: PublishArgs) -> anyhow::Result<()> {
    let shown = a.manifest.display().to_string();
    let signed = crate::read_file(&a.manifest)?;
    let (json, _) = split_manifest(&signed).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    let m = ModelManifest::from_json(&json).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    let digest = aegis_ota::sha256_hex(&json);
    let expires = maml::parse_time(&m.expires_at)
        .ok_or_else(|| anyhow::anyhow!("{shown}: expires_at {:?} is not a time", m.expires_at))?;
    anyhow::ensure!(
        expires > maml::now_s(),
        "{shown} expired at {}: devices would refuse it (pack and sign it again)",
        m.expires_at
    );
    let reg = registry(&a.gw.registry)?;
    let to = match (&a.device, &a.group) {
        (Some(d), None) => To::Device(d),
        (None, Some(g)) => To::Group(g),
        _ => anyhow::bail!("give --device or --group"),
    };
    let canary_key = format!("model:{}", m.name);
    let Audience { devices, topics } = audience(
        &reg,
        &a.gw.registry,
        to,
        a.canary,
        &AudienceRules {
            what: &shown,
            canary_key: &canary_key,
            target_devices: &m.target.devices,
            target_groups: &m.target.groups,
            device_topic: &|d| device_models_topic(d),
            group_topic: &|g| group_models_topic(g),
        },
    )?;
    if let Some(url) = &a.url {
        check_url(url)?;
    }
    let server = match &a.serve {
        Some(dir) => {
            check_bundle_dir(dir, &m.files).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} — the bundle does not match {shown}; nothing announced",
                    dir.display()
                )
            })?;
            Some(ChunkServer::new(dir, &m).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?)
        }
        None => None,
    };
    let text = String::from_utf8(signed)
        .map_err(|_| anyhow::anyhow!("{shown}: a signed manifest is UTF-8 text"))?;
    let payload = Announcement::new(text, a.url.clone()).to_json();
    // What devices parse: refuse to send what they could not read.
    parse_model_message(&payload).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    let via = if a.url.is_some() { "url" } else { "mqtt" };
    let broker = a.gw.broker.resolve()?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut s = Session::connect(&broker, &client_id("model")).await?;
        s.publish_retained(topics.iter().map(|t| (t.clone(), payload.clone())).collect())
            .await?;
        let sent_path = a.gw.state.join("models-sent.json");
        let mut sent: SentModels = read_json(&sent_path)?;
        for (i, d) in devices.iter().enumerate() {
            sent.entry(d.clone()).or_default().insert(
                m.name.clone(),
                SentModel {
                    version: m.version,
                    digest: digest.clone(),
                    via: via.into(),
                    url: a.url.clone(),
                    topic: topics.get(i).unwrap_or(&topics[0]).clone(),
                    sent_at: crate::now_rfc3339(0),
                },
            );
        }
        write_json(&sent_path, &sent)?;
        println!(
            "announced {} version {} (manifest sha256 {}, {} files, {} bytes, {}) on {} for {} device(s){}",
            m.name,
            m.version,
            &digest[..16],
            m.files.len(),
            m.files.iter().map(|f| f.size).sum::<u64>(),
            match &a.url {
                Some(u) => format!("from {u}"),
                None => "over MQTT".into(),
            },
            topics.join(", "),
            devices.len(),
            a.canary
                .map(|p| format!(" (canary {p}%)"))
                .unwrap_or_default()
        );
        match server {
            None => {
                s.close().await;
                Ok(())
            }
            Some(server) => {
                let serving = Serving {
                    server,
                    targeted: devices.iter().cloned().collect(),
                    reg: &reg,
                    state: &a.gw.state,
                    digest: &digest,
                    devices: BTreeMap::new(),
                    answered: BTreeSet::new(),
                    untargeted: BTreeSet::new(),
                    dropped: 0,
                };
                serve(s, serving, a.serve_for).await
            }
        }
    })
}

/// What the broker link reports to the serving loop.
enum Link {
    /// (Re)connected: subscribe again (a clean session forgets subscriptions).
    Up,
    /// The connection failed; the poller retries.
    Down(String),
    /// A message: topic, payload.
    Message(String, Vec<u8>),
}

/// One device's transfer as the gateway sees it.
#[derive(Default)]
struct DeviceTransfer {
    /// Per file, the end of the highest byte range served.
    high: BTreeMap<String, u64>,
    chunks: u64,
    /// Chunks served again (asked again after a timeout or a restart).
    again: u64,
    refused: u64,
    bad: u64,
    /// Last tenth of the bundle reported.
    decile: u64,
}

/// The serving state.
struct Serving<'a> {
    server: ChunkServer,
    targeted: BTreeSet<String>,
    reg: &'a Registry,
    state: &'a Path,
    digest: &'a str,
    devices: BTreeMap<String, DeviceTransfer>,
    /// Targeted devices that answered this version with a final receipt.
    answered: BTreeSet<String>,
    /// Untargeted devices whose requests were ignored (reported once).
    untargeted: BTreeSet<String>,
    /// Answers that could not be queued (the link's queue full while the broker was away).
    dropped: u64,
}

impl Serving<'_> {
    /// Handles one message; true when every targeted device has answered.
    fn handle(&mut self, client: &AsyncClient, topic: &str, payload: &[u8]) -> bool {
        let parts: Vec<&str> = topic.split('/').collect();
        match parts.as_slice() {
            ["aegis", "v1", device, "ota", "fetch"] => self.fetch(client, device, payload),
            ["aegis", "v1", device, "receipts"] => return self.receipt(device, payload),
            _ => {}
        }
        false
    }

    fn fetch(&mut self, client: &AsyncClient, device: &str, payload: &[u8]) {
        if !self.targeted.contains(device) {
            if self.untargeted.insert(device.to_string()) {
                println!("{device}: chunk requests ignored: not targeted by this publish");
            }
            return;
        }
        let t = self.devices.entry(device.to_string()).or_default();
        let req = match parse_fetch_request(payload) {
            Ok(r) => r,
            Err(e) => {
                t.bad += 1;
                if t.bad <= BAD_REQUEST_LINES {
                    println!("{device}: bad fetch request: {e}");
                }
                return;
            }
        };
        if req.name != self.server.name() || req.version != self.server.version() {
            // Another bundle, perhaps served by another gateway: no answer from here.
            return;
        }
        let answer = self.server.answer(&req);
        match &answer.served {
            Ok(n) => {
                t.chunks += 1;
                let high = t.high.entry(req.file.clone()).or_default();
                if req.offset + n <= *high {
                    t.again += 1;
                }
                *high = (*high).max(req.offset + n);
            }
            Err(reason) => {
                t.refused += 1;
                println!("{device}: refused {} at {}: {reason}", req.file, req.offset);
            }
        }
        if let Err(e) =
            client.try_publish(chunk_topic(device), QoS::AtLeastOnce, false, answer.message)
        {
            self.dropped += 1;
            if self.dropped == 1 {
                println!(
                    "answers dropped while the broker link is busy or away ({e}); devices ask again"
                );
            }
        }
        let total = self.server.total_bytes();
        let served: u64 = t.high.values().sum();
        let decile = (served * 10).checked_div(total).unwrap_or(10);
        if decile > t.decile {
            t.decile = decile;
            println!(
                "{device}: {}% of {} version {} served ({served} of {total} bytes, {} chunks, {} again) — {}",
                decile * 10,
                self.server.name(),
                self.server.version(),
                t.chunks,
                t.again,
                req.file
            );
        }
    }

    fn receipt(&mut self, device: &str, payload: &[u8]) -> bool {
        if !json_receipts::is::<ModelReceipt>(payload) {
            return false;
        }
        match json_receipts::record::<ModelReceipt>(self.reg, self.state, device, payload) {
            Err(e) => println!("{device}: UNVERIFIED model receipt, ignored: {e}"),
            Ok(r) => {
                println!("{device}: {}", r.line());
                let ours = r.name == self.server.name()
                    && r.version == self.server.version()
                    && r.manifest_sha256 == self.digest;
                if ours
                    && matches!(r.verdict, Verdict::Applied | Verdict::RolledBack)
                    && self.targeted.contains(device)
                {
                    self.answered.insert(device.to_string());
                }
            }
        }
        self.answered.len() == self.targeted.len()
    }
}

/// Serves chunk requests until `serve_for` passes, every targeted device answered, or
/// Ctrl-C / SIGTERM. The broker connection is kept up through restarts of the broker
/// (the link retries every second and subscribes again when it is back).
async fn serve(
    session: Session,
    mut sv: Serving<'_>,
    serve_for: Option<Duration>,
) -> anyhow::Result<()> {
    let Session {
        client,
        mut events,
        broker,
    } = session;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let closing = Arc::new(AtomicBool::new(false));
    let closing2 = closing.clone();
    let poller = tokio::spawn(async move {
        loop {
            let sent = match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => tx.send(Link::Up),
                Ok(Event::Incoming(Packet::Publish(p))) => tx.send(Link::Message(
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    p.payload.to_vec(),
                )),
                Ok(_) => Ok(()),
                Err(e) => {
                    if closing2.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent = tx.send(Link::Down(broker.explain(&e)));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    sent
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });
    let subscribe = |client: &AsyncClient| {
        for f in [FETCH_FILTER, RECEIPTS_FILTER] {
            if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                println!("cannot subscribe to {f}: {e}");
            }
        }
    };
    subscribe(&client);
    println!(
        "serving {} version {} ({} bytes) to {} device(s){}",
        sv.server.name(),
        sv.server.version(),
        sv.server.total_bytes(),
        sv.targeted.len(),
        serve_for
            .map(|d| format!(" for {:.0} s", d.as_secs_f64()))
            .unwrap_or_else(|| " until every one answers (Ctrl-C ends it)".into())
    );
    let deadline = serve_for.map(|d| tokio::time::Instant::from_std(Instant::now() + d));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut down = false;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => { println!("interrupted: serving ends"); break; }
            _ = term.recv() => { println!("terminated: serving ends"); break; }
            _ = until(deadline) => { println!("--serve-for elapsed: serving ends"); break; }
            link = rx.recv() => match link {
                None => break,
                Some(Link::Up) => {
                    if down {
                        println!("broker connection back: subscribing again");
                        down = false;
                    }
                    subscribe(&client);
                }
                Some(Link::Down(e)) => {
                    if !down {
                        println!("broker connection lost ({e}); retrying every second");
                        down = true;
                    }
                }
                Some(Link::Message(topic, payload)) => {
                    if sv.handle(&client, &topic, &payload) {
                        println!(
                            "every targeted device answered {} version {}: serving ends",
                            sv.server.name(),
                            sv.server.version()
                        );
                        break;
                    }
                }
            }
        }
    }
    for (d, t) in &sv.devices {
        println!(
            "{d}: {} chunks served ({} again), {} refused, {} bad requests",
            t.chunks, t.again, t.refused, t.bad
        );
    }
    closing.store(true, Ordering::Relaxed);
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(2), poller)
        .await
        .is_err()
    {
        println!("the broker link did not close within 2 s");
    }
    let missing: Vec<&String> = sv.targeted.difference(&sv.answered).collect();
    if !missing.is_empty() {
        println!(
            "no final receipt for this version yet from: {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A model the device reports in its status.
#[derive(Debug, Serialize)]
struct Installed {
    name: String,
    version: Option<u64>,
    sha256: Option<String>,
    source: Option<String>,
}

/// A receipt as `model status` shows it: verified (its fields), or not (why; its fields
/// are not shown: nothing in it is trusted).
#[derive(Debug, Serialize)]
struct ReceiptView {
    verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<ModelReceipt>,
    /// Whether it answers the manifest announced from here (None: nothing announced).
    #[serde(skip_serializing_if = "Option::is_none")]
    digest_matches: Option<bool>,
    received_at: String,
}

/// A device's line in `model status`.
#[derive(Debug, Serialize)]
struct ModelRow {
    device: String,
    online: Option<bool>,
    /// What its retained status says runs.
    models: Vec<Installed>,
    /// The transfer under way, as its status reports it.
    transfer: Option<serde_json::Value>,
    /// What was announced to it from here, by model name.
    desired: BTreeMap<String, SentModel>,
    /// Per announced model: in sync, behind, transferring, unknown.
    state: BTreeMap<String, &'static str>,
    /// Its last model receipt that verified when recorded (verified again now).
    last_receipt: Option<ReceiptView>,
    /// A model receipt that arrived while collecting and did not verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    unverified_receipt: Option<String>,
}

/// `chimera model status`.
pub(crate) fn status(wait: Duration, json: bool, gw: &GatewayArgs) -> anyhow::Result<()> {
    let reg = registry(&gw.registry)?;
    let broker = gw.broker.resolve()?;
    let devices: Vec<String> = reg
        .iter()
        .filter(|(_, e)| e["group"] != true)
        .map(|(d, _)| d.clone())
        .collect();
    let mut status: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut unverified: BTreeMap<String, String> = BTreeMap::new();
    let rt = runtime()?;
    rt.block_on(async {
        let mut s = Session::connect(&broker, &client_id("model-status")).await?;
        s.collect(
            &["aegis/v1/+/status", RECEIPTS_FILTER],
            wait,
            |topic, payload| {
                let parts: Vec<&str> = topic.split('/').collect();
                match parts.as_slice() {
                    ["aegis", "v1", device, "status"] => {
                        if let Ok(v) = serde_json::from_slice(payload) {
                            status.insert(device.to_string(), v);
                        }
                    }
                    ["aegis", "v1", device, "receipts"]
                        if json_receipts::is::<ModelReceipt>(payload) =>
                    {
                        match json_receipts::record::<ModelReceipt>(
                            &reg, &gw.state, device, payload,
                        ) {
                            Ok(_) => {
                                unverified.remove(*device);
                            }
                            Err(e) => {
                                unverified.insert(device.to_string(), e.to_string());
                            }
                        }
                    }
                    _ => {}
                }
                false
            },
        )
        .await?;
        s.close().await;
        anyhow::Ok(())
    })?;
    let sent: SentModels = read_json(&gw.state.join("models-sent.json"))?;
    let stored = json_receipts::recorded(json_receipts::Kind::Model, &gw.state)?;
    let rows: Vec<ModelRow> = devices
        .into_iter()
        .map(|d| {
            let st = status.get(&d);
            let models: Vec<Installed> = st
                .and_then(|s| s["models"].as_array())
                .map(|list| {
                    list.iter()
                        .filter_map(|m| {
                            Some(Installed {
                                name: m["name"].as_str()?.to_string(),
                                version: m["version"].as_u64(),
                                sha256: m["sha256"].as_str().map(String::from),
                                source: m["source"].as_str().map(String::from),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let transfer = st.and_then(|s| {
                let t = &s["model_delivery"]["transfer"];
                if t.is_object() {
                    return Some(t.clone());
                }
                s["models"].as_array()?.iter().find_map(|m| {
                    m["ota"].is_object().then(|| {
                        let mut t = m["ota"].clone();
                        t["name"] = m["name"].clone();
                        t
                    })
                })
            });
            let desired = sent.get(&d).cloned().unwrap_or_default();
            let state = desired
                .iter()
                .map(|(name, want)| {
                    let s = if st.is_none() {
                        "unknown"
                    } else if models
                        .iter()
                        .any(|m| &m.name == name && m.version == Some(want.version))
                    {
                        "in sync"
                    } else if transfer
                        .as_ref()
                        .is_some_and(|t| t["name"].as_str() == Some(name.as_str()))
                    {
                        "transferring"
                    } else {
                        "behind"
                    };
                    (name.clone(), s)
                })
                .collect();
            let last_receipt = stored.get(&d).map(|s| {
                match json_receipts::verify::<ModelReceipt>(&reg, &d, s.text.as_bytes()) {
                    Ok(r) => ReceiptView {
                        verified: true,
                        problem: None,
                        digest_matches: desired.get(&r.name).map(|w| w.digest == r.manifest_sha256),
                        receipt: Some(r),
                        received_at: s.received_at.clone(),
                    },
                    Err(e) => ReceiptView {
                        verified: false,
                        problem: Some(e.to_string()),
                        receipt: None,
                        digest_matches: None,
                        received_at: s.received_at.clone(),
                    },
                }
            });
            ModelRow {
                online: st.map(|s| s["state"] == "online"),
                models,
                transfer,
                desired,
                state,
                last_receipt,
                unverified_receipt: unverified.get(&d).cloned(),
                device: d,
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<7} {:<34} {:<26} {:<22} last model receipt",
        "device", "online", "installed", "announced", "transfer"
    );
    for r in &rows {
        let installed = if r.models.is_empty() {
            "-".to_string()
        } else {
            r.models
                .iter()
                .map(|m| {
                    format!(
                        "{} {}{}",
                        m.name,
                        m.version
                            .map_or("(unversioned)".into(), |v| format!("v{v}")),
                        if m.source.as_deref() == Some("ota") {
                            " (ota)"
                        } else {
                            ""
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let announced = if r.desired.is_empty() {
            "-".to_string()
        } else {
            r.desired
                .iter()
                .map(|(n, s)| format!("{n} v{} {}", s.version, r.state[n]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let transfer = r.transfer.as_ref().map_or("-".to_string(), |t| {
            format!(
                "{} v{} {:.1}%{}",
                t["name"].as_str().unwrap_or("?"),
                t["version"].as_u64().unwrap_or(0),
                t["percent"].as_f64().unwrap_or(0.0),
                t["via"]
                    .as_str()
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default()
            )
        });
        let mut receipt = match &r.last_receipt {
            None => "-".to_string(),
            Some(v) => match (&v.receipt, &v.problem) {
                (Some(x), _) => format!(
                    "{} {} v{}{}{} (signature ok{})",
                    x.verdict.as_str(),
                    x.name,
                    x.version,
                    if x.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", x.reason)
                    },
                    format_args!(" at {}", x.at),
                    match v.digest_matches {
                        Some(false) => ", NOT the manifest announced from here",
                        _ => "",
                    }
                ),
                (None, p) => format!("UNVERIFIED ({})", p.as_deref().unwrap_or("?")),
            },
        };
        if let Some(u) = &r.unverified_receipt {
            receipt.push_str(&format!(" — and an UNVERIFIED one just now ({u})"));
        }
        println!(
            "{:<20} {:<7} {:<34} {:<26} {:<22} {}",
            r.device,
            match r.online {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            installed,
            announced,
            transfer,
            receipt
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_urls() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "0", "-1s", "5d", "m", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        check_url("https://models.example/bundles/m-4").unwrap();
        check_url("http://10.0.0.2:8080").unwrap();
        for bad in [
            "ftp://x/y",
            "https://",
            "https://u:p@h/b",
            "https://h/b?sig=1",
            "https://h/b#x",
            "https://h/ b",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
