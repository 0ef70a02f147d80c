//! Firmware orders through the applier (docs/appliance.md): an order on a firmware topic
//! is checked ([`aegis_ota::firmware::verify_order`], before a byte is downloaded) and
//! accepted into the firmware record; its download, install, switch and reboot run on
//! [`crate::firmware`]'s worker. Every authenticated outcome — a refusal now, the result
//! after the reboot — is answered with a signed firmware receipt.

use std::time::Instant;

use aegis_ota::firmware::{FirmwareReceipt, OrderHead, RECEIPT_TYPE, verify_order};
use aegis_ota::receipt::{Verdict, redact};

use super::{Answer, Applier, Reply, Via, ms};
use crate::firmware::{Event, Firmware};

/// Whether `topic` carries firmware orders (a device's or a group's firmware topic).
pub fn is_firmware_topic(topic: &str) -> bool {
    topic.ends_with("/firmware") && topic.starts_with("aegis/v1/")
}

impl Applier {
    /// Firmware updates on this device (None: off).
    pub fn set_firmware(&mut self, f: Firmware) {
        self.firmware = Some(f);
        self.publish_status();
    }

    /// Firmware updates (None: off).
    pub fn firmware(&self) -> Option<&Firmware> {
        self.firmware.as_ref()
    }

    /// A message on a firmware topic.
    pub(super) fn firmware_message(&mut self, t0: Instant, via: Via<'_>, doc: &[u8]) -> Reply {
        let refuse =
            |me: &mut Applier, why: String| me.refuse(t0, via, doc, "firmware.refused", why);
        let Some(fw) = self.firmware.as_ref() else {
            return refuse(self, "firmware updates are off on this device".into());
        };
        let Some((trust, me, now_s, skew)) = self.workflows.model_checks() else {
            return refuse(
                self,
                "trust lost: no firmware order is accepted until the trust metadata is \
                 delivered again"
                    .into(),
            );
        };
        let ctx = fw.context(me.clone(), now_s, skew, self.workflows.max_sequence_jump());
        let checked = {
            let st = fw.state();
            verify_order(doc, trust, &ctx, &|k| st.last_sequence(k))
        };
        let v = match checked {
            Ok(v) => v,
            Err(rej) if !rej.authenticated() => return refuse(self, rej.to_string()),
            Err(rej) => {
                let head = aegis_ota::firmware::order_head(doc).unwrap_or(OrderHead {
                    digest: String::new(),
                    image: String::new(),
                    version: String::new(),
                });
                if let Some(reply) = self.firmware_duplicate(t0, &head.digest) {
                    return reply;
                }
                return self.firmware_answer(head, t0, Verdict::Rejected, rej.to_string());
            }
        };
        if let Some(reply) = self.firmware_duplicate(t0, &v.digest) {
            return reply;
        }
        let fw = self.firmware.as_mut().expect("checked above");
        if let Some(p) = fw.state().pending() {
            // Not answered: the latest order on the topic is delivered again after the
            // reboot, and judged then.
            return Reply {
                verdict: Answer::Duplicate,
                reason: format!(
                    "firmware order {} (version {}) is under way: one at a time",
                    p.digest, p.version
                ),
                receipt: None,
                apply_ms: ms(t0),
            };
        }
        let (digest, version, url) = (
            v.digest.clone(),
            v.order.version.clone(),
            redact(&v.order.url),
        );
        let from = fw.running_version().to_string();
        if let Err(e) = fw.accept(v) {
            tracing::error!(error = %e, "firmware order: cannot record it");
            return Reply {
                verdict: Answer::Refused,
                reason: format!("firmware record: {e}"),
                receipt: None,
                apply_ms: ms(t0),
            };
        }
        self.audit(
            "firmware.accepted",
            format!("sha256 {digest}: version {from} → {version}, image from {url}"),
        );
        self.publish_status();
        Reply {
            verdict: Answer::Started,
            reason: format!("downloading version {version}"),
            receipt: None,
            apply_ms: ms(t0),
        }
    }

