//! Signed firmware orders: how the fleet asks a device to install a firmware image into its
//! inactive A/B slot, what the device checks before it downloads a byte
//! ([`verify_order`]), and the device-signed receipt that answers it ([`FirmwareReceipt`]).
//! The updater that writes the slot, switches the boot slot and confirms it is behind
//! [`updater::Updater`] ([`swupdate::SwUpdate`] on a device, [`simulated::SimulatedBoard`]
//! in tests); the device's record of the order under way, kept outside the A/B slots, is
//! [`state::FirmwareState`].
//!
//! An order is JSON (as model manifests: written by a tool, one reading of each value,
//! duplicate and unknown fields refused) followed by exactly one ```` ```signature ````
//! block made with [`Purpose::Firmware`] (`aegis-firmware-v1`) by an issuer of the trust
//! metadata whose entry grants `firmware` ([`FirmwareGrant`]); at most
//! [`MAX_ORDER_BYTES`]. The signature is verified before any JSON is read; the signed bytes
//! are then parsed once, and the parsed, verified form ([`VerifiedOrder`]) is what every
//! later step uses.
//!
//! ```json
//! {
//!   "type": "aegis-firmware-order",
//!   "image": "aegis-image",               // the image family; must be the device's
//!   "version": "1.4.0",                   // MAJOR.MINOR.PATCH, above the running one…
//!   "downgrade": false,                   // …unless true (and the issuer may downgrade)
//!   "board": "jetson-orin-nano-devkit",   // must be the device's board
//!   "updater": "swupdate",                // must be the device's updater
//!   "sha256": "…64 hex…",                 // of the image file (the signed .swu)
//!   "size": 734003200,                    // its size in bytes, within the policy's limit
//!   "url": "https://updates.example/aegis-image-1.4.0.swu",
//!   "issuer": "fleet-gw-1",
//!   "target": { "devices": [], "groups": ["site-a"] },
//!   "issued_at": "2026-12-04T10:00:00Z",
//!   "expires_at": "2026-12-11T10:00:00Z",
//!   "sequence": 7                         // strictly increasing per issuer key and target
//! }
//! ```
//!
//! This module decides whether bytes are an order this device may act on; it downloads,
//! writes and reboots nothing.

pub mod simulated;
pub mod state;
pub mod swupdate;
pub mod updater;

use serde::{Deserialize, Serialize};

use crate::device::Identity;
use crate::maml::{self, Target};
use crate::receipt::{ReceiptError, Verdict};
use crate::sign::{PublicKey, Purpose, SecretKey, SignError};
use crate::trust::{FirmwareGrant, TrustMetadata};

pub use updater::Slot;

/// `type` of every firmware order.
pub const ORDER_TYPE: &str = "aegis-firmware-order";
/// `type` of a firmware receipt.
pub const RECEIPT_TYPE: &str = "firmware-receipt";
/// Largest signed order accepted (bytes): an order names an image, it never carries one.
pub const MAX_ORDER_BYTES: usize = 16 * 1024;
/// Longest URL in an order (bytes).
pub const MAX_URL_LEN: usize = 2048;
/// The updaters this agent can drive ([`updater::Updater`] implementations for devices).
pub const UPDATERS: &[&str] = &[swupdate::NAME];

/// The device's firmware topic: signed orders for this device, retained (the fleet link
/// subscribes to it and to its groups' topics when firmware updates are on).
pub fn device_topic(device: &str) -> String {
    format!("aegis/v1/{device}/firmware")
}

/// A group's firmware topic (retained orders for the group's devices).
pub fn group_topic(group: &str) -> String {
    format!("aegis/v1/groups/{group}/firmware")
}

