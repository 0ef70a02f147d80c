//! `chimera firmware order|verify|publish`: write a signed firmware order
//! (`aegis-firmware-v1`) for an image file, run a device's checks on one (both offline),
//! and publish one to its devices' and groups' firmware topics ([`crate::firmware_gateway`]).
//! docs/appliance.md, "Firmware A/B".

use std::path::PathBuf;

use aegis_ota::firmware::{
    FirmwareContext, FirmwareOrder, ORDER_TYPE, sign_order, swupdate, verify_order,
};
use aegis_ota::maml::Target;
use aegis_ota::sign::SecretKey;
use clap::Subcommand;

use crate::read_file;

/// Longest validity of a firmware order.
const MAX_ORDER_VALIDITY_S: i64 = 90 * 86_400;

/// `chimera firmware …`.
#[derive(Subcommand)]
pub(crate) enum FirmwareCommand {
    /// Write a signed firmware order for an image file (its SHA-256 and size are computed
    /// here): devices of the target whose image family, board and updater match install
    /// it into their inactive slot. Validated as devices validate it before it is signed;
    /// never overwrites a file.
    Order(Box<OrderArgs>),
    /// Run a device's checks on a signed order, against signed trust metadata and what
    /// the device is (its id and groups, image family, board, running version, download
    /// allow-list, last sequence). Exits non-zero when the device would refuse it.
    Verify(Box<VerifyArgs>),
    /// Publish a signed order (retained, QoS 1) to the firmware topic of every device and
    /// group its target names, after checking it as far as a gateway can (with
    /// `--trust-metadata`: its signature, the issuer's grant and targets too).
    Publish(Box<crate::firmware_gateway::PublishArgs>),
}

#[derive(clap::Args, Debug)]
pub(crate) struct OrderArgs {
    /// The image file (the signed `.swu`).
    #[arg(long)]
    file: PathBuf,
    /// The image family.
    #[arg(long, default_value = "aegis-image")]
    image: String,
    /// Its version, MAJOR.MINOR.PATCH.
    #[arg(long)]
    version: String,
    /// Allow devices running a newer version to go down to this one (the issuer needs
    /// the `upgrades_and_downgrades` grant).
    #[arg(long)]
    downgrade: bool,
    /// The board it is built for (`jetson-orin-nano-devkit`).
    #[arg(long)]
    board: String,
    /// The updater that installs it.
    #[arg(long, default_value = swupdate::NAME)]
    updater: String,
    /// Where devices download it (https; its host must be in their allow-list).
    #[arg(long)]
    url: String,
    /// Target device ids.
    #[arg(long, required_unless_present = "group")]
    device: Vec<String>,
    /// Target groups.
    #[arg(long)]
    group: Vec<String>,
    /// Sequence number: strictly increasing per issuer key and target.
    #[arg(long)]
    sequence: u64,
    /// Issuer name (its trust metadata entry needs a `firmware` grant).
    #[arg(long, default_value = "fleet-gw-1")]
    issuer: String,
    /// The issuer's secret key file.
    #[arg(long)]
    key: PathBuf,
    /// Validity from now: a number and a unit, `s`, `m`, `h` or `d` (at most 90 days).
    #[arg(long, default_value = "7d", value_parser = parse_validity)]
    expires_in: i64,
    /// The signed order to write; never overwritten.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The signed order.
    order: PathBuf,
    /// Signed trust metadata, as the device holds it.
    #[arg(long)]
    trust_metadata: PathBuf,
    /// Root public key files that must have signed it.
    #[arg(long, required = true)]
    root: Vec<PathBuf>,
    /// Valid root signatures needed (default: the metadata's own `root.threshold`).
    #[arg(long)]
    threshold: Option<u32>,
    /// The device id.
    #[arg(long)]
    device: String,
    /// Its groups.
    #[arg(long)]
    group: Vec<String>,
    /// Its image family.
    #[arg(long, default_value = "aegis-image")]
    image: String,
    /// Its board.
    #[arg(long)]
    board: String,
    /// Its updater.
    #[arg(long, default_value = swupdate::NAME)]
    updater: String,
    /// The version it runs.
    #[arg(long)]
    running_version: String,
    /// Hosts it downloads images from.
    #[arg(long = "download-host")]
    download_hosts: Vec<String>,
    /// It allows plain http downloads.
    #[arg(long)]
    allow_http: bool,
    /// Largest image it accepts, MiB.
    #[arg(long, default_value_t = 8192)]
    max_image_mb: u64,
    /// The last sequence it accepted from this issuer key for this target.
    #[arg(long, default_value_t = 0)]
    last_sequence: u64,
}

