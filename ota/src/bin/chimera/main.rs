//! `chimera`: the gateway CLI for MAML workflows. Offline: keys, trust metadata, enrolment,
//! templates, sealing, signing, verification. Online ([`gateway`]): publishing over MQTT,
//! receipt verification, fleet status and reconciliation.

mod gateway;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aegis_ota::maml;
use aegis_ota::seal::{PUBLIC_KEY_SUFFIX, SECRET_KEY_SUFFIX, SealPublic, SealSecret};
use aegis_ota::sign::{PublicKey, Purpose, SecretKey};
use aegis_ota::trust::{Issuer, Roots, TrustMetadata};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chimera",
    version,
    about = "Aegis Edge gateway CLI: MAML workflows"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make an ML-DSA-65 key pair: PREFIX.key (secret, 0600, never overwritten) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a valid, unsigned workflow template.
    New {
        /// Output file (`.maml.md`); never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Issuer name (origin: chimera://ISSUER).
        #[arg(long, default_value = "fleet-gw-1")]
        issuer: String,
        /// Target device ids.
        #[arg(long, required_unless_present = "group")]
        device: Vec<String>,
        /// Target groups.
        #[arg(long)]
        group: Vec<String>,
        /// Sequence number (strictly increasing per issuer key and target).
        #[arg(long, default_value_t = 1)]
        sequence: u64,
        /// Validity in days from now.
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// Sign a workflow: appends the ```signature block (the signed bytes are the file as is,
    /// CRLF normalised to LF).
    Sign {
        /// The workflow.
        file: PathBuf,
        /// Secret key file.
        #[arg(long)]
        key: PathBuf,
        /// Output (default: FILE with `.signed` before `.maml.md`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the device-side checks that need no device state and print each: with
    /// `--trust-metadata` (and `--root`) the issuer, target, time, replay (fresh state) and
    /// default policy checks too.
    Verify {
        /// The signed workflow.
        file: PathBuf,
        /// Trusted issuer public key files (without trust metadata).
        #[arg(long = "trust")]
        trust: Vec<PathBuf>,
        /// Signed trust metadata to check against (as the device would).
        #[arg(long)]
        trust_metadata: Option<PathBuf>,
        /// Root public key files that must have signed the trust metadata.
        #[arg(long)]
        root: Vec<PathBuf>,
        /// Valid signatures needed from the --root keys: the device's current threshold
        /// (`workflows.trust.threshold`, or the root threshold of the metadata it holds).
        /// Default: the threshold the metadata itself declares (`root.threshold`) — give the
        /// device's own when checking a root rotation, as a stolen root key can write
        /// metadata that declares threshold 1.
        #[arg(long)]
        threshold: Option<u32>,
        /// The device to check for.
        #[arg(long)]
        device: Option<String>,
        /// Its groups.
        #[arg(long)]
        group: Vec<String>,
        /// ML-KEM secret key files to open a sealed document with (a device's or a group's).
        #[arg(long)]
        open: Vec<PathBuf>,
    },
    /// Make an ML-KEM-768 key pair for sealing: PREFIX.kem.key (0600) and PREFIX.kem.pub
    /// (devices: `aegis provision` makes theirs; groups: made here and sealed to members).
    KemKeygen {
        /// Path prefix.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a group's sealing key and deliver it, sealed and signed, to every enrolled member
    /// (`aegis provision --group-key FILE --issuer GW.pub` installs it on a device).
    GroupKey {
        /// Group name.
        #[arg(long)]
        group: String,
        /// The device registry.
        #[arg(long, default_value = "devices.json")]
        registry: PathBuf,
        /// The gateway's signing key (deliveries are signed).
        #[arg(long)]
        key: PathBuf,
        /// Where the group key and the deliveries go.
        #[arg(long)]
        out: PathBuf,
    },
    /// Seal a workflow's body for recipients (before signing): AES-256-GCM under a random
    /// content key, the key encapsulated with ML-KEM-768 for each recipient.
    Seal {
        /// The unsigned workflow.
        file: PathBuf,
        /// Recipients: ML-KEM public key files, or device/group names in the registry.
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        /// The device registry (`chimera enroll`).
        #[arg(long, default_value = "devices.json")]
        registry: PathBuf,
        /// Output (default: FILE with `.sealed` before `.maml.md`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
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
    /// key, digest and mirror against what was sent. Exits non-zero if any fails.
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
    Enroll {
        /// Device id.
        device: String,
        /// The device's ML-DSA public key file (from `aegis provision`).
        pubkey: PathBuf,
        /// Groups.
        #[arg(long)]
        group: Vec<String>,
        /// The device's ML-KEM public key file (for `chimera seal --to DEVICE`).
        #[arg(long)]
        kem: Option<PathBuf>,
        /// The registry file.
        #[arg(long, default_value = "devices.json")]
        registry: PathBuf,
    },
}

/// Where the gateway talks and keeps its records.
#[derive(clap::Args, Clone)]
struct GatewayArgs {
    /// The MQTT 5 broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// The device registry (`chimera enroll`).
    #[arg(long, default_value = "devices.json")]
    registry: PathBuf,
    /// The gateway's records (sent.json, receipts.json).
    #[arg(long, default_value = "chimera-state")]
    state: PathBuf,
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

fn parse_percent(s: &str) -> Result<f64, String> {
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
    /// Allow an issuer key to sign workflows for some devices and groups (`*` = any).
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

fn now_rfc3339(offset_days: i64) -> String {
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
        Command::Keygen { out } => {
            let key = SecretKey::generate()?;
            let secret = out.with_extension("key");
            let public = out.with_extension("pub");
            key.write(&secret)?;
            key.public().write(&public)?;
            println!(
                "{} (secret, 0600)\n{} (public)\nkey id {}",
                secret.display(),
                public.display(),
                key.public().id()
            );
        }
        Command::New {
            out,
            issuer,
            device,
            group,
            sequence,
            days,
        } => {
            let (id, issued, expires) = (uuid_v4()?, now_rfc3339(0), now_rfc3339(i64::from(days)));
            let devices: Vec<&str> = device.iter().map(String::as_str).collect();
            let groups: Vec<&str> = group.iter().map(String::as_str).collect();
            let draft = maml::Draft {
                id: &id,
                issuer: &issuer,
                devices: &devices,
                groups: &groups,
                sequence,
                issued_at: &issued,
                expires_at: &expires,
            };
            let text = maml::workflow_text(&draft, maml::TEMPLATE_PIPELINE);
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            f.write_all(text.as_bytes())
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            println!("{}", out.display());
        }
        Command::Sign { file, key, out } => {
            let key = SecretKey::read(&key)?;
            let doc = read_file(&file)?;
            if maml::split_signed(&doc).is_ok() {
                anyhow::bail!("{} is already signed", file.display());
            }
            let mut out_bytes = maml::normalise(&doc);
            // The signature block starts on a line of its own.
            if !out_bytes.ends_with(b"\n") {
                out_bytes.push(b'\n');
            }
            // Sign only what parses: a gateway must not sign a document devices will refuse.
            maml::parse(&out_bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let block = key.sign_block(&out_bytes, Purpose::Workflow)?;
            out_bytes.extend_from_slice(block.render().as_bytes());
            let out = out.unwrap_or_else(|| derived_name(&file, "signed"));
            write_file(&out, out_bytes)?;
            println!("{} signed by {}", out.display(), key.public().id());
        }
        Command::Bench { runs } => bench(runs.max(2))?,
        Command::Publish {
            file,
            to,
            canary,
            gw,
        } => gateway::publish(&file, &to, canary, &gw.broker, &gw.registry, &gw.state)?,
        Command::WatchReceipts { count, timeout, gw } => gateway::watch_receipts(
            &gw.broker,
            &gw.registry,
            &gw.state,
            count.max(1),
            std::time::Duration::from_secs_f64(timeout.max(0.1)),
        )?,
        Command::Fleet { what } => match what {
            FleetCommand::Status { wait, json, gw } => gateway::fleet_status(
                &gw.broker,
                &gw.registry,
                &gw.state,
                std::time::Duration::from_secs_f64(wait.max(0.1)),
                json,
            )?,
            FleetCommand::Reconcile { wait, gw } => gateway::fleet_reconcile(
                &gw.broker,
                &gw.registry,
                &gw.state,
                std::time::Duration::from_secs_f64(wait.max(0.1)),
            )?,
        },
        Command::GroupKey {
            group,
            registry,
            key,
            out,
        } => {
            let signer = SecretKey::read(&key)?;
            let mut reg: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&read_file(&registry)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", registry.display()))?;
            create_dir(&out)?;
            // A rerun rotates the key: members are whoever is enrolled in the group now (a
            // device re-enrolled without the group is left out), and `seal --to GROUP`
            // uses only the new key from then on.
            let gk = SealSecret::generate()?;
            let stem = aegis_ota::seal::group_key_stem(&group, gk.public());
            gk.write(&out.join(format!("{stem}{SECRET_KEY_SUFFIX}")))?;
            gk.public()
                .write(&out.join(format!("{stem}{PUBLIC_KEY_SUFFIX}")))?;
            let members: Vec<(String, String)> = reg
                .iter()
                .filter(|(_, e)| {
                    e["groups"]
                        .as_array()
                        .is_some_and(|g| g.iter().any(|x| x == group.as_str()))
                })
                .filter_map(|(d, e)| Some((d.clone(), e["kem_key"].as_str()?.to_string())))
                .collect();
            anyhow::ensure!(
                !members.is_empty(),
                "no enrolled device with an ML-KEM key is in group {group:?}"
            );
            for (device, kem) in &members {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(kem)
                    .map_err(|e| {
                        anyhow::anyhow!("{}: {device}'s kem_key: {e}", registry.display())
                    })?;
                let member = SealPublic::from_bytes(&bytes).map_err(|e| {
                    anyhow::anyhow!("{}: {device}'s kem_key: {e}", registry.display())
                })?;
                let mut text =
                    aegis_ota::seal::group_key_delivery(&group, &gk, &member)?.into_bytes();
                let block = signer.sign_block(&text, Purpose::KeyDelivery)?;
                text.extend_from_slice(block.render().as_bytes());
                write_file(&out.join(format!("{group}.for-{device}.delivery")), text)?;
            }
            let pub_line = gk
                .public()
                .to_file_text()
                .lines()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let mut retired: Vec<serde_json::Value> = reg
                .get(&group)
                .and_then(|g| g["retired"].as_array().cloned())
                .unwrap_or_default();
            if let Some(old) = reg.get(&group).and_then(|g| g["key_id"].as_str()) {
                retired.push(old.into());
            }
            reg.insert(group.clone(), serde_json::json!({ "group": true, "kem_key": pub_line, "key_id": gk.public().id(), "retired": retired }));
            write_file(&registry, serde_json::to_vec_pretty(&reg)?)?;
            println!(
                "group {group}: key {} delivered to {} members in {}",
                gk.public().id(),
                members.len(),
                out.display()
            );
        }
        Command::KemKeygen { out } => {
            let key = SealSecret::generate()?;
            // PREFIX.kem.key / PREFIX.kem.pub (the suffixes without their leading dot).
            let (secret, public) = (
                out.with_extension(&SECRET_KEY_SUFFIX[1..]),
                out.with_extension(&PUBLIC_KEY_SUFFIX[1..]),
            );
            key.write(&secret)?;
            key.public().write(&public)?;
            println!(
                "{} (secret, 0600)\n{} (public)\nkey id {}",
                secret.display(),
                public.display(),
                key.public().id()
            );
        }
        Command::Seal {
            file,
            to,
            registry,
            out,
        } => {
            let reg = read_registry(&registry)?;
            let mut recipients = Vec::new();
            for r in &to {
                let p = PathBuf::from(r);
                if p.exists() {
                    recipients.push(SealPublic::read(&p)?);
                } else {
                    let kem = reg
                        .get(r)
                        .and_then(|e| e.get("kem_key"))
                        .and_then(|k| k.as_str())
                        .ok_or_else(|| anyhow::anyhow!("{r:?} is neither a key file nor a device/group with an ML-KEM key in {}", registry.display()))?;
                    use base64::Engine as _;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(kem)
                        .map_err(|e| {
                            anyhow::anyhow!("{}: {r}'s kem_key: {e}", registry.display())
                        })?;
                    recipients.push(SealPublic::from_bytes(&bytes).map_err(|e| {
                        anyhow::anyhow!("{}: {r}'s kem_key: {e}", registry.display())
                    })?);
                }
            }
            let text = String::from_utf8(maml::normalise(&read_file(&file)?))
                .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text: {e}", file.display()))?;
            maml::parse(text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let sealed = aegis_ota::seal::seal(&text, &recipients)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let out = out.unwrap_or_else(|| derived_name(&file, "sealed"));
            write_file(&out, sealed)?;
            println!(
                "{} sealed for {}",
                out.display(),
                recipients
                    .iter()
                    .map(|r| r.id())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Command::Verify {
            file,
            trust,
            trust_metadata,
            root,
            threshold,
            device,
            group,
            open,
        } => {
            let doc = read_file(&file)?;
            let open_keys = open
                .iter()
                .map(|p| SealSecret::read(p))
                .collect::<Result<Vec<_>, _>>()?;
            let open_refs: Vec<&SealSecret> = open_keys.iter().collect();
            let v = match trust_metadata {
                None => {
                    anyhow::ensure!(
                        !trust.is_empty(),
                        "give --trust KEY.pub or --trust-metadata with --root"
                    );
                    let keys = trust
                        .iter()
                        .map(|p| PublicKey::read(p))
                        .collect::<Result<Vec<_>, _>>()?;
                    aegis_ota::verify_document(&doc, &keys, &open_refs)
                        .map_err(|e| anyhow::anyhow!("REFUSED: {e}"))?
                }
                Some(tm) => {
                    let roots = root
                        .iter()
                        .map(|p| PublicKey::read(p))
                        .collect::<Result<Vec<_>, _>>()?;
                    anyhow::ensure!(!roots.is_empty(), "--trust-metadata needs --root ROOT.pub");
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    let tm_bytes = read_file(&tm)?;
                    let (needed, source) = root_threshold(&tm_bytes, threshold).map_err(|e| {
                        anyhow::anyhow!("REFUSED trust metadata {}: {e}", tm.display())
                    })?;
                    let meta = TrustMetadata::verify_update(&tm_bytes, &roots, needed, 0, now)
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "REFUSED trust metadata {}: {e} (threshold {needed}, {source})",
                                tm.display()
                            )
                        })?;
                    println!(
                        "ok  trust metadata version {} (expires {}): {} of the {} --root keys \
                         signed it, threshold {needed} ({source})",
                        meta.version,
                        meta.expires_at,
                        root_signers(&tm_bytes, &roots),
                        roots.len()
                    );
                    let me = aegis_ota::device::Identity {
                        id: device
                            .ok_or_else(|| anyhow::anyhow!("--trust-metadata needs --device ID"))?,
                        groups: group,
                    };
                    let policy = aegis_ota::device::Policy {
                        source_hosts: vec!["*".into()],
                        paths: vec!["/".into()],
                        ..Default::default()
                    };
                    let v = aegis_ota::device::check(
                        &doc,
                        &meta,
                        &me,
                        &policy,
                        &Default::default(),
                        now,
                        &open_refs,
                    )
                    .map_err(|e| anyhow::anyhow!("REFUSED: {e}"))?;
                    println!(
                        "ok  issuer may target {:?} / {:?}; time valid now; sequence {} (fresh state)",
                        v.document.front.target.devices,
                        v.document.front.target.groups,
                        v.document.front.sequence
                    );
                    v
                }
            };
            println!(
                "ok  size {} bytes (limit {})",
                doc.len(),
                maml::MAX_DOCUMENT_BYTES
            );
            println!(
                "ok  signature {} by {}",
                aegis_ota::sign::ALG,
                v.signer.id()
            );
            println!(
                "ok  front matter: {} sequence {}",
                v.document.front.id, v.document.front.sequence
            );
            match &v.pipeline {
                Some(p) => println!(
                    "ok  pipeline: {} sources, {} stages, {} sinks",
                    p.sources.len(),
                    p.stages.len(),
                    p.sinks.len()
                ),
                None => println!("--  no Pipeline section"),
            }
            println!("sha256 {}", v.digest);
            println!("not checked here: this device's replay state and time floor, its own policy");
        }
        Command::Root {
            what: RootCommand::Init { dir },
        } => {
            create_dir(&dir)?;
            let key = SecretKey::generate()?;
            key.write(&dir.join("root.key"))?;
            key.public().write(&dir.join("root.pub"))?;
            let draft = TrustMetadata {
                kind: "aegis-trust".into(),
                version: 0,
                expires_at: now_rfc3339(365),
                root: Roots {
                    threshold: 1,
                    keys: vec![b64_pub(&dir.join("root.pub"))?],
                },
                issuers: vec![],
                revoked: vec![],
            };
            write_draft(&dir.join("trust.json"), draft)?;
            println!(
                "root key {} in {} (keep root.key offline)",
                key.public().id(),
                dir.display()
            );
        }
        Command::Root {
            what: RootCommand::SignTrust { trust, keys, out },
        } => {
            let draft = read_draft(&trust)?;
            let keys = keys
                .iter()
                .map(|k| SecretKey::read(k))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&SecretKey> = keys.iter().collect();
            write_file(&out, draft.sign(&refs)?)?;
            println!(
                "{} (version {}, {} signatures)",
                out.display(),
                draft.version,
                refs.len()
            );
        }
        Command::Trust { what } => match what {
            TrustCommand::AddIssuer {
                trust,
                name,
                key,
                devices,
                groups,
            } => {
                let mut t = read_draft(&trust)?;
                let k = b64_pub(&key)?;
                t.issuers.retain(|i| i.name != name);
                t.issuers.push(Issuer {
                    name,
                    key: k,
                    devices,
                    groups,
                });
                write_draft(&trust, t)?;
            }
            TrustCommand::Revoke { trust, key_id } => {
                let mut t = read_draft(&trust)?;
                anyhow::ensure!(
                    key_id.starts_with("mldsa65:"),
                    "{key_id:?} is not a key id (mldsa65:…)"
                );
                if !t.revoked.contains(&key_id) {
                    t.revoked.push(key_id);
                }
                write_draft(&trust, t)?;
            }
            TrustCommand::Rotate {
                trust,
                new_roots,
                threshold,
            } => {
                let mut t = read_draft(&trust)?;
                anyhow::ensure!(
                    threshold >= 1 && threshold as usize <= new_roots.len(),
                    "threshold must be 1..={}",
                    new_roots.len()
                );
                t.root = Roots {
                    threshold,
                    keys: new_roots
                        .iter()
                        .map(|p| b64_pub(p))
                        .collect::<Result<_, _>>()?,
                };
                write_draft(&trust, t)?;
            }
        },
        Command::Enroll {
            device,
            pubkey,
            group,
            kem,
            registry,
        } => {
            let key = PublicKey::read(&pubkey)?;
            let mut reg = read_registry(&registry)?;
            let kem_key = match &kem {
                Some(p) => {
                    // Validated (with the key file checks), then stored as base64.
                    use base64::Engine as _;
                    let k = SealPublic::read(p)?;
                    Some(base64::engine::general_purpose::STANDARD.encode(k.to_bytes()))
                }
                None => None,
            };
            reg.insert(device.clone(), serde_json::json!({ "signing_key": b64_pub(&pubkey)?, "key_id": key.id(), "groups": group, "kem_key": kem_key }));
            write_file(&registry, serde_json::to_vec_pretty(&reg)?)?;
            println!("enrolled {device} ({}) in {}", key.id(), registry.display());
        }
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
