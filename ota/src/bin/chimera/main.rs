//! `chimera`: the gateway CLI for MAML workflows. Offline: keys, trust metadata, enrolment,
//! templates, sealing, signing, verification. Online ([`gateway`]): publishing over MQTT,
//! receipt verification, fleet status and reconciliation; for models
//! ([`model_gateway`]): announcements, the MQTT chunk server, per-device model status.
//! Firmware ([`firmware`]): signed firmware orders and their device-side check; publishing
//! them ([`firmware_gateway`]); model and firmware receipts ([`json_receipts`]).
//! As a service ([`serve`]): the HTTP API over the gateway's persistent state.

mod broker;
mod docs;
mod evidence;
mod firmware;
mod firmware_gateway;
mod gateway;
mod json_receipts;
mod keys;
mod model;
mod model_gateway;
mod serve;
mod trust;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aegis_ota::maml;
use aegis_ota::seal::{PUBLIC_KEY_SUFFIX, SECRET_KEY_SUFFIX, SealPublic, SealSecret};
use aegis_ota::sign::{PublicKey, Purpose, SecretKey};
use aegis_ota::trust::{FirmwareGrant, Issuer, Roots, TrustMetadata};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chimera",
    version,
    about = "Aegis Edge gateway CLI: MAML workflows and model bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make an ML-DSA-65 key pair: PREFIX.key (secret, 0600, never overwritten) and PREFIX.pub.
    Keygen(KeygenArgs),
    /// Write a valid, unsigned workflow template.
    New(NewArgs),
    /// Sign a workflow: appends the ```signature block (the signed bytes are the file as is,
    /// CRLF normalised to LF).
    Sign(SignArgs),
    /// Run the device-side checks that need no device state and print each: with
    /// `--trust-metadata` (and `--root`) the issuer, target, time, replay (fresh state) and
    /// default policy checks too.
    Verify(VerifyArgs),
    /// Make an ML-KEM-768 key pair for sealing: PREFIX.kem.key (0600) and PREFIX.kem.pub
    /// (devices: `aegis provision` makes theirs; groups: made here and sealed to members).
    KemKeygen(KemKeygenArgs),
    /// Make a group's sealing key and deliver it, sealed and signed, to every enrolled member
    /// (`aegis provision --group-key FILE --issuer GW.pub` installs it on a device).
    GroupKey(GroupKeyArgs),
    /// Seal a workflow's body for recipients (before signing): AES-256-GCM under a random
    /// content key, the key encapsulated with ML-KEM-768 for each recipient.
    Seal(SealArgs),
    /// Publish a signed workflow (retained, QoS 1) to a device or a group; `--canary N`
    /// sends it first to N% of the group's members, on their own topics.
    Publish {
        /// The signed workflow.
        file: PathBuf,
        /// A device or a group in the registry.
        #[arg(long)]
        to: String,
        /// Percentage of the group to send to (a canary); the rest follows with a publish
        /// without `--canary`.
        #[arg(long, value_parser = parse_percent)]
        canary: Option<f64>,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Verify devices' `.mu` receipts as they arrive: signature by the device's enrolled
    /// key, digest and mirror against what was sent. Model and firmware receipts are
    /// verified with the same key, printed and recorded (`model-receipts.json`,
    /// `firmware-receipts.json`), not counted. Exits non-zero if any fails.
    WatchReceipts {
        /// Stop after this many receipts.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Fleet desired state: who runs what, who is behind; re-send to those behind.
    Fleet {
        #[command(subcommand)]
        what: FleetCommand,
    },
    /// Crypto costs on this machine: ML-DSA-65 sign/verify, seal/open for 1 and 100
    /// recipients, the full device-side check of a 100 KB document (p50/p99).
    Bench {
        /// Repetitions of each measurement.
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// The offline root: create it, sign trust metadata.
    Root {
        #[command(subcommand)]
        what: RootCommand,
    },
    /// Edit a trust metadata draft (each edit raises its version).
    Trust {
        #[command(subcommand)]
        what: TrustCommand,
    },
    /// Record a device's public keys (and groups) in the gateway's device registry.
    Enroll(EnrollArgs),
    /// Take a device out of the gateway's device registry (`chimera serve device
    /// unenroll` does it in the service); rotate the keys of the groups it was in.
    Unenroll(UnenrollArgs),
    /// Model bundles: pack a directory into a manifest, sign the manifest, announce it to
    /// devices (and serve its files over MQTT), see what devices run, write a signed
    /// rollback order.
    Model {
        #[command(subcommand)]
        what: model::ModelCommand,
    },
    /// Evidence clips exported from devices: verify one against its signed manifest.
    Evidence {
        #[command(subcommand)]
        what: evidence::EvidenceCommand,
    },
    /// Firmware A/B updates: write a signed firmware order for an image, check one as a
    /// device would, publish one to its devices' and groups' firmware topics.
    Firmware {
        #[command(subcommand)]
        what: firmware::FirmwareCommand,
    },
    /// The gateway as a service: HTTP API (OpenAPI at /api/v1/openapi.json), API tokens,
    /// SQLite state; `serve token create` makes API tokens (docs/chimera-serve.md).
    Serve(serve::ServeArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct NewArgs {
    /// Output file (`.maml.md`); never overwritten.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Issuer name (origin: chimera://ISSUER).
    #[arg(long, default_value = "fleet-gw-1")]
    pub(crate) issuer: String,
    /// Target device ids.
    #[arg(long, required_unless_present = "group")]
    pub(crate) device: Vec<String>,
    /// Target groups.
    #[arg(long)]
    pub(crate) group: Vec<String>,
    /// Sequence number (strictly increasing per issuer key and target).
    #[arg(long, default_value_t = 1)]
    pub(crate) sequence: u64,
    /// Validity in days from now.
    #[arg(long, default_value_t = 7)]
    pub(crate) days: u32,
}

#[derive(clap::Args, Debug)]
pub(crate) struct SignArgs {
    /// The workflow.
    pub(crate) file: PathBuf,
    /// Secret key file.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Output (default: FILE with `.signed` before `.maml.md`).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct SealArgs {
    /// The unsigned workflow.
    pub(crate) file: PathBuf,
    /// Recipients: ML-KEM public key files, or device/group names in the registry.
    #[arg(long = "to", required = true)]
    pub(crate) to: Vec<String>,
    /// The device registry (`chimera enroll`).
    #[arg(long, default_value = "devices.json")]
    pub(crate) registry: PathBuf,
    /// Output (default: FILE with `.sealed` before `.maml.md`).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The signed workflow.
    pub(crate) file: PathBuf,
    /// Trusted issuer public key files (without trust metadata).
    #[arg(long = "trust")]
    pub(crate) trust: Vec<PathBuf>,
    /// Signed trust metadata to check against (as the device would).
    #[arg(long)]
    pub(crate) trust_metadata: Option<PathBuf>,
    /// Root public key files that must have signed the trust metadata.
    #[arg(long)]
    pub(crate) root: Vec<PathBuf>,
    /// Valid signatures needed from the --root keys: the device's current threshold
    /// (`workflows.trust.threshold`, or the root threshold of the metadata it holds).
    /// Default: the threshold the metadata itself declares (`root.threshold`) — give the
    /// device's own when checking a root rotation, as a stolen root key can write
    /// metadata that declares threshold 1.
    #[arg(long)]
    pub(crate) threshold: Option<u32>,
    /// The device to check for.
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// Its groups.
    #[arg(long)]
    pub(crate) group: Vec<String>,
    /// ML-KEM secret key files to open a sealed document with (a device's or a group's).
    #[arg(long)]
    pub(crate) open: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct GroupKeyArgs {
    /// Group name.
    #[arg(long)]
    pub(crate) group: String,
    /// The device registry.
    #[arg(long, default_value = "devices.json")]
    pub(crate) registry: PathBuf,
    /// The gateway's signing key (deliveries are signed).
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Where the group key and the deliveries go.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct KemKeygenArgs {
    /// Path prefix.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct KeygenArgs {
    /// Path prefix of the two files.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct EnrollArgs {
    /// Device id.
    pub(crate) device: String,
    /// The device's ML-DSA public key file (from `aegis provision`).
    pub(crate) pubkey: PathBuf,
    /// Groups.
    #[arg(long)]
    pub(crate) group: Vec<String>,
    /// The device's ML-KEM public key file (for `chimera seal --to DEVICE`).
    #[arg(long)]
    pub(crate) kem: Option<PathBuf>,
    /// The registry file.
    #[arg(long, default_value = "devices.json")]
    pub(crate) registry: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct UnenrollArgs {
    /// Device id.
    pub(crate) device: String,
    /// The registry file.
    #[arg(long, default_value = "devices.json")]
    pub(crate) registry: PathBuf,
}

/// Where the gateway talks and keeps its records.
#[derive(clap::Args, Clone)]
pub(crate) struct GatewayArgs {
    /// The MQTT 5 broker, its TLS and credentials.
    #[command(flatten)]
    pub(crate) broker: broker::BrokerArgs,
    /// The device registry (`chimera enroll`).
    #[arg(long, default_value = "devices.json")]
    pub(crate) registry: PathBuf,
    /// The gateway's records (sent.json, receipts.json, models-sent.json,
    /// model-receipts.json, firmware-receipts.json).
    #[arg(long, default_value = "chimera-state")]
    pub(crate) state: PathBuf,
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Each enrolled device: online, what it runs (from its retained status), what it
    /// should run, its last receipt.
    Status {
        /// Seconds to collect retained statuses.
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Re-send the desired workflow to every device that runs something else.
    Reconcile {
        /// Seconds to collect retained statuses.
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
        #[command(flatten)]
        gw: GatewayArgs,
    },
}

/// A span of time as the CLI writes it, `7d`, `12h`, `30m`, `90s`, in seconds: at least
/// 1 s and at most `max_s`.
pub(crate) fn parse_span_s(s: &str, max_s: i64) -> Result<i64, String> {
    let form = || format!("{s:?}: a number then s, m, h or d (`7d`)");
    let unit = match s.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        _ => return Err(form()),
    };
    let n: i64 = s[..s.len() - 1].parse().map_err(|_| form())?;
    match n.checked_mul(unit) {
        Some(v) if (1..=max_s).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: from 1 s to {} days", max_s / 86_400)),
    }
}

fn parse_firmware_grant(s: &str) -> Result<FirmwareGrant, String> {
    match s {
        "upgrades" => Ok(FirmwareGrant::Upgrades),
        "upgrades-and-downgrades" => Ok(FirmwareGrant::UpgradesAndDowngrades),
        _ => Err(format!("{s:?}: `upgrades` or `upgrades-and-downgrades`")),
    }
}

pub(crate) fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|e| format!("{s:?}: {e}"))?;
    if v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err(format!("{s:?}: a percentage above 0 and at most 100"))
    }
}

#[derive(Subcommand)]
enum RootCommand {
    /// Make a root key pair (DIR/root.key, DIR/root.pub) and a version-1 trust draft
    /// (DIR/trust.json) naming it, valid for a year.
    Init {
        /// Directory (created).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Sign a trust draft with one or more root keys (k of n; a rotation needs the old and
    /// the new roots).
    SignTrust {
        /// The draft (JSON).
        #[arg(long)]
        trust: PathBuf,
        /// Root secret key files.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The signed trust metadata file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Allow an issuer key to sign workflows (and, with --models, model manifests; with
    /// --firmware, firmware orders) for some devices and groups (`*` = any).
    AddIssuer {
        /// The draft.
        #[arg(long)]
        trust: PathBuf,
        /// Issuer name (workflows say origin: chimera://NAME).
        #[arg(long)]
        name: String,
        /// Its public key file.
        #[arg(long)]
        key: PathBuf,
        /// Devices it may target.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// Groups it may target.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// It may also ship model bundles to them (signed model manifests). Only agents
        /// that know model manifests read metadata that grants this.
        #[arg(long)]
        models: bool,
        /// It may also order firmware installs for them: `upgrades`, or
        /// `upgrades-and-downgrades`. Only agents that know firmware orders read metadata
        /// that grants this.
        #[arg(long, value_parser = parse_firmware_grant)]
        firmware: Option<FirmwareGrant>,
    },
    /// Revoke a key (by id): its signatures stop verifying once devices have the new version.
    Revoke {
        /// The draft.
        #[arg(long)]
        trust: PathBuf,
        /// Key id (`mldsa65:…`).
        #[arg(long)]
        key_id: String,
    },
    /// Replace the root keys (sign the result with the old and the new roots).
    Rotate {
        /// The draft.
        #[arg(long)]
        trust: PathBuf,
        /// New root public key files.
        #[arg(long = "new-root", required = true)]
        new_roots: Vec<PathBuf>,
        /// Signatures needed from now on.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
    },
}

/// `wf.maml.md` → `wf.TAG.maml.md` (other names get `.TAG` appended).
fn derived_name(file: &Path, tag: &str) -> PathBuf {
    let name = file.to_string_lossy();
    PathBuf::from(match name.strip_suffix(".maml.md") {
        Some(stem) => format!("{stem}.{tag}.maml.md"),
        None => format!("{name}.{tag}"),
    })
}

/// Reads a whole file; the error names it.
pub(crate) fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

/// Writes a whole file; the error names it.
pub(crate) fn write_file(path: &Path, bytes: impl AsRef<[u8]>) -> anyhow::Result<()> {
    std::fs::write(path, bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Creates a directory and its parents; the error names it.
pub(crate) fn create_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| anyhow::anyhow!("cannot create directory {}: {e}", path.display()))
}

/// The device registry (`chimera enroll`): empty when the file does not exist yet; any other
/// read or parse error names the file.
fn read_registry(path: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
}

fn read_draft(path: &Path) -> anyhow::Result<TrustMetadata> {
    let text = read_file(path)?;
    serde_json::from_slice(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn write_draft(path: &Path, mut t: TrustMetadata) -> anyhow::Result<()> {
    t.version += 1;
    write_file(path, serde_json::to_vec_pretty(&t)?)?;
    println!(
        "{} is now version {} (sign it with `chimera root sign-trust`)",
        path.display(),
        t.version
    );
    Ok(())
}

fn b64_pub(path: &Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.encode(PublicKey::read(path)?.to_bytes()))
}

pub(crate) fn now_rfc3339(offset_days: i64) -> String {
    maml::format_time(maml::now_s() + offset_days * 86_400)
}

fn uuid_v4() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random generator: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// The threshold `chimera verify` applies to the --root keys, and where it comes from: the
/// one given, else the one the metadata declares (`root.threshold`, at least 1). The
/// metadata is read here unverified, only for that number; `verify_update` then checks its
/// signatures at that threshold.
fn root_threshold(file: &[u8], given: Option<u32>) -> anyhow::Result<(u32, &'static str)> {
    if let Some(t) = given {
        anyhow::ensure!(t >= 1, "--threshold must be at least 1");
        return Ok((t, "given with --threshold"));
    }
    let (signed, _) = aegis_ota::trust::split(file)?;
    let meta: TrustMetadata = serde_json::from_slice(&signed)?;
    Ok((meta.root.threshold.max(1), "the metadata's root.threshold"))
}

/// How many distinct --root keys made a valid signature over the trust metadata.
fn root_signers(file: &[u8], roots: &[PublicKey]) -> usize {
    let Ok((signed, blocks)) = aegis_ota::trust::split(file) else {
        return 0;
    };
    let mut ids: Vec<String> = blocks
        .iter()
        .filter_map(|b| aegis_ota::sign::verify_block(&signed, b, Purpose::Trust, roots).ok())
        .map(|k| k.id().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen(args) => keys::keygen(args)?,
        Command::New(args) => docs::new(args)?,
        Command::Sign(args) => docs::sign(args)?,
        Command::Bench { runs } => bench(runs.max(2))?,
        Command::Publish {
            file,
            to,
            canary,
            gw,
        } => gateway::publish(
            &file,
            &to,
            canary,
            &gw.broker.resolve()?,
            &gw.registry,
            &gw.state,
        )?,
        Command::WatchReceipts { count, timeout, gw } => gateway::watch_receipts(
            &gw.broker.resolve()?,
            &gw.registry,
            &gw.state,
            count.max(1),
            std::time::Duration::from_secs_f64(timeout.max(0.1)),
        )?,
        Command::Fleet { what } => match what {
            FleetCommand::Status { wait, json, gw } => gateway::fleet_status(
                &gw.broker.resolve()?,
                &gw.registry,
                &gw.state,
                std::time::Duration::from_secs_f64(wait.max(0.1)),
                json,
            )?,
            FleetCommand::Reconcile { wait, gw } => gateway::fleet_reconcile(
                &gw.broker.resolve()?,
                &gw.registry,
                &gw.state,
                std::time::Duration::from_secs_f64(wait.max(0.1)),
            )?,
        },
        Command::GroupKey(args) => keys::group_key(args)?,
        Command::KemKeygen(args) => keys::kem_keygen(args)?,
        Command::Seal(args) => docs::seal(args)?,
        Command::Verify(args) => docs::verify(args)?,
        Command::Root { what } => trust::root(what)?,
        Command::Trust { what } => trust::trust(what)?,
        Command::Enroll(args) => keys::enroll(args)?,
        Command::Unenroll(args) => keys::unenroll(args)?,
        Command::Model { what } => model::model(what)?,
        Command::Evidence { what } => evidence::evidence(what)?,
        Command::Firmware { what } => firmware::firmware(what)?,
        Command::Serve(args) => serve::run(args)?,
    }
    Ok(())
}

fn time_ms(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<(f64, f64)> {
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = std::time::Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    let p = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
    Ok((p(0.5), p(0.99)))
}

fn bench(runs: usize) -> anyhow::Result<()> {
    use aegis_ota::device::{Identity, Policy, ReplayState};
    use aegis_ota::seal;
    let key = SecretKey::generate()?;
    let msg = vec![0x5au8; 4096];
    let sig = key.sign(&msg, Purpose::Workflow)?;
    let row = |what: &str, (p50, p99): (f64, f64)| {
        println!("{what:<44} p50 {p50:>8.3} ms  p99 {p99:>8.3} ms")
    };
    row(
        "ML-DSA-65 sign (4 KB)",
        time_ms(runs, || {
            key.sign(&msg, Purpose::Workflow)
                .map(|_| ())
                .map_err(Into::into)
        })?,
    );
    row(
        "ML-DSA-65 verify (4 KB)",
        time_ms(runs, || {
            key.public()
                .verify(&msg, Purpose::Workflow, &sig)
                .map_err(Into::into)
        })?,
    );
    let doc = maml::template(
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "gw-1",
        "orin-0042",
        1,
        &now_rfc3339(0),
        &now_rfc3339(1),
    );
    for n in [1usize, 100] {
        let keys: Vec<SealSecret> = (0..n)
            .map(|_| SealSecret::generate())
            .collect::<Result<_, _>>()?;
        let pubs: Vec<SealPublic> = keys.iter().map(|k| k.public().clone()).collect();
        let sealed = seal::seal_unbounded(&doc, &pubs)?;
        row(
            &format!("seal for {n} recipient(s) ({} KB)", sealed.len() / 1024),
            time_ms(runs, || {
                seal::seal_unbounded(&doc, &pubs)
                    .map(|_| ())
                    .map_err(Into::into)
            })?,
        );
        let last = &keys[n - 1];
        row(
            &format!("open as recipient {n} of {n}"),
            time_ms(runs, || {
                seal::open(&sealed, &[last]).map(|_| ()).map_err(Into::into)
            })?,
        );
    }
    // A 100 KB document through every device-side check.
    let big = format!(
        "{doc}## Context\n{}\n",
        "lorem ipsum dolor sit amet ".repeat(100 * 1024 / 27)
    );
    let mut signed = maml::normalise(big.as_bytes());
    signed.extend_from_slice(
        key.sign_block(&signed, Purpose::Workflow)?
            .render()
            .as_bytes(),
    );
    let trust = TrustMetadata {
        kind: "aegis-trust".into(),
        version: 1,
        expires_at: now_rfc3339(30),
        root: Roots {
            threshold: 1,
            keys: vec![],
        },
        issuers: vec![Issuer {
            name: "gw-1".into(),
            key: {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(key.public().to_bytes())
            },
            devices: vec!["*".into()],
            groups: vec![],
            models: false,
            firmware: Default::default(),
        }],
        revoked: vec![],
    };
    let me = Identity {
        id: "orin-0042".into(),
        groups: vec![],
    };
    let policy = Policy {
        source_hosts: vec!["*".into()],
        ..Default::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let state = ReplayState::default();
    row(
        &format!("full device check, {} KB document", signed.len() / 1024),
        time_ms(runs, || {
            aegis_ota::device::check(&signed, &trust, &me, &policy, &state, now, &[])
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e}"))
        })?,
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chimera: {e}");
            ExitCode::FAILURE
        }
    }
}