/// A firmware order (the signed part of a signed order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareOrder {
    /// Always [`ORDER_TYPE`].
    #[serde(rename = "type")]
    pub kind_tag: String,
    /// The image family (1 to 64 of `[a-z0-9_-]`): a device installs only its own.
    pub image: String,
    /// The image's version, `MAJOR.MINOR.PATCH`.
    pub version: String,
    /// Whether the order may install a version below the running one. Only an issuer
    /// granted [`FirmwareGrant::UpgradesAndDowngrades`] may say so.
    #[serde(default)]
    pub downgrade: bool,
    /// The board the image is built for (`jetson-orin-nano-devkit`), compared exactly
    /// with the device's.
    pub board: String,
    /// The updater that installs it (one of [`UPDATERS`]), compared with the device's.
    pub updater: String,
    /// Lowercase hex SHA-256 of the image file.
    pub sha256: String,
    /// The image file's size in bytes (at least 1).
    pub size: u64,
    /// Where the image is downloaded from (`https`, or `http` where the policy allows it).
    pub url: String,
    /// Issuer name: must be the trust metadata issuer whose key signed it.
    pub issuer: String,
    /// Devices and groups it is for.
    pub target: Target,
    /// RFC 3339 UTC.
    pub issued_at: String,
    /// RFC 3339 UTC: refused after.
    pub expires_at: String,
    /// Anti-replay: strictly increasing per issuer key and target (at least 1).
    pub sequence: u64,
}

/// What a device knows when it decides about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareContext {
    /// Who this device is.
    pub identity: Identity,
    /// The image family it runs.
    pub image: String,
    /// Its board.
    pub board: String,
    /// The updater it has (one of [`UPDATERS`]).
    pub updater: String,
    /// The version of the firmware running now (`MAJOR.MINOR.PATCH`).
    pub running_version: String,
    /// Trusted time (seconds since the epoch; the caller applies its time floor).
    pub now_s: i64,
    /// Clock skew tolerated for `issued_at` in the future, seconds.
    pub max_clock_skew_s: i64,
    /// Largest image accepted (policy), bytes.
    pub max_image_bytes: u64,
    /// Hosts an image may be downloaded from (the rules of
    /// [`crate::device::host_allowed`]; empty: none).
    pub download_hosts: Vec<String>,
    /// Refuse `http` URLs.
    pub https_only: bool,
    /// Largest accepted step of the sequence (fast-forward guard).
    pub max_sequence_jump: u64,
}