    /// An order answered already, or the one under way: no second receipt.
    fn firmware_duplicate(&mut self, t0: Instant, digest: &str) -> Option<Reply> {
        let fw = self.firmware.as_ref()?;
        let st = fw.state();
        let under_way = st.pending().is_some_and(|p| p.digest == digest);
        if !under_way && !st.answered(digest) {
            return None;
        }
        drop(st);
        self.counters
            .duplicates
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Reply {
            verdict: Answer::Duplicate,
            reason: if under_way {
                "this firmware order is under way".into()
            } else {
                "this firmware order was answered already".into()
            },
            receipt: None,
            apply_ms: ms(t0),
        })
    }

    /// Signs and sends a firmware receipt (rejections within the signed-rejection budget);
    /// the digest is remembered as answered.
    fn firmware_answer(
        &mut self,
        n: OrderHead,
        t0: Instant,
        verdict: Verdict,
        reason: String,
    ) -> Reply {
        let reason = redact(&reason);
        if verdict == Verdict::Rejected && !self.signed_rejection_due() {
            self.audit.record(
                "firmware.rejected.unsigned",
                &format!("sha256 {}: answered unsigned (budget): {reason}", n.digest),
            );
            self.notice(&reason);
            return Reply {
                verdict: Answer::Signed(verdict),
                reason,
                receipt: None,
                apply_ms: ms(t0),
            };
        }
        self.audit(
            &format!("firmware.{}", verdict.as_str()),
            format!(
                "{} version {} sha256 {}: {reason}",
                n.image, n.version, n.digest
            ),
        );
        tracing::info!(image = %n.image, version = %n.version, verdict = verdict.as_str(),
            reason = %reason, "firmware order answered");
        let Some(fw) = self.firmware.as_ref() else {
            return Reply {
                verdict: Answer::Signed(verdict),
                reason,
                receipt: None,
                apply_ms: ms(t0),
            };
        };
        // A refusal is remembered here; an order under way is remembered by finish().
        let under_way = fw.state().pending().is_some_and(|p| p.digest == n.digest);
        if !under_way && let Err(e) = fw.state().record_answer(&n.digest) {
            tracing::warn!(error = %e, "cannot remember the answered firmware order");
        }
        let running = fw.running_version().to_string();
        let slot = fw.running_slot();
        fw.set_last(verdict, &reason);
        let receipt = FirmwareReceipt {
            kind: RECEIPT_TYPE.into(),
            device: String::new(),
            image: n.image,
            version: n.version,
            order_sha256: n.digest,
            verdict,
            reason: reason.clone(),
            running_version: running,
            slot,
            trust_version: 0,
            at: String::new(),
        };
        let receipt = match self.workflows.firmware_receipt(receipt) {
            Ok(r) => {
                self.send("firmware-receipt", r.clone().into_bytes());
                Some(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the firmware receipt");
                None
            }
        };
        self.publish_status();
        Reply {
            verdict: Answer::Signed(verdict),
            reason,
            receipt,
            apply_ms: ms(t0),
        }
    }

    /// Handles what the firmware worker reported (from the applier's tick).
    pub(super) fn firmware_events(&mut self) {
        loop {
            let Some(ev) = self.firmware.as_mut().and_then(|f| f.poll()) else {
                return;
            };
            match ev {
                Event::Rebooting(why) => {
                    self.audit("firmware.reboot", why);
                    self.store.flush(std::time::Duration::from_secs(2));
                }
                Event::Ended {
                    verdict,
                    reason,
                    then_boot,
                } => {
                    let Some(p) = self
                        .firmware
                        .as_ref()
                        .and_then(|f| f.state().pending().cloned())
                    else {
                        continue;
                    };
                    let named = OrderHead {
                        digest: p.digest,
                        image: p.image,
                        version: p.version,
                    };
                    let _ = self.firmware_answer(named, Instant::now(), verdict, reason);
                    // The receipt is in the outbox (durably) before the record lets go.
                    self.store.flush(std::time::Duration::from_secs(2));
                    if let Some(f) = self.firmware.as_ref() {
                        if let Err(e) = f.finish() {
                            tracing::error!(error = %e, "firmware record: cannot finish the order");
                        }
                        if let Some(slot) = then_boot {
                            f.boot(slot);
                        }
                    }
                    self.publish_status();
                }
            }
        }
    }
}