fn parse_validity(s: &str) -> Result<i64, String> {
    crate::parse_span_s(s, MAX_ORDER_VALIDITY_S)
}

/// `chimera firmware …`.
pub(crate) fn firmware(what: FirmwareCommand) -> anyhow::Result<()> {
    match what {
        FirmwareCommand::Order(args) => order(*args),
        FirmwareCommand::Verify(args) => verify(*args),
        FirmwareCommand::Publish(args) => crate::firmware_gateway::publish(*args),
    }
}

/// SHA-256 and size of a file, streamed.
fn hash_file(path: &std::path::Path) -> anyhow::Result<(String, u64)> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let size = std::io::copy(&mut f, &mut h)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, size))
}

fn order(a: OrderArgs) -> anyhow::Result<()> {
    let key = SecretKey::read(&a.key)?;
    let (sha256, size) = hash_file(&a.file)?;
    let now = aegis_ota::maml::now_s();
    let order = FirmwareOrder {
        kind_tag: ORDER_TYPE.into(),
        image: a.image,
        version: a.version,
        downgrade: a.downgrade,
        board: a.board,
        updater: a.updater,
        sha256,
        size,
        url: a.url,
        issuer: a.issuer,
        target: Target {
            devices: a.device,
            groups: a.group,
        },
        issued_at: aegis_ota::maml::format_time(now),
        expires_at: aegis_ota::maml::format_time(now + a.expires_in),
        sequence: a.sequence,
    };
    // Validated before signing: devices would refuse what the format refuses.
    let signed = sign_order(&order.to_json(), &key).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::model::write_new(&a.out, &signed)?;
    println!(
        "{}: {} {} for {} ({} bytes, sha256 {}), sequence {}, signed by {}, expires {}",
        a.out.display(),
        order.image,
        order.version,
        order.board,
        order.size,
        order.sha256,
        order.sequence,
        key.public().id(),
        order.expires_at
    );
    Ok(())
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let (trust, now) = crate::docs::checked_trust(&a.trust_metadata, &a.root, a.threshold)?;
    let bytes = read_file(&a.order)?;
    let ctx = FirmwareContext {
        identity: aegis_ota::device::Identity {
            id: a.device,
            groups: a.group,
        },
        image: a.image,
        board: a.board,
        updater: a.updater,
        running_version: a.running_version,
        now_s: now,
        max_clock_skew_s: 300,
        max_image_bytes: a.max_image_mb.saturating_mul(1 << 20),
        download_hosts: a.download_hosts,
        https_only: !a.allow_http,
        max_sequence_jump: 1000,
    };
    let last = a.last_sequence;
    let v = verify_order(&bytes, &trust, &ctx, &|_| last)
        .map_err(|e| anyhow::anyhow!("REFUSED: {e}"))?;
    let o = &v.order;
    println!(
        "ok  {} {} for {} via {} ({} bytes, sha256 {}) from {}\n\
         ok  signed by {} ({}), target {:?} / {:?}, sequence {}, valid until {}\n\
         ok  order digest {}",
        o.image,
        o.version,
        o.board,
        o.updater,
        o.size,
        o.sha256,
        o.url,
        o.issuer,
        v.signer.id(),
        o.target.devices,
        o.target.groups,
        o.sequence,
        o.expires_at,
        v.digest
    );
    Ok(())
}