/// Why an order was refused; each names the field and the values that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirmwareRejection {
    /// The device's trust metadata vouches for nothing now.
    #[error("trust: {0}")]
    Trust(String),
    /// Size, encoding or signature-block shape, before any JSON is read.
    #[error("format: {0}")]
    Format(String),
    /// Algorithm, key lookup (unknown or revoked) or the signature itself.
    #[error("signature: {0}")]
    Signature(SignError),
    /// The signed bytes are not a valid order (after the signature verified).
    #[error("order: {0}")]
    Order(String),
    /// The signing issuer may not order firmware.
    #[error(
        "issuer {issuer} may not order firmware (its trust metadata entry grants no `firmware`)"
    )]
    NotFirmwareIssuer {
        /// The issuer.
        issuer: String,
    },
    /// The order's `issuer` is not the issuer whose key signed it.
    #[error("issuer {claimed:?} is not the signing issuer {signer:?}")]
    IssuerMismatch {
        /// The `issuer` field.
        claimed: String,
        /// The signer's issuer name.
        signer: String,
    },
    /// Not for this device, or for a device or group its issuer may not target.
    #[error(transparent)]
    Target(#[from] crate::issued::TargetRefusal),
    /// `issued_at` is in the future beyond the tolerated skew.
    #[error("time: issued_at {issued_at} is after now ({now}) plus {skew_s} s of skew")]
    NotYetValid {
        /// `issued_at`.
        issued_at: String,
        /// Trusted time.
        now: String,
        /// Tolerated skew.
        skew_s: i64,
    },
    /// `expires_at` has passed.
    #[error("time: the order expired at {expires_at} (now {now})")]
    Expired {
        /// `expires_at`.
        expires_at: String,
        /// Trusted time.
        now: String,
    },
    /// Another image family.
    #[error("image: the order installs {ordered:?}, this device runs {device:?}")]
    WrongImage {
        /// The order's image.
        ordered: String,
        /// This device's.
        device: String,
    },
    /// Another board.
    #[error("board: the image is built for {ordered:?}, this device is {device:?}")]
    WrongBoard {
        /// The order's board.
        ordered: String,
        /// This device's.
        device: String,
    },
    /// An updater this device does not have.
    #[error(
        "updater: {ordered:?} is not this device's updater {device:?} (this agent drives {known:?})"
    )]
    UnknownUpdater {
        /// The order's updater.
        ordered: String,
        /// This device's.
        device: String,
        /// What this agent can drive.
        known: &'static [&'static str],
    },
    /// The sequence is not above the last one accepted (a replay).
    #[error(
        "replay: sequence {sequence} is not above {last}, the last accepted from this issuer key for this target"
    )]
    Replayed {
        /// The order's sequence.
        sequence: u64,
        /// The last accepted.
        last: u64,
    },
    /// The sequence jumps too far (a fast-forward that would lock out later orders).
    #[error(
        "replay: sequence {sequence} jumps more than {limit} past the last accepted {last}: fast-forward refused"
    )]
    FastForward {
        /// The order's sequence.
        sequence: u64,
        /// The last accepted.
        last: u64,
        /// The policy's largest step.
        limit: u64,
    },
    /// The device's own running version does not parse: no version order can be shown.
    #[error("version: this device's running version {running:?} is not MAJOR.MINOR.PATCH")]
    RunningVersionUnknown {
        /// What the device reported.
        running: String,
    },
    /// The ordered version runs already.
    #[error("version: {version} runs already")]
    AlreadyRunning {
        /// The version.
        version: String,
    },
    /// Below the running version and the order does not say `downgrade: true`.
    #[error(
        "version: {ordered} is below the running {running} and the order does not say `downgrade: true`"
    )]
    DowngradeNotOrdered {
        /// The order's version.
        ordered: String,
        /// The running version.
        running: String,
    },
    /// A downgrade by an issuer not granted downgrades.
    #[error(
        "version: {ordered} is below the running {running}; issuer {issuer} may order upgrades only (its grant is not `upgrades_and_downgrades`)"
    )]
    DowngradeNotAllowed {
        /// The order's version.
        ordered: String,
        /// The running version.
        running: String,
        /// The issuer.
        issuer: String,
    },
    /// The image is larger than the policy allows.
    #[error("size: the image is {size} bytes, above the limit of {limit}")]
    TooLarge {
        /// The order's size.
        size: u64,
        /// Policy limit.
        limit: u64,
    },
    /// The URL is not one the device downloads from.
    #[error("url {url:?}: {reason}")]
    Url {
        /// The URL (without user information).
        url: String,
        /// Why.
        reason: String,
    },
}

impl FirmwareRejection {
    /// Whether the signature verified before this refusal (so a signed receipt may name
    /// the order): every rejection after the signature check.
    pub fn authenticated(&self) -> bool {
        !matches!(
            self,
            FirmwareRejection::Trust(_)
                | FirmwareRejection::Format(_)
                | FirmwareRejection::Signature(_)
        )
    }
}

impl From<crate::issued::Unverified> for FirmwareRejection {
    fn from(e: crate::issued::Unverified) -> FirmwareRejection {
        use crate::issued::Unverified;
        match e {
            Unverified::Trust(why) => FirmwareRejection::Trust(why),
            Unverified::Format(why) => FirmwareRejection::Format(why),
            Unverified::Signature(e) => FirmwareRejection::Signature(e),
        }
    }
}

/// An order that passed every check of [`verify_order`]. Only this module makes one
/// (`non_exhaustive`): what the device installs and answers comes from the checks, never
/// from a caller.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifiedOrder {
    /// The parsed order (parsed once, from the signed bytes).
    pub order: FirmwareOrder,
    /// The key that signed it.
    pub signer: PublicKey,
    /// SHA-256 of the signed bytes (what receipts and the state name).
    pub digest: String,
    /// The anti-replay key of its sequence: the signer's key id and the canonical target.
    pub replay_key: String,
}

/// `MAJOR.MINOR.PATCH` as numbers (the rule of model manifests' `min_agent_version`).
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    crate::model::parse_version(v)
}

