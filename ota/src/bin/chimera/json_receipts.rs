//! Device-signed receipts in JSON — model receipts ([`ModelReceipt`]) and firmware receipts
//! ([`FirmwareReceipt`]): the JSON on one line, then the device's signature block. They
//! travel on the receipts topic (`aegis/v1/{device}/receipts`) beside workflow receipts
//! (YAML front matter) and the agents' unsigned rejection notices (JSON without a
//! signature), and are told apart by the `type` of their first line ([`Kind::of`]).
//!
//! The gateway treats every kind the same way, so it is written once here: verify with the
//! device's enrolled key, check that the receipt names that device, and keep the last one
//! per device in the kind's state file (the signed text as received, verified again
//! whenever it is shown). What each kind means (which manifest or order it answers) is
//! its own module's business (`model_gateway`, `firmware`).

use std::collections::BTreeMap;
use std::path::Path;

use aegis_ota::firmware::{self, FirmwareReceipt};
use aegis_ota::model_wire::{MODEL_RECEIPT_TYPE, ModelReceipt};
use aegis_ota::receipt::ReceiptError;
use aegis_ota::sign::PublicKey;
use serde::{Deserialize, Serialize};

use crate::gateway::{Registry, device_key, read_json, write_json};

/// A kind of device-signed JSON receipt, as the gateway handles it.
pub(crate) trait JsonReceipt: Sized {
    /// The kind, as [`Kind::of`] tells it.
    const KIND: Kind;
    /// Verifies `text`'s signature by `key`, then parses it (its `type` checked).
    fn verify(text: &[u8], key: &PublicKey) -> Result<Self, ReceiptError>;
    /// The device it says it is from.
    fn device(&self) -> &str;
    /// One line about it for the console (after the device's name).
    fn line(&self) -> String;
}

/// The kinds of JSON receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// [`ModelReceipt`].
    Model,
    /// [`FirmwareReceipt`].
    Firmware,
}

impl Kind {
    /// The kind of `payload` (from a receipts topic): its first line is JSON whose `type`
    /// is a JSON receipt's. Says nothing about its signature; `None` for anything else
    /// (a workflow receipt, a notice, garbage).
    pub(crate) fn of(payload: &[u8]) -> Option<Kind> {
        #[derive(Deserialize)]
        struct Tag {
            #[serde(rename = "type")]
            kind: String,
        }
        let first = payload.split(|b| *b == b'\n').next().unwrap_or_default();
        let tag = serde_json::from_slice::<Tag>(first).ok()?;
        [Kind::Model, Kind::Firmware]
            .into_iter()
            .find(|k| k.type_tag() == tag.kind)
    }

    /// Its `type`.
    pub(crate) fn type_tag(self) -> &'static str {
        match self {
            Kind::Model => MODEL_RECEIPT_TYPE,
            Kind::Firmware => firmware::RECEIPT_TYPE,
        }
    }

    /// What it is called in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Model => "model receipt",
            Kind::Firmware => "firmware receipt",
        }
    }

    /// The file in the gateway's state directory that keeps the last one per device.
    pub(crate) fn file(self) -> &'static str {
        match self {
            Kind::Model => "model-receipts.json",
            Kind::Firmware => "firmware-receipts.json",
        }
    }

    /// [`record`] for this kind: the line to print, or why it does not verify.
    pub(crate) fn record_line(
        self,
        reg: &Registry,
        state: &Path,
        device: &str,
        payload: &[u8],
    ) -> anyhow::Result<String> {
        Ok(match self {
            Kind::Model => record::<ModelReceipt>(reg, state, device, payload)?.line(),
            Kind::Firmware => record::<FirmwareReceipt>(reg, state, device, payload)?.line(),
        })
    }
}

/// A recorded receipt (an entry of a kind's state file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredReceipt {
    /// The signed text as received.
    pub(crate) text: String,
    /// When it arrived (RFC 3339).
    pub(crate) received_at: String,
}

/// Whether `payload` is a receipt of kind `R` (by its `type`; no signature checked).
pub(crate) fn is<R: JsonReceipt>(payload: &[u8]) -> bool {
    Kind::of(payload) == Some(R::KIND)
}