/// Names of images, boards and updaters: 1 to 64 of `[A-Za-z0-9._-]`, not starting with
/// `.` or `-`.
fn check_word(field: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with(['.', '-'])
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} {v:?}: 1 to 64 of letters, digits, `.`, `_`, `-`, not starting with `.` or `-`"
        ))
    }
}

impl FirmwareOrder {
    /// Parses and validates order JSON (no signature involved): every rule of the format,
    /// nothing about the device.
    pub fn from_json(bytes: &[u8]) -> Result<FirmwareOrder, FirmwareRejection> {
        let o: FirmwareOrder =
            serde_json::from_slice(bytes).map_err(|e| FirmwareRejection::Order(e.to_string()))?;
        o.validate()?;
        Ok(o)
    }

    /// The format's rules.
    pub fn validate(&self) -> Result<(), FirmwareRejection> {
        let bad = |m: String| Err(FirmwareRejection::Order(m));
        if self.kind_tag != ORDER_TYPE {
            return bad(format!("type {:?} is not {ORDER_TYPE}", self.kind_tag));
        }
        crate::model::check_name(&self.image)
            .map_err(|e| FirmwareRejection::Order(format!("image: {e}")))?;
        if parse_version(&self.version).is_none() {
            return bad(format!(
                "version {:?} is not MAJOR.MINOR.PATCH",
                self.version
            ));
        }
        check_word("board", &self.board).map_err(FirmwareRejection::Order)?;
        check_word("updater", &self.updater).map_err(FirmwareRejection::Order)?;
        if !crate::model::is_sha256_hex(&self.sha256) {
            return bad(format!(
                "sha256 {:?} is not 64 lowercase hex digits",
                self.sha256
            ));
        }
        if self.size == 0 {
            return bad("size 0: an image has bytes".into());
        }
        if self.url.is_empty()
            || self.url.len() > MAX_URL_LEN
            || self
                .url
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return bad(format!(
                "url: 1 to {MAX_URL_LEN} bytes without spaces or control characters"
            ));
        }
        if self.issuer.is_empty() {
            return bad("issuer is empty".into());
        }
        if self.target.devices.is_empty() && self.target.groups.is_empty() {
            return bad("target names no device and no group".into());
        }
        let time = |field: &str, v: &str| {
            maml::parse_time(v).ok_or_else(|| {
                FirmwareRejection::Order(format!("{field} {v:?} is not RFC 3339 UTC"))
            })
        };
        let issued = time("issued_at", &self.issued_at)?;
        let expires = time("expires_at", &self.expires_at)?;
        if expires <= issued {
            return bad(format!(
                "expires_at {} is not after issued_at {}",
                self.expires_at, self.issued_at
            ));
        }
        if self.sequence == 0 {
            return bad("sequence 0: sequences start at 1".into());
        }
        Ok(())
    }

    /// The order JSON as `chimera firmware order` signs it (pretty, ending in a newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("an order serialises");
        out.push(b'\n');
        out
    }
}

/// Signs order JSON: validates it (a gateway must not sign what devices refuse), then
/// appends one signature block for [`Purpose::Firmware`]. The signed bytes are the
/// LF-normalised JSON, ending in a newline.
pub fn sign_order(json: &[u8], key: &SecretKey) -> Result<Vec<u8>, FirmwareRejection> {
    crate::issued::sign_json(
        json,
        key,
        Purpose::Firmware,
        "firmware order",
        MAX_ORDER_BYTES,
        |out| FirmwareOrder::from_json(out).map(|_| ()),
        FirmwareRejection::from,
    )
}

/// What a receipt names of an order refused after its signature verified
/// ([`FirmwareRejection::authenticated`]): the digest of its signed part (SHA-256) and the
/// image and version that part says, read without checking anything else (empty where the
/// JSON lacks them). None: not one signed block.
pub fn order_head(bytes: &[u8]) -> Option<OrderHead> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        image: String,
        #[serde(default)]
        version: String,
    }
    let (signed, _) = crate::issued::split_one(bytes, "firmware order", MAX_ORDER_BYTES).ok()?;
    let head: Head = serde_json::from_slice(&signed).unwrap_or(Head {
        image: String::new(),
        version: String::new(),
    });
    Some(OrderHead {
        digest: crate::sha256_hex(&signed),
        image: head.image,
        version: head.version,
    })
}

/// See [`order_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderHead {
    /// SHA-256 of the signed part.
    pub digest: String,
    /// Its `image` (empty when absent).
    pub image: String,
    /// Its `version` (empty when absent).
    pub version: String,
}

/// The anti-replay key of an order's sequence: `<signer key id>|<canonical target>` (the
/// workflows' scheme, so a gateway allocates firmware sequences the same way).
pub fn replay_key(key_id: &str, target: &Target) -> String {
    format!("{key_id}|{}", target.canonical())
}

/// The device-side checks of a signed order, before anything is downloaded, in this order:
/// trust metadata valid now → size and one signature block → algorithm → issuer key known
/// and not revoked → signature (`aegis-firmware-v1`) → JSON and format rules → the issuer
/// may order firmware and is the one named → target (this device, and the issuer may
/// target every device and group named) → `issued_at` not beyond trusted time plus skew,
/// `expires_at` after it → image family, board and updater are this device's → sequence
/// above the last accepted for this key and target (`last_sequence`), by at most the
/// policy's jump → version: above the running one, or below it when the order says
/// `downgrade: true` and the issuer may order downgrades (the same version is refused) →
/// size within the policy → URL: `https` (or `http` if allowed), no user information, the
/// host in the allow-list.
///
/// `last_sequence(replay_key)` is the last sequence accepted under that key (0: none),
/// from [`state::FirmwareState::last_sequence`].
pub fn verify_order(
    bytes: &[u8],
    trust: &TrustMetadata,
    ctx: &FirmwareContext,
    last_sequence: &dyn Fn(&str) -> u64,
) -> Result<VerifiedOrder, FirmwareRejection> {
    let s = crate::issued::verify_signature(
        bytes,
        trust,
        ctx.now_s,
        "firmware order",
        MAX_ORDER_BYTES,
        Purpose::Firmware,
    )?;
    // From here on the bytes are the issuer's: parsed once.
    let o = FirmwareOrder::from_json(&s.signed)?;
    check_issuer(&o, &s.issuer)?;
    crate::issued::check_target(
        &s.issuer,
        &o.target.devices,
        &o.target.groups,
        &ctx.identity,
    )?;
    check_time(&o, ctx.now_s, ctx.max_clock_skew_s)?;
    if o.image != ctx.image {
        return Err(FirmwareRejection::WrongImage {
            ordered: o.image,
            device: ctx.image.clone(),
        });
    }
    if o.board != ctx.board {
        return Err(FirmwareRejection::WrongBoard {
            ordered: o.board,
            device: ctx.board.clone(),
        });
    }
    if o.updater != ctx.updater || !UPDATERS.contains(&o.updater.as_str()) {
        return Err(FirmwareRejection::UnknownUpdater {
            ordered: o.updater,
            device: ctx.updater.clone(),
            known: UPDATERS,
        });
    }
    let replay_key = replay_key(s.key.id(), &o.target);
    let last = last_sequence(&replay_key);
    if o.sequence <= last {
        return Err(FirmwareRejection::Replayed {
            sequence: o.sequence,
            last,
        });
    }
    if o.sequence - last > ctx.max_sequence_jump {
        return Err(FirmwareRejection::FastForward {
            sequence: o.sequence,
            last,
            limit: ctx.max_sequence_jump,
        });
    }
    check_version(&o, s.issuer.firmware, &s.issuer.name, &ctx.running_version)?;
    if o.size > ctx.max_image_bytes {
        return Err(FirmwareRejection::TooLarge {
            size: o.size,
            limit: ctx.max_image_bytes,
        });
    }
    check_url(&o.url, &ctx.download_hosts, ctx.https_only)?;
    Ok(VerifiedOrder {
        order: o,
        signer: s.key,
        digest: crate::sha256_hex(&s.signed),
        replay_key,
    })
}