/// Verifies a receipt of kind `R` from `device` with its enrolled key: the signature, the
/// `type`, and that it names `device` (another device's receipt replayed on this topic is
/// refused). The error says why.
pub(crate) fn verify<R: JsonReceipt>(
    reg: &Registry,
    device: &str,
    payload: &[u8],
) -> anyhow::Result<R> {
    let key = device_key(reg, device)
        .ok_or_else(|| anyhow::anyhow!("{device:?} is not an enrolled device"))?;
    let r = R::verify(payload, &key)?;
    anyhow::ensure!(
        r.device() == device,
        "signed by {device:?}'s key but names device {:?}",
        r.device()
    );
    Ok(r)
}

/// [`verify`], then, when it verifies, records it as the device's last in the kind's state
/// file. Nothing is recorded when it does not verify.
pub(crate) fn record<R: JsonReceipt>(
    reg: &Registry,
    state: &Path,
    device: &str,
    payload: &[u8],
) -> anyhow::Result<R> {
    let r = verify::<R>(reg, device, payload)?;
    let path = state.join(R::KIND.file());
    let mut stored = recorded(R::KIND, state)?;
    stored.insert(
        device.to_string(),
        StoredReceipt {
            text: String::from_utf8_lossy(payload).into_owned(),
            received_at: crate::now_rfc3339(0),
        },
    );
    write_json(&path, &stored)?;
    Ok(r)
}

/// The receipts of `kind` recorded in `state`, by device (none when the file does not
/// exist yet).
pub(crate) fn recorded(
    kind: Kind,
    state: &Path,
) -> anyhow::Result<BTreeMap<String, StoredReceipt>> {
    read_json(&state.join(kind.file()))
}

impl JsonReceipt for ModelReceipt {
    const KIND: Kind = Kind::Model;

    fn verify(text: &[u8], key: &PublicKey) -> Result<Self, ReceiptError> {
        ModelReceipt::verify(text, key)
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn line(&self) -> String {
        format!(
            "model {} version {}: {}{} (active {}) — signature ok{}",
            self.name,
            self.version,
            self.verdict.as_str(),
            reason(&self.reason),
            self.active_version
                .map_or("none".to_string(), |v| format!("version {v}")),
            self.total_ms
                .map(|m| format!(", {m:.0} ms"))
                .unwrap_or_default()
        )
    }
}

impl JsonReceipt for FirmwareReceipt {
    const KIND: Kind = Kind::Firmware;

    fn verify(text: &[u8], key: &PublicKey) -> Result<Self, ReceiptError> {
        FirmwareReceipt::verify(text, key)
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn line(&self) -> String {
        format!(
            "firmware {} {}: {}{} (runs {}{}, order sha256 {}) — signature ok",
            self.image,
            self.version,
            self.verdict.as_str(),
            reason(&self.reason),
            self.running_version,
            self.slot
                .map(|s| format!(" in slot {s}"))
                .unwrap_or_default(),
            self.order_sha256.get(..16).unwrap_or(&self.order_sha256)
        )
    }
}

/// ` (REASON)`, or nothing.
fn reason(r: &str) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" ({r})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_receipts_are_told_from_workflow_receipts_and_notices() {
        assert_eq!(
            Kind::of(b"{\"type\":\"model-receipt\",\"device\":\"d\"}\n```signature\n"),
            Some(Kind::Model)
        );
        assert_eq!(
            Kind::of(b"{\"type\":\"firmware-receipt\",\"device\":\"d\"}\n```signature\n"),
            Some(Kind::Firmware)
        );
        assert!(is::<FirmwareReceipt>(b"{\"type\":\"firmware-receipt\"}"));
        assert!(!is::<ModelReceipt>(b"{\"type\":\"firmware-receipt\"}"));
        for other in [
            &b"{\"type\":\"rejection-notice\",\"reason\":\"x\"}"[..],
            b"{\"type\":\"aegis-firmware-order\"}",
            b"---\nworkflow_id: x\n",
            b"{\"kind\":\"firmware-receipt\"}",
            b"",
            b"\xff\xfe",
        ] {
            assert_eq!(Kind::of(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}