/// The signing issuer may order firmware and is the one the order names.
fn check_issuer(o: &FirmwareOrder, issuer: &crate::trust::Issuer) -> Result<(), FirmwareRejection> {
    if issuer.firmware == FirmwareGrant::None {
        return Err(FirmwareRejection::NotFirmwareIssuer {
            issuer: issuer.name.clone(),
        });
    }
    if o.issuer != issuer.name {
        return Err(FirmwareRejection::IssuerMismatch {
            claimed: o.issuer.clone(),
            signer: issuer.name.clone(),
        });
    }
    Ok(())
}

/// `issued_at` not beyond `now_s` plus `skew_s`, `expires_at` after `now_s`.
fn check_time(o: &FirmwareOrder, now_s: i64, skew_s: i64) -> Result<(), FirmwareRejection> {
    // Both parse: the format's rules checked them.
    let issued = maml::parse_time(&o.issued_at).unwrap_or(i64::MAX);
    if issued > now_s.saturating_add(skew_s) {
        return Err(FirmwareRejection::NotYetValid {
            issued_at: o.issued_at.clone(),
            now: maml::format_time(now_s),
            skew_s,
        });
    }
    if maml::parse_time(&o.expires_at).unwrap_or(i64::MIN) <= now_s {
        return Err(FirmwareRejection::Expired {
            expires_at: o.expires_at.clone(),
            now: maml::format_time(now_s),
        });
    }
    Ok(())
}

/// A signed order as a gateway checked it before publishing it ([`check_for_publish`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublishableOrder {
    /// The parsed order.
    pub order: FirmwareOrder,
    /// SHA-256 of the signed bytes (what devices' receipts name as `order_sha256`).
    pub digest: String,
    /// The id of the key its signature block names.
    pub key_id: String,
    /// Whether that signature was verified against trust metadata (without it, only the
    /// order's shape is known).
    pub signature_verified: bool,
}

/// The checks a gateway makes before it publishes a signed order, for no device in
/// particular, in this order: size and one signature block → algorithm → with trust
/// metadata (`Some`): the metadata valid now, the issuer key known and not revoked, the
/// signature (`aegis-firmware-v1`) → JSON and format rules → with trust metadata: the
/// issuer may order firmware, is the one named, and may target every device and group
/// named → `issued_at` not beyond `now_s` plus `skew_s`, not expired.
///
/// Without trust metadata the JSON is read from bytes whose signature nobody checked
/// (bounded by [`MAX_ORDER_BYTES`], parsed as strictly as devices parse it): the result
/// says so ([`PublishableOrder::signature_verified`]). What only a device knows (its
/// image, board, running version, last sequence, download hosts) is not checked.
pub fn check_for_publish(
    bytes: &[u8],
    trust: Option<&TrustMetadata>,
    now_s: i64,
    skew_s: i64,
) -> Result<PublishableOrder, FirmwareRejection> {
    const WHAT: &str = "firmware order";
    let (signed, key_id, issuer) = match trust {
        Some(t) => {
            let s = crate::issued::verify_signature(
                bytes,
                t,
                now_s,
                WHAT,
                MAX_ORDER_BYTES,
                Purpose::Firmware,
            )?;
            (s.signed, s.key.id().to_string(), Some(s.issuer))
        }
        None => {
            let (signed, block) = crate::issued::split_one(bytes, WHAT, MAX_ORDER_BYTES)
                .map_err(FirmwareRejection::Format)?;
            if block.alg != crate::sign::ALG {
                return Err(FirmwareRejection::Signature(SignError::Algorithm(
                    block.alg,
                )));
            }
            (signed, block.key, None)
        }
    };
    let order = FirmwareOrder::from_json(&signed)?;
    if let Some(issuer) = &issuer {
        check_issuer(&order, issuer)?;
        crate::issued::check_issuer_scope(issuer, &order.target.devices, &order.target.groups)?;
    }
    check_time(&order, now_s, skew_s)?;
    Ok(PublishableOrder {
        order,
        digest: crate::sha256_hex(&signed),
        key_id,
        signature_verified: issuer.is_some(),
    })
}

fn check_version(
    o: &FirmwareOrder,
    grant: FirmwareGrant,
    issuer: &str,
    running: &str,
) -> Result<(), FirmwareRejection> {
    let Some(have) = parse_version(running) else {
        return Err(FirmwareRejection::RunningVersionUnknown {
            running: running.to_string(),
        });
    };
    // The format's rules checked that it parses.
    let want = parse_version(&o.version).unwrap_or_default();
    if want == have {
        return Err(FirmwareRejection::AlreadyRunning {
            version: o.version.clone(),
        });
    }
    if want < have {
        if !o.downgrade {
            return Err(FirmwareRejection::DowngradeNotOrdered {
                ordered: o.version.clone(),
                running: running.to_string(),
            });
        }
        if grant != FirmwareGrant::UpgradesAndDowngrades {
            return Err(FirmwareRejection::DowngradeNotAllowed {
                ordered: o.version.clone(),
                running: running.to_string(),
                issuer: issuer.to_string(),
            });
        }
    }
    Ok(())
}

/// The URL rules: parsed as an HTTP URI, `https` (or `http` unless `https_only`), an
/// authority without user information, its host parsed by the strict rules of
/// [`aegis_config::Host::parse`] (no `127.1`-style numeric forms) and in `hosts`
/// ([`crate::device::host_allowed`]). The downloader connects to this parse, never to the
/// text again.
pub fn check_url(url: &str, hosts: &[String], https_only: bool) -> Result<(), FirmwareRejection> {
    // Credentials never reach a receipt or a log.
    let bad = |reason: String| FirmwareRejection::Url {
        url: crate::receipt::redact(url),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if https_only => {
            return Err(bad(
                "plain http: the device policy downloads over https only".into(),
            ));
        }
        Some("http") => {}
        _ => return Err(bad("the scheme is not http or https".into())),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad("it has no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(bad("it carries user information".into()));
    }
    let text = authority.host();
    let host = aegis_config::Host::parse(text).map_err(|e| bad(format!("host {text:?}: {e}")))?;
    if !crate::device::host_allowed(hosts, &host) {
        return Err(bad(format!(
            "host {host} is not in the device's download allow-list"
        )));
    }
    Ok(())
}

/// The device's answer to a firmware order, signed with its key ([`Purpose::Receipt`]):
/// JSON on one line, then one signature block; `type` is [`RECEIPT_TYPE`], so it never
/// parses as a workflow or model receipt, nor the reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareReceipt {
    /// Always [`RECEIPT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The answering device.
    pub device: String,
    /// The image family ordered.
    pub image: String,
    /// The version ordered.
    pub version: String,
    /// SHA-256 of the signed order answered.
    pub order_sha256: String,
    /// `applied` (the new slot runs and was marked good), `rolled_back` (it was installed
    /// and the device runs the previous slot again) or `rejected` (refused before
    /// anything was installed).
    pub verdict: Verdict,
    /// Why (empty when applied).
    pub reason: String,
    /// The version running when the receipt was signed.
    pub running_version: String,
    /// The slot running then.
    pub slot: Option<Slot>,
    /// Trust metadata version the device held.
    pub trust_version: u64,
    /// When (RFC 3339 UTC).
    pub at: String,
}

impl FirmwareReceipt {
    /// The signed text: the JSON on one line, then the signature block.
    pub fn render_signed(&self, key: &SecretKey) -> Result<String, SignError> {
        crate::receipt::render_json_signed(self, key)
    }

    /// Verifies `text`'s signature by `device_key`, then parses it.
    pub fn verify(text: &[u8], device_key: &PublicKey) -> Result<FirmwareReceipt, ReceiptError> {
        let r: FirmwareReceipt = crate::receipt::verify_json_signed(text, device_key)?;
        if r.kind != RECEIPT_TYPE {
            return Err(ReceiptError::Format(format!(
                "type {:?}, expected {RECEIPT_TYPE:?}",
                r.kind
            )));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests;
