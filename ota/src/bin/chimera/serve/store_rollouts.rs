//! Schema version 4's part of the state: device status, desired state per device, rollouts
//! and their targets. The records the [`Store`](super::store::Store) methods of that part
//! take and return, and their SQLite implementation (the trait methods call these on the
//! store's connection).
//!
//! Claims, not leader election: the rollout engine of any replica may work on a rollout, but
//! only after claiming it ([`claim_rollouts`]): the claim sets a lease and a new `fence`, and
//! every engine write ([`apply_rollout_writes`]) first checks that the fence is still the
//! one it claimed, in the same transaction. A replica that stalled past its lease (another
//! replica claimed it since) or whose rollout an operator paused or aborted (which bumps the
//! fence too) writes nothing. SQLite serialises the claim with `BEGIN IMMEDIATE` (and runs as
//! one replica anyway); PostgreSQL takes the rows with `SELECT … FOR UPDATE SKIP LOCKED`.
//! Each function's doc states its SQL semantics for that port.
//!
//! Facts from devices (a verified receipt, a status) are written without a fence: they are
//! idempotent, and each only moves a target forward from a state that waits for it.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RolloutState {
    /// Its engine publishes step after step.
    Running,
    /// Nothing is published or decided until it is resumed.
    Paused,
    /// The failure budget was exceeded: the rollback document goes to every device that got
    /// the rollout's document.
    RollingBack,
    /// Every step passed.
    Completed,
    /// The failure budget was exceeded and there is no rollback document: it stopped; the
    /// devices that applied the document keep it.
    Halted,
    /// The failure budget was exceeded and the rollback document was published.
    RolledBack,
    /// An operator stopped it (no rollback).
    Aborted,
}

impl RolloutState {
    /// The word stored and shown.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::Completed => "completed",
            RolloutState::Halted => "halted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    /// The state a stored word names.
    pub(crate) fn from_word(s: &str) -> Option<RolloutState> {
        Some(match s {
            "running" => RolloutState::Running,
            "paused" => RolloutState::Paused,
            "rolling_back" => RolloutState::RollingBack,
            "completed" => RolloutState::Completed,
            "halted" => RolloutState::Halted,
            "rolled_back" => RolloutState::RolledBack,
            "aborted" => RolloutState::Aborted,
            _ => return None,
        })
    }

    fn parse(s: &str) -> rusqlite::Result<RolloutState> {
        Self::from_word(s).ok_or_else(|| bad_word("rollout state", s))
    }

    /// The states an engine works in (claimable).
    pub(crate) const ACTIVE: [RolloutState; 2] = [RolloutState::Running, RolloutState::RollingBack];

    /// The states a rollout holds its devices in (no second rollout may target them).
    pub(crate) const HOLDING: [RolloutState; 3] = [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::RollingBack,
    ];
}

/// Where one device of a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TargetState {
    /// Its step has not been published.
    Pending,
    /// Sent; its answer is awaited.
    Published,
    /// It answered with a verified `applied` receipt for the document (mirror matching).
    Applied,
    /// It answered with a verified negative receipt (`rejected`, `rolled_back`, `revoked`, or
    /// `applied` with a mirror that does not match what was sent).
    Negative,
    /// No verified answer within the answer timeout although the device was online.
    Missing,
    /// No answer within the timeout, and the device was not seen online since it was sent:
    /// not counted against the budget; reconciled when it comes back.
    Offline,
    /// The device was un-enrolled while the rollout was unfinished: nothing more is sent
    /// to it, and it counts neither way (an answer it gave before stays in `verdict`).
    Unenrolled,
}

impl TargetState {
    /// The word stored and shown.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TargetState::Pending => "pending",
            TargetState::Published => "published",
            TargetState::Applied => "applied",
            TargetState::Negative => "negative",
            TargetState::Missing => "missing",
            TargetState::Offline => "offline",
            TargetState::Unenrolled => "unenrolled",
        }
    }

    /// The state a stored word names.
    pub(crate) fn from_word(s: &str) -> Option<TargetState> {
        Some(match s {
            "pending" => TargetState::Pending,
            "published" => TargetState::Published,
            "applied" => TargetState::Applied,
            "negative" => TargetState::Negative,
            "missing" => TargetState::Missing,
            "offline" => TargetState::Offline,
            "unenrolled" => TargetState::Unenrolled,
            _ => return None,
        })
    }

    fn parse(s: &str) -> rusqlite::Result<TargetState> {
        Self::from_word(s).ok_or_else(|| bad_word("target state", s))
    }
}

fn bad_word(what: &str, word: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unknown {what} {word:?}").into(),
    )
}

/// The failure budget, counted over every device a rollout has published to so far (all
/// steps together: a budget that started again at each step would let failures add up
/// unnoticed). Exceeding any one limit stops the rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Budget {
    /// Verified negative answers tolerated (default 0).
    #[serde(default)]
    pub(crate) max_negative: u32,
    /// Devices online but silent past the answer timeout tolerated (default 0).
    #[serde(default)]
    pub(crate) max_missing: u32,
    /// Negative plus missing, as a percentage of the devices published to, tolerated
    /// (optional; 0 to 100).
    #[serde(default)]
    pub(crate) max_failure_percent: Option<f64>,
}

/// Whom a rollout is for: a group of the registry, or a list of enrolled devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolloutAudience {
    /// A group (its members when the rollout was created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    /// Enrolled devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) devices: Option<Vec<String>>,
}

/// A rollout to store (checked by the caller).
#[derive(Debug, Clone)]
pub(crate) struct NewRollout {
    /// Its id (service-made).
    pub(crate) id: String,
    /// The document rolled out.
    pub(crate) workflow_digest: String,
    /// Its `id`.
    pub(crate) workflow_id: String,
    /// The document that rolls it back, if any.
    pub(crate) rollback_digest: Option<String>,
    /// Whom for.
    pub(crate) audience: RolloutAudience,
    /// Percentages, increasing, the last 100.
    pub(crate) steps: Vec<f64>,
    /// The failure budget.
    pub(crate) budget: Budget,
    /// How long each device has to answer (ms).
    pub(crate) answer_timeout_ms: i64,
    /// `Running`, or `Paused` (created to be resumed later).
    pub(crate) state: RolloutState,
    /// Who.
    pub(crate) created_by: String,
    /// Each device with the first step (index) that includes it.
    pub(crate) targets: Vec<(String, u32)>,
}

/// What [`create_rollout`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Created {
    /// Stored.
    Done,
    /// A device is held by another rollout that is not finished.
    Busy {
        /// The device.
        device: String,
        /// The rollout holding it.
        rollout: String,
    },
}

/// One step's progress (devices counted at the step that first includes them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub(crate) struct StepProgress {
    /// The step's percentage of the audience.
    pub(crate) percent: f64,
    /// Devices this step adds.
    pub(crate) devices: u32,
    /// Of those: not published yet.
    pub(crate) pending: u32,
    /// Published, answer awaited.
    pub(crate) published: u32,
    /// Answered `applied` (verified).
    pub(crate) applied: u32,
    /// Answered negatively (verified).
    pub(crate) negative: u32,
    /// Online and silent past the timeout.
    pub(crate) missing: u32,
    /// Offline past the timeout (waiting to be reconciled).
    pub(crate) offline: u32,
    /// Un-enrolled while the rollout was unfinished (not counted).
    pub(crate) unenrolled: u32,
    /// Sent the rollback document.
    pub(crate) rollback_sent: u32,
}

/// A rollout as listed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Rollout {
    /// Its id.
    pub(crate) id: String,
    /// The digest of the document rolled out.
    pub(crate) workflow: String,
    /// That document's `id`.
    pub(crate) workflow_id: String,
    /// The rollback document's digest (null: on failure it only halts).
    pub(crate) rollback: Option<String>,
    /// Whom for.
    pub(crate) audience: RolloutAudience,
    /// Step percentages.
    pub(crate) steps: Vec<f64>,
    /// The failure budget.
    pub(crate) budget: Budget,
    /// How long each device has to answer (ms).
    pub(crate) answer_timeout_ms: i64,
    /// Where it is.
    pub(crate) state: RolloutState,
    /// The step in progress (index into `steps`).
    pub(crate) step: u32,
    /// When that step began (unix ms).
    pub(crate) step_started_at: i64,
    /// Why it halted, was paused or aborted.
    pub(crate) reason: Option<String>,
    /// Who created it.
    pub(crate) created_by: String,
    /// When (unix ms).
    pub(crate) created_at: i64,
    /// Last change (unix ms).
    pub(crate) updated_at: i64,
    /// The replica whose engine holds it.
    pub(crate) claimed_by: Option<String>,
    /// Its claim ends then (unix ms).
    pub(crate) lease_until: i64,
    /// The claim's fence (raised by every claim and operator action).
    pub(crate) fence: i64,
    /// Per step.
    pub(crate) progress: Vec<StepProgress>,
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub(crate) struct Target {
    /// The device.
    pub(crate) device: String,
    /// The first step that includes it.
    pub(crate) step: u32,
    /// Where it is.
    pub(crate) state: TargetState,
    /// How often the document was sent to it (its step, then reconciles).
    pub(crate) sends: u32,
    /// When its step published it (unix ms).
    pub(crate) published_at: Option<i64>,
    /// Last send (unix ms); the answer is due `answer_timeout_ms` later.
    pub(crate) sent_at: Option<i64>,
    /// When its verified answer arrived.
    pub(crate) answered_at: Option<i64>,
    /// That answer's verdict.
    pub(crate) verdict: Option<String>,
    /// That receipt's id.
    pub(crate) receipt_id: Option<String>,
    /// The answer's reason, or why it counts as negative.
    pub(crate) reason: Option<String>,
    /// When the rollback document was sent to it.
    pub(crate) rollback_sent_at: Option<i64>,
    /// The verdict of its verified answer to the rollback document.
    pub(crate) rollback_verdict: Option<String>,
    /// Whether its last status said online (null: no status yet).
    pub(crate) online: Option<bool>,
    /// When a status or verified receipt of it last arrived.
    pub(crate) last_seen: Option<i64>,
}

/// A rollout with every device.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct RolloutDetail {
    /// The rollout.
    #[serde(flatten)]
    pub(crate) rollout: Rollout,
    /// Its devices, by step then id.
    pub(crate) targets: Vec<Target>,
}

/// What an operator's state change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateChange {
    /// Done.
    Changed,
    /// The rollout is in this state, from which the change is not allowed.
    Refused(RolloutState),
    /// No such rollout.
    Missing,
}

/// A replica's claim on a rollout: its writes count while `fence` is the row's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    /// The rollout.
    pub(crate) id: String,
    /// The fence this claim holds.
    pub(crate) fence: i64,
}

/// One engine write, applied only under a valid claim (see [`apply_rollout_writes`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RolloutWrite {
    /// The pending targets among `devices` are published now: `state = published`,
    /// `published_at = sent_at = now`, `sends + 1`; their desired state becomes the
    /// rollout's document.
    Publish {
        /// Devices.
        devices: Vec<String>,
    },
    /// The broker did not take a publish: those published targets go back to pending.
    Unpublish {
        /// Devices.
        devices: Vec<String>,
    },
    /// A published target whose answer was due, from a device seen online, is sent the
    /// document again (its answer may have been lost on the way to a replica that died):
    /// `sent_at = now`, `sends + 1` — only if it is still published and was last sent
    /// before `sent_before`.
    Ask {
        /// The device.
        device: String,
        /// Last sent before this (unix ms).
        sent_before: i64,
    },
    /// A published target whose answer was due: `missing` or `offline` — only if it is
    /// still published and was last sent before `sent_before` (an answer or a reconcile
    /// that came in between wins).
    Overdue {
        /// The device.
        device: String,
        /// `Missing` or `Offline`.
        state: TargetState,
        /// Last sent before this (unix ms).
        sent_before: i64,
    },
    /// The next step: only from step `from` while running.
    Advance {
        /// The step in progress.
        from: u32,
        /// The next one.
        to: u32,
    },
    /// A state change of the engine's (`running → completed | halted | rolling_back`,
    /// `rolling_back → rolled_back`): only from `from`.
    Transition {
        /// The state it must be in.
        from: RolloutState,
        /// The new one.
        to: RolloutState,
        /// Why (stored in `reason` when given).
        reason: Option<String>,
    },
    /// The rollback document is sent to `devices` now (`rollback_sent_at = now`); their
    /// desired state becomes the rollback document.
    RollbackSent {
        /// Devices.
        devices: Vec<String>,
    },
    /// The broker did not take the rollback publish: not sent after all.
    RollbackUnsent {
        /// Devices.
        devices: Vec<String>,
    },
}

/// A device's status message, as parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusReport {
    /// The device (from the topic).
    pub(crate) device: String,
    /// `state: online`.
    pub(crate) online: bool,
    /// `workflow.active.id`.
    pub(crate) running_id: Option<String>,
    /// `workflow.active.digest`.
    pub(crate) running_digest: Option<String>,
    /// `version`: the agent's version.
    pub(crate) agent_version: Option<String>,
    /// `workflow.trust_version`: the version of the trust metadata the device holds.
    pub(crate) trust_version: Option<u64>,
    /// When it arrived (unix ms).
    pub(crate) received_at: i64,
    /// For a retained copy read at start (a snapshot): the moment the snapshot began. It is
    /// stored only if what is stored arrived before then (a live status that arrived since
    /// is newer than any retained copy).
    pub(crate) snapshot_of: Option<i64>,
}

/// The part of a device's stored status that decides what a new report changes (both
/// stores read it in the transaction that stores the report).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PriorStatus {
    /// `online`.
    pub(crate) online: bool,
    /// `running_digest`.
    pub(crate) running_digest: Option<String>,
    /// `trust_version`, as stored.
    pub(crate) trust_version: Option<i64>,
    /// `status_at`.
    pub(crate) status_at: i64,
}

impl StatusReport {
    /// `trust_version` as stored (BIGINT). The ingest refuses a version past `i64::MAX`;
    /// one that got here anyway is stored as NULL, not wrapped.
    pub(crate) fn trust_version_column(&self) -> Option<i64> {
        self.trust_version.and_then(|v| i64::try_from(v).ok())
    }

    /// What storing this report over `old` (None: the device had no status) does, or None
    /// when it is not stored: a snapshot's copy when the stored status arrived at or after
    /// the snapshot began.
    pub(crate) fn change_from(&self, old: Option<&PriorStatus>) -> Option<StatusChange> {
        if let (Some(t), Some(old)) = (self.snapshot_of, old)
            && old.status_at >= t
        {
            return None;
        }
        Some(StatusChange {
            stored: true,
            changed: old.is_none_or(|o| {
                o.online != self.online
                    || o.running_digest != self.running_digest
                    || o.trust_version != self.trust_version_column()
            }),
            came_online: self.online && !old.is_some_and(|o| o.online),
        })
    }
}

/// What [`record_status`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StatusChange {
    /// The report was stored.
    pub(crate) stored: bool,
    /// `online`, the running digest or the trust version changed (or it is the first
    /// status).
    pub(crate) changed: bool,
    /// It is online now and was not before (or had no status).
    pub(crate) came_online: bool,
}

/// A device's status as stored.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub(crate) struct DeviceStatus {
    /// Its last status said online.
    pub(crate) online: bool,
    /// The workflow it says it runs.
    pub(crate) running_id: Option<String>,
    /// Its digest.
    pub(crate) running_digest: Option<String>,
    /// The agent's version its status gave (null: it did not say).
    pub(crate) agent_version: Option<String>,
    /// The trust metadata version its status gave (null: it did not say).
    pub(crate) trust_version: Option<u64>,
    /// When a status or verified receipt of it last arrived (unix ms).
    pub(crate) last_seen: i64,
    /// When that status arrived (unix ms).
    pub(crate) status_at: i64,
}

/// What a device should run.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub(crate) struct DesiredState {
    /// The document's digest.
    pub(crate) digest: String,
    /// The rollout that set it (null: a plain publish).
    pub(crate) rollout: Option<String>,
    /// When it was set (unix ms).
    pub(crate) set_at: i64,
    /// When it was last sent (unix ms).
    pub(crate) sent_at: Option<i64>,
}

/// A verified answer of a device to a document, for [`record_answer`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// The device the receipt was received for (and names).
    pub(crate) device: String,
    /// The document's digest it names.
    pub(crate) digest: String,
    /// Its verdict.
    pub(crate) verdict: String,
    /// Whether it counts as negative (see [`TargetState::Negative`]).
    pub(crate) negative: bool,
    /// Its reason, or why it counts as negative.
    pub(crate) reason: String,
    /// The stored receipt.
    pub(crate) receipt_id: String,
}

/// A target that an answer moved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TargetChange {
    /// The rollout.
    pub(crate) rollout: String,
    /// The device.
    pub(crate) device: String,
    /// Its new state (for an answer to the rollout's document).
    pub(crate) state: Option<TargetState>,
    /// Its rollback verdict (for an answer to the rollback document).
    pub(crate) rollback_verdict: Option<String>,
}

// ---------------------------------------------------------------------------------------
// SQLite. Each function runs on the store's connection (a blocking thread).

fn immediate(c: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    c.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// `record_status`: nothing (None) for a device that is not enrolled (or was un-enrolled:
/// `unenrolled_at IS NOT NULL`). Otherwise, when
/// `snapshot_of` is set and the stored status arrived at or after it, nothing is stored
/// (`stored: false`); else the status row is upserted (`last_seen` never goes back).
/// PostgreSQL: the same in one transaction, reading the row `FOR UPDATE`.
pub(crate) fn record_status(
    c: &mut Connection,
    s: &StatusReport,
) -> rusqlite::Result<Option<StatusChange>> {
    let tx = immediate(c)?;
    let enrolled: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM devices WHERE id = ?1 AND unenrolled_at IS NULL",
            [&s.device],
            |r| r.get(0),
        )
        .optional()?;
    if enrolled.is_none() {
        return Ok(None);
    }
    let old = tx
        .query_row(
            "SELECT online, running_digest, trust_version, status_at FROM device_status \
             WHERE device_id = ?1",
            [&s.device],
            |r| {
                Ok(PriorStatus {
                    online: r.get::<_, i64>(0)? != 0,
                    running_digest: r.get(1)?,
                    trust_version: r.get(2)?,
                    status_at: r.get(3)?,
                })
            },
        )
        .optional()?;
    let Some(change) = s.change_from(old.as_ref()) else {
        return Ok(Some(StatusChange::default()));
    };
    tx.execute(
        "INSERT INTO device_status (device_id, online, running_id, running_digest, last_seen, \
         status_at, agent_version, trust_version) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7) \
         ON CONFLICT (device_id) DO UPDATE SET \
         online = excluded.online, running_id = excluded.running_id, \
         running_digest = excluded.running_digest, status_at = excluded.status_at, \
         agent_version = excluded.agent_version, trust_version = excluded.trust_version, \
         last_seen = CASE WHEN device_status.last_seen > excluded.last_seen \
         THEN device_status.last_seen ELSE excluded.last_seen END",
        params![
            s.device,
            i64::from(s.online),
            s.running_id,
            s.running_digest,
            s.received_at,
            s.agent_version,
            s.trust_version_column()
        ],
    )?;
    tx.commit()?;
    Ok(Some(change))
}

/// `set_desired`: upserts `desired_state` of each device (digest, rollout, `set_at =
/// sent_at = now`).
pub(crate) fn set_desired(
    c: &Connection,
    devices: &[String],
    digest: &str,
    rollout: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO desired_state (device_id, digest, rollout_id, set_at, sent_at) \
         VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (device_id) DO UPDATE SET \
         digest = excluded.digest, rollout_id = excluded.rollout_id, \
         set_at = excluded.set_at, sent_at = excluded.sent_at",
    )?;
    for d in devices {
        st.execute(params![d, digest, rollout, now])?;
    }
    Ok(())
}

/// `reconcile_claim`: the device's desired document, claimed for one re-send, when all of
/// these hold: its status says online, its running digest is not the desired one, no
/// verified receipt of it names the desired digest (it answered already: re-sending cannot
/// help), and the desired state was last sent before `sent_before`. The claim is
/// `UPDATE desired_state SET sent_at = now WHERE … AND (sent_at IS NULL OR sent_at <
/// sent_before)`: of replicas racing, one gets the row. The rollout target it belongs to
/// (if the desired document is that rollout's) counts the send (`sends + 1`, `sent_at =
/// now`; `offline` becomes `published` again: a new answer is awaited).
pub(crate) fn reconcile_claim(
    c: &mut Connection,
    device: &str,
    sent_before: i64,
    now: i64,
) -> rusqlite::Result<Option<DesiredState>> {
    let tx = immediate(c)?;
    let desired: Option<DesiredState> = tx
        .query_row(
            "SELECT d.digest, d.rollout_id, d.set_at, d.sent_at FROM desired_state d \
             JOIN device_status s ON s.device_id = d.device_id \
             WHERE d.device_id = ?1 AND s.online = 1 \
             AND (s.running_digest IS NULL OR s.running_digest <> d.digest) \
             AND (d.sent_at IS NULL OR d.sent_at < ?2) \
             AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.device_id = d.device_id \
                             AND r.digest = d.digest AND r.verified = 1)",
            params![device, sent_before],
            |r| {
                Ok(DesiredState {
                    digest: r.get(0)?,
                    rollout: r.get(1)?,
                    set_at: r.get(2)?,
                    sent_at: r.get(3)?,
                })
            },
        )
        .optional()?;
    let Some(mut desired) = desired else {
        return Ok(None);
    };
    let n = tx.execute(
        "UPDATE desired_state SET sent_at = ?3 WHERE device_id = ?1 AND digest = ?2 \
         AND (sent_at IS NULL OR sent_at < ?4)",
        params![device, desired.digest, now, sent_before],
    )?;
    if n != 1 {
        return Ok(None);
    }
    if let Some(rollout) = &desired.rollout {
        tx.execute(
            "UPDATE rollout_targets SET sends = sends + 1, sent_at = ?3, \
             state = CASE WHEN state = 'offline' THEN 'published' ELSE state END \
             WHERE rollout_id = ?1 AND device_id = ?2 \
             AND state IN ('published', 'missing', 'offline') \
             AND EXISTS (SELECT 1 FROM rollouts WHERE id = ?1 AND workflow_digest = ?4)",
            params![rollout, device, now, desired.digest],
        )?;
    }
    tx.commit()?;
    desired.sent_at = Some(now);
    Ok(Some(desired))
}

/// `record_answer`: a verified receipt moves the device's targets in every rollout of that
/// document that waits for its answer (`published`, `missing`, `offline` → `applied` or
/// `negative`, with the verdict, reason, receipt and time), and records the verdict of an
/// answer to a rollback document sent to it (once). `device_status.last_seen` moves to
/// `now`. Returns what moved. Idempotent (a second copy moves nothing).
pub(crate) fn record_answer(
    c: &mut Connection,
    a: &Answer,
    now: i64,
) -> rusqlite::Result<Vec<TargetChange>> {
    let tx = immediate(c)?;
    let state = if a.negative {
        TargetState::Negative
    } else {
        TargetState::Applied
    };
    let rollouts: Vec<String> = tx
        .prepare(
            "SELECT t.rollout_id FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id \
             WHERE t.device_id = ?1 AND r.workflow_digest = ?2 \
             AND t.state IN ('published', 'missing', 'offline')",
        )?
        .query_map(params![a.device, a.digest], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut changes = Vec::new();
    for rollout in rollouts {
        tx.execute(
            "UPDATE rollout_targets SET state = ?3, answered_at = ?4, verdict = ?5, \
             reason = ?6, receipt_id = ?7 WHERE rollout_id = ?1 AND device_id = ?2",
            params![
                rollout,
                a.device,
                state.as_str(),
                now,
                a.verdict,
                a.reason,
                a.receipt_id
            ],
        )?;
        changes.push(TargetChange {
            rollout,
            device: a.device.clone(),
            state: Some(state),
            rollback_verdict: None,
        });
    }
    let rolled: Vec<String> = tx
        .prepare(
            "SELECT t.rollout_id FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id \
             WHERE t.device_id = ?1 AND r.rollback_digest = ?2 \
             AND t.rollback_sent_at IS NOT NULL AND t.rollback_verdict IS NULL",
        )?
        .query_map(params![a.device, a.digest], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for rollout in rolled {
        tx.execute(
            "UPDATE rollout_targets SET rollback_verdict = ?3 \
             WHERE rollout_id = ?1 AND device_id = ?2",
            params![rollout, a.device, a.verdict],
        )?;
        changes.push(TargetChange {
            rollout,
            device: a.device.clone(),
            state: None,
            rollback_verdict: Some(a.verdict.clone()),
        });
    }
    tx.execute(
        "UPDATE device_status SET last_seen = ?2 WHERE device_id = ?1 AND last_seen < ?2",
        params![a.device, now],
    )?;
    tx.commit()?;
    Ok(changes)
}

/// `create_rollout`: in one transaction, refuses (`Busy`) when a device of `r` is a target of
/// a rollout in a holding state (running, paused, rolling back) that is not `unenrolled`,
/// else inserts the rollout (`fence = 0`, no claim) and its targets (`pending`, `sends = 0`;
/// `unenrolled` for a device un-enrolled meanwhile: the caller resolved the audience from
/// the registry before). PostgreSQL: take `pg_advisory_xact_lock` on a constant first, so
/// two creations cannot both pass the check (and no un-enrolment runs in between).
pub(crate) fn create_rollout(
    c: &mut Connection,
    r: &NewRollout,
    now: i64,
) -> rusqlite::Result<Created> {
    let tx = immediate(c)?;
    {
        let mut busy = tx.prepare_cached(&format!(
            "SELECT r.id FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id \
             WHERE t.device_id = ?1 AND r.state IN ({}) AND t.state <> 'unenrolled' LIMIT 1",
            state_list(&RolloutState::HOLDING)
        ))?;
        for (device, _) in &r.targets {
            if let Some(rollout) = busy
                .query_row([device], |row| row.get::<_, String>(0))
                .optional()?
            {
                return Ok(Created::Busy {
                    device: device.clone(),
                    rollout,
                });
            }
        }
    }
    tx.execute(
        "INSERT INTO rollouts (id, workflow_digest, workflow_id, rollback_digest, audience, \
         steps, max_negative, max_missing, max_failure_pct, answer_timeout_ms, state, step, \
         step_started_at, reason, created_by, created_at, updated_at, claimed_by, \
         lease_until, fence) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, ?12, \
         NULL, ?13, ?12, ?12, NULL, 0, 0)",
        params![
            r.id,
            r.workflow_digest,
            r.workflow_id,
            r.rollback_digest,
            serde_json::to_string(&r.audience).unwrap_or_default(),
            serde_json::to_string(&r.steps).unwrap_or_default(),
            r.budget.max_negative,
            r.budget.max_missing,
            r.budget.max_failure_percent,
            r.answer_timeout_ms,
            r.state.as_str(),
            now,
            r.created_by
        ],
    )?;
    {
        let mut ins = tx.prepare_cached(&format!(
            "INSERT INTO rollout_targets (rollout_id, device_id, step, state, sends) \
             SELECT ?1, ?2, ?3, {TARGET_STATE_AT_CREATION}, 0 FROM devices WHERE id = ?2"
        ))?;
        for (device, step) in &r.targets {
            ins.execute(params![r.id, device, step])?;
        }
    }
    tx.commit()?;
    Ok(Created::Done)
}

/// A new target's state: `pending`, or `unenrolled` for a device un-enrolled (a column
/// expression on `devices`, both engines).
pub(crate) const TARGET_STATE_AT_CREATION: &str =
    "CASE WHEN unenrolled_at IS NULL THEN 'pending' ELSE 'unenrolled' END";

/// The target states a device's un-enrolment turns into `unenrolled` (all of them: it is
/// out of every unfinished rollout; an answer it gave stays in `verdict`).
pub(crate) const UNENROLLING: &str =
    "'pending', 'published', 'applied', 'negative', 'missing', 'offline'";

/// `unenroll_device`, in one transaction: nothing for an unknown device, `Already` for one
/// un-enrolled before; otherwise `devices.unenrolled_at = now`, its `group_members` rows
/// and its `desired_state` row deleted (nothing reconciles it), and in every rollout in a
/// holding state (running, paused, rolling back) its target becomes `unenrolled` (reason
/// kept, or "the device was un-enrolled") and that rollout's `fence + 1, claimed_by =
/// NULL, lease_until = 0` (an engine in the middle of a tick writes — and publishes —
/// nothing more, and re-decides without it). Receipts, status, audit rows and the targets
/// of finished rollouts stay. PostgreSQL: `create_rollout`'s advisory lock first (no
/// creation takes the device in meanwhile), the device row `FOR NO KEY UPDATE`, then those
/// rollouts' rows `FOR UPDATE` in id order, then desired state, then targets (the lock
/// order of `postgres_rollouts.rs`).
pub(crate) fn unenroll_device(
    c: &mut Connection,
    device: &str,
    now: i64,
) -> rusqlite::Result<super::store::Unenrolment> {
    use super::store::{Unenrolled, Unenrolment};
    let tx = immediate(c)?;
    let held: Option<Option<i64>> = tx
        .query_row(
            "SELECT unenrolled_at FROM devices WHERE id = ?1",
            [device],
            |r| r.get(0),
        )
        .optional()?;
    match held {
        None => return Ok(Unenrolment::Unknown),
        Some(Some(at)) => return Ok(Unenrolment::Already(at)),
        Some(None) => {}
    }
    let rollouts: Vec<String> = tx
        .prepare(&format!(
            "SELECT DISTINCT t.rollout_id FROM rollout_targets t \
             JOIN rollouts r ON r.id = t.rollout_id \
             WHERE t.device_id = ?1 AND r.state IN ({}) AND t.state IN ({UNENROLLING}) \
             ORDER BY t.rollout_id",
            state_list(&RolloutState::HOLDING)
        ))?
        .query_map([device], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for r in &rollouts {
        tx.execute(
            &format!(
                "UPDATE rollout_targets SET state = 'unenrolled', \
                 reason = COALESCE(reason, 'the device was un-enrolled') \
                 WHERE rollout_id = ?1 AND device_id = ?2 AND state IN ({UNENROLLING})"
            ),
            params![r, device],
        )?;
        tx.execute(
            "UPDATE rollouts SET fence = fence + 1, claimed_by = NULL, lease_until = 0, \
             updated_at = ?2 WHERE id = ?1",
            params![r, now],
        )?;
    }
    tx.execute("DELETE FROM desired_state WHERE device_id = ?1", [device])?;
    let groups: Vec<String> = tx
        .prepare("SELECT group_name FROM group_members WHERE device_id = ?1 ORDER BY group_name")?
        .query_map([device], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    tx.execute("DELETE FROM group_members WHERE device_id = ?1", [device])?;
    tx.execute(
        "UPDATE devices SET unenrolled_at = ?2 WHERE id = ?1",
        params![device, now],
    )?;
    tx.commit()?;
    Ok(Unenrolment::Done(Unenrolled {
        device: device.to_string(),
        unenrolled_at: now,
        groups,
        rollouts,
    }))
}

/// `'running', 'paused'` for an `IN (…)` (fixed words, never input).
fn state_list(states: &[RolloutState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

const ROLLOUT_COLUMNS: &str = "id, workflow_digest, workflow_id, rollback_digest, audience, \
     steps, max_negative, max_missing, max_failure_pct, answer_timeout_ms, state, step, \
     step_started_at, reason, created_by, created_at, updated_at, claimed_by, lease_until, fence";

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rollout> {
    let json = |i: usize| -> rusqlite::Result<serde_json::Value> {
        let text: String = r.get(i)?;
        serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
        })
    };
    let audience = serde_json::from_value(json(4)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
    })?;
    let steps = serde_json::from_value(json(5)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(Rollout {
        id: r.get(0)?,
        workflow: r.get(1)?,
        workflow_id: r.get(2)?,
        rollback: r.get(3)?,
        audience,
        steps,
        budget: Budget {
            max_negative: r.get(6)?,
            max_missing: r.get(7)?,
            max_failure_percent: r.get(8)?,
        },
        answer_timeout_ms: r.get(9)?,
        state: RolloutState::parse(&r.get::<_, String>(10)?)?,
        step: r.get(11)?,
        step_started_at: r.get(12)?,
        reason: r.get(13)?,
        created_by: r.get(14)?,
        created_at: r.get(15)?,
        updated_at: r.get(16)?,
        claimed_by: r.get(17)?,
        lease_until: r.get(18)?,
        fence: r.get(19)?,
        progress: Vec::new(),
    })
}

/// Fills `r.progress` from its targets (`GROUP BY step, state`).
fn progress(c: &Connection, r: &mut Rollout) -> rusqlite::Result<()> {
    let mut steps: Vec<StepProgress> = r
        .steps
        .iter()
        .map(|p| StepProgress {
            percent: *p,
            ..Default::default()
        })
        .collect();
    let mut st = c.prepare_cached(
        "SELECT step, state, COUNT(*), \
         SUM(CASE WHEN rollback_sent_at IS NULL THEN 0 ELSE 1 END) \
         FROM rollout_targets WHERE rollout_id = ?1 GROUP BY step, state",
    )?;
    let rows = st.query_map([&r.id], |row| {
        Ok((
            row.get::<_, u32>(0)?,
            TargetState::parse(&row.get::<_, String>(1)?)?,
            row.get::<_, u32>(2)?,
            row.get::<_, u32>(3)?,
        ))
    })?;
    for row in rows {
        let (step, state, n, rollback) = row?;
        let Some(p) = steps.get_mut(step as usize) else {
            continue;
        };
        p.devices += n;
        p.rollback_sent += rollback;
        *match state {
            TargetState::Pending => &mut p.pending,
            TargetState::Published => &mut p.published,
            TargetState::Applied => &mut p.applied,
            TargetState::Negative => &mut p.negative,
            TargetState::Missing => &mut p.missing,
            TargetState::Offline => &mut p.offline,
            TargetState::Unenrolled => &mut p.unenrolled,
        } += n;
    }
    r.progress = steps;
    Ok(())
}

/// `rollouts`: newest first, with progress.
pub(crate) fn rollouts(c: &Connection, limit: u32) -> rusqlite::Result<Vec<Rollout>> {
    let mut list: Vec<Rollout> = c
        .prepare(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC, id LIMIT ?1"
        ))?
        .query_map([limit], rollout_row)?
        .collect::<rusqlite::Result<_>>()?;
    for r in &mut list {
        progress(c, r)?;
    }
    Ok(list)
}

/// `rollout`: one, with progress and every target (with its device's status).
pub(crate) fn rollout(c: &Connection, id: &str) -> rusqlite::Result<Option<RolloutDetail>> {
    let Some(mut rollout) = c
        .query_row(
            &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
            [id],
            rollout_row,
        )
        .optional()?
    else {
        return Ok(None);
    };
    progress(c, &mut rollout)?;
    let targets = c
        .prepare(
            "SELECT t.device_id, t.step, t.state, t.sends, t.published_at, t.sent_at, \
             t.answered_at, t.verdict, t.receipt_id, t.reason, t.rollback_sent_at, \
             t.rollback_verdict, s.online, s.last_seen FROM rollout_targets t \
             LEFT JOIN device_status s ON s.device_id = t.device_id \
             WHERE t.rollout_id = ?1 ORDER BY t.step, t.device_id",
        )?
        .query_map([id], |r| {
            Ok(Target {
                device: r.get(0)?,
                step: r.get(1)?,
                state: TargetState::parse(&r.get::<_, String>(2)?)?,
                sends: r.get(3)?,
                published_at: r.get(4)?,
                sent_at: r.get(5)?,
                answered_at: r.get(6)?,
                verdict: r.get(7)?,
                receipt_id: r.get(8)?,
                reason: r.get(9)?,
                rollback_sent_at: r.get(10)?,
                rollback_verdict: r.get(11)?,
                online: r.get::<_, Option<i64>>(12)?.map(|o| o != 0),
                last_seen: r.get(13)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(RolloutDetail { rollout, targets }))
}

/// `set_rollout_state` (an operator's pause, resume, abort): `UPDATE rollouts SET state =
/// to, reason, updated_at, fence = fence + 1, claimed_by = NULL, lease_until = 0 WHERE id
/// AND state IN (from)`. Raising the fence voids any claim on it: an engine in the middle
/// of a tick writes nothing more, and a resumed rollout is claimed afresh.
pub(crate) fn set_rollout_state(
    c: &mut Connection,
    id: &str,
    from: &[RolloutState],
    to: RolloutState,
    reason: Option<&str>,
    now: i64,
) -> rusqlite::Result<StateChange> {
    let tx = immediate(c)?;
    let current: Option<String> = tx
        .query_row("SELECT state FROM rollouts WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(current) = current else {
        return Ok(StateChange::Missing);
    };
    let current = RolloutState::parse(&current)?;
    if !from.contains(&current) {
        return Ok(StateChange::Refused(current));
    }
    tx.execute(
        "UPDATE rollouts SET state = ?2, reason = COALESCE(?3, reason), updated_at = ?4, \
         fence = fence + 1, claimed_by = NULL, lease_until = 0 WHERE id = ?1",
        params![id, to.as_str(), reason, now],
    )?;
    tx.commit()?;
    Ok(StateChange::Changed)
}

/// `claim_rollouts`: in one transaction, up to `limit` rollouts in an active state (running,
/// rolling back) whose lease ended or that `replica` holds, oldest first. A claim of one's
/// own still-valid lease keeps its fence (the lease is extended); any other claim raises
/// the fence. Each row: `claimed_by = replica, lease_until = now + lease_ms`.
/// PostgreSQL: `SELECT id, claimed_by, lease_until, fence FROM rollouts WHERE state IN
/// ('running','rolling_back') AND (lease_until < $now OR claimed_by = $replica) ORDER BY
/// created_at LIMIT $n FOR UPDATE SKIP LOCKED`, then the same UPDATE per row, then COMMIT.
pub(crate) fn claim_rollouts(
    c: &mut Connection,
    replica: &str,
    now: i64,
    lease_ms: i64,
    limit: u32,
) -> rusqlite::Result<Vec<Claim>> {
    let tx = immediate(c)?;
    let rows: Vec<(String, Option<String>, i64, i64)> = tx
        .prepare(&format!(
            "SELECT id, claimed_by, lease_until, fence FROM rollouts WHERE state IN ({}) \
             AND (lease_until < ?1 OR claimed_by = ?2) ORDER BY created_at, id LIMIT ?3",
            state_list(&RolloutState::ACTIVE)
        ))?
        .query_map(params![now, replica, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut claims = Vec::with_capacity(rows.len());
    for (id, holder, lease_until, fence) in rows {
        let fence = if holder.as_deref() == Some(replica) && lease_until >= now {
            fence
        } else {
            fence + 1
        };
        tx.execute(
            "UPDATE rollouts SET claimed_by = ?2, lease_until = ?3, fence = ?4 WHERE id = ?1",
            params![id, replica, now + lease_ms, fence],
        )?;
        claims.push(Claim { id, fence });
    }
    tx.commit()?;
    Ok(claims)
}

/// `apply_rollout_writes`: all of `writes` in one transaction, or none: first `SELECT fence
/// FROM rollouts WHERE id = $id` (PostgreSQL: `FOR UPDATE`) must equal the claim's fence,
/// and an `Advance` or `Transition` must find the rollout in the state (and step) it
/// names; otherwise nothing is written and the answer is false (the claim is lost). Target
/// writes carry their own conditions (see [`RolloutWrite`]) and may touch no row.
pub(crate) fn apply_rollout_writes(
    c: &mut Connection,
    claim: &Claim,
    writes: &[RolloutWrite],
    now: i64,
) -> rusqlite::Result<bool> {
    let tx = immediate(c)?;
    let row: Option<(i64, String, String, Option<String>)> = tx
        .query_row(
            "SELECT fence, workflow_digest, state, rollback_digest FROM rollouts WHERE id = ?1",
            [&claim.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((fence, digest, _, rollback)) = row else {
        return Ok(false);
    };
    if fence != claim.fence {
        return Ok(false);
    }
    let id = claim.id.as_str();
    for w in writes {
        match w {
            RolloutWrite::Publish { devices } => {
                let mut st = tx.prepare_cached(
                    "UPDATE rollout_targets SET state = 'published', published_at = ?3, \
                     sent_at = ?3, sends = sends + 1 \
                     WHERE rollout_id = ?1 AND device_id = ?2 AND state = 'pending'",
                )?;
                for d in devices {
                    st.execute(params![id, d, now])?;
                }
                set_desired(&tx, devices, &digest, Some(id), now)?;
            }
            RolloutWrite::Unpublish { devices } => {
                let mut st = tx.prepare_cached(
                    "UPDATE rollout_targets SET state = 'pending', published_at = NULL, \
                     sent_at = NULL, sends = sends - 1 \
                     WHERE rollout_id = ?1 AND device_id = ?2 AND state = 'published'",
                )?;
                for d in devices {
                    st.execute(params![id, d])?;
                }
            }
            RolloutWrite::Ask {
                device,
                sent_before,
            } => {
                tx.execute(
                    "UPDATE rollout_targets SET sent_at = ?3, sends = sends + 1 \
                     WHERE rollout_id = ?1 AND device_id = ?2 AND state = 'published' \
                     AND sent_at < ?4",
                    params![id, device, now, sent_before],
                )?;
            }
            RolloutWrite::Overdue {
                device,
                state,
                sent_before,
            } => {
                tx.execute(
                    "UPDATE rollout_targets SET state = ?3 WHERE rollout_id = ?1 \
                     AND device_id = ?2 AND state = 'published' AND sent_at < ?4",
                    params![id, device, state.as_str(), sent_before],
                )?;
            }
            RolloutWrite::Advance { from, to } => {
                let n = tx.execute(
                    "UPDATE rollouts SET step = ?3, step_started_at = ?4, updated_at = ?4 \
                     WHERE id = ?1 AND step = ?2 AND state = 'running'",
                    params![id, from, to, now],
                )?;
                if n != 1 {
                    return Ok(false);
                }
            }
            RolloutWrite::Transition { from, to, reason } => {
                let n = tx.execute(
                    "UPDATE rollouts SET state = ?3, reason = COALESCE(?4, reason), \
                     updated_at = ?5 WHERE id = ?1 AND state = ?2",
                    params![id, from.as_str(), to.as_str(), reason, now],
                )?;
                if n != 1 {
                    return Ok(false);
                }
            }
            RolloutWrite::RollbackSent { devices } => {
                let Some(rollback) = &rollback else {
                    return Ok(false);
                };
                let mut st = tx.prepare_cached(
                    "UPDATE rollout_targets SET rollback_sent_at = ?3 \
                     WHERE rollout_id = ?1 AND device_id = ?2 AND rollback_sent_at IS NULL",
                )?;
                for d in devices {
                    st.execute(params![id, d, now])?;
                }
                set_desired(&tx, devices, rollback, Some(id), now)?;
            }
            RolloutWrite::RollbackUnsent { devices } => {
                let mut st = tx.prepare_cached(
                    "UPDATE rollout_targets SET rollback_sent_at = NULL \
                     WHERE rollout_id = ?1 AND device_id = ?2",
                )?;
                for d in devices {
                    st.execute(params![id, d])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(true)
}

/// A device's status and desired state (for the device list).
pub(crate) fn device_state(
    c: &Connection,
    id: &str,
) -> rusqlite::Result<(Option<DeviceStatus>, Option<DesiredState>)> {
    let status = c
        .query_row(
            "SELECT online, running_id, running_digest, last_seen, status_at, agent_version, \
             trust_version FROM device_status WHERE device_id = ?1",
            [id],
            |r| {
                Ok(DeviceStatus {
                    online: r.get::<_, i64>(0)? != 0,
                    running_id: r.get(1)?,
                    running_digest: r.get(2)?,
                    agent_version: r.get(5)?,
                    trust_version: r
                        .get::<_, Option<i64>>(6)?
                        .and_then(|v| u64::try_from(v).ok()),
                    last_seen: r.get(3)?,
                    status_at: r.get(4)?,
                })
            },
        )
        .optional()?;
    let desired = c
        .query_row(
            "SELECT digest, rollout_id, set_at, sent_at FROM desired_state WHERE device_id = ?1",
            [id],
            |r| {
                Ok(DesiredState {
                    digest: r.get(0)?,
                    rollout: r.get(1)?,
                    set_at: r.get(2)?,
                    sent_at: r.get(3)?,
                })
            },
        )
        .optional()?;
    Ok((status, desired))
}

#[cfg(test)]
mod tests {
    //! Each test body runs on SQLite and on PostgreSQL (`store::tests::TestDb::each`):
    //! `postgres_rollouts.rs` is held to the same answers.

    use super::*;
    use crate::serve::store::tests::TestDb;
    use crate::serve::store::{Enrolment, NewReceipt, Store, Workflow};

    const W: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    /// A store of each engine holding devices a, b, c (group g) and workflows W and B.
    async fn stores() -> Vec<(TestDb, Box<dyn Store>)> {
        let mut out = vec![];
        for db in TestDb::each() {
            let s = db.open().await.unwrap();
            fill(&*s).await;
            out.push((db, s));
        }
        out
    }

    async fn fill(s: &dyn Store) {
        let devices = ["a", "b", "c"]
            .iter()
            .map(|d| Enrolment {
                id: d.to_string(),
                signing_key: format!("key-{d}"),
                key_id: format!("id-{d}"),
                kem_key: None,
                groups: vec!["g".into()],
            })
            .collect();
        s.import_registry(devices, vec![]).await.unwrap();
        for digest in [W, B] {
            let w = Workflow {
                digest: digest.into(),
                id: "urn:uuid:1".into(),
                sequence: 1,
                issuer: "gw".into(),
                key_id: "k".into(),
                sealed: false,
                devices: vec![],
                groups: vec!["g".into()],
                created_by: "t".into(),
                created_at: 0,
            };
            assert!(s.add_workflow(w, "text".into()).await.unwrap());
        }
    }

    fn new_rollout(id: &str, devices: &[&str], state: RolloutState) -> NewRollout {
        NewRollout {
            id: id.into(),
            workflow_digest: W.into(),
            workflow_id: "urn:uuid:1".into(),
            rollback_digest: Some(B.into()),
            audience: RolloutAudience {
                group: None,
                devices: Some(devices.iter().map(|d| d.to_string()).collect()),
            },
            steps: vec![50.0, 100.0],
            budget: Budget::default(),
            answer_timeout_ms: 1000,
            state,
            created_by: "t".into(),
            targets: devices
                .iter()
                .enumerate()
                .map(|(i, d)| (d.to_string(), i as u32 % 2))
                .collect(),
        }
    }

    fn publish(devices: &[&str]) -> Vec<RolloutWrite> {
        vec![RolloutWrite::Publish {
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }]
    }

    async fn status(s: &dyn Store, device: &str, online: bool, digest: Option<&str>) {
        s.record_status(StatusReport {
            device: device.into(),
            online,
            running_id: None,
            running_digest: digest.map(str::to_string),
            agent_version: None,
            trust_version: None,
            received_at: crate::serve::store::now_ms(),
            snapshot_of: None,
        })
        .await
        .unwrap()
        .unwrap();
    }

    #[tokio::test]
    async fn a_replica_that_lost_its_claim_writes_nothing() {
        for (db, s) in stores().await {
            eprintln!("--- on {}", db.engine());
            assert_eq!(
                s.create_rollout(new_rollout("r1", &["a", "b"], RolloutState::Running))
                    .await
                    .unwrap(),
                Created::Done
            );
            // Replica A claims with a lease that is over at once; B takes it over.
            let a = s.claim_rollouts("A".into(), -1, 10).await.unwrap();
            assert_eq!(
                a,
                vec![Claim {
                    id: "r1".into(),
                    fence: 1
                }]
            );
            let b = s.claim_rollouts("B".into(), 60_000, 10).await.unwrap();
            assert_eq!(
                b,
                vec![Claim {
                    id: "r1".into(),
                    fence: 2
                }]
            );
            // A, unaware, tries to publish: nothing is written.
            assert!(
                !s.apply_rollout_writes(a[0].clone(), publish(&["a"]))
                    .await
                    .unwrap()
            );
            let d = s.rollout("r1".into()).await.unwrap().unwrap();
            assert_eq!(d.targets[0].state, TargetState::Pending);
            assert_eq!(d.rollout.claimed_by.as_deref(), Some("B"));
            // While B's lease runs, nobody else gets it; B's own renewal keeps its fence.
            assert!(
                s.claim_rollouts("A".into(), 60_000, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(s.claim_rollouts("B".into(), 60_000, 10).await.unwrap(), b);
            assert!(
                s.apply_rollout_writes(b[0].clone(), publish(&["a"]))
                    .await
                    .unwrap()
            );
            let d = s.rollout("r1".into()).await.unwrap().unwrap();
            let t = d.targets.iter().find(|t| t.device == "a").unwrap();
            assert_eq!((t.state, t.sends), (TargetState::Published, 1));
            assert_eq!(d.rollout.progress[0].published, 1);
            // Publishing set the desired state.
            let dev = s.device("a".into()).await.unwrap().unwrap();
            assert_eq!(dev.desired.unwrap().digest, W);
            // An operator's pause voids B's claim too, and a paused rollout is not claimed.
            assert_eq!(
                s.set_rollout_state(
                    "r1".into(),
                    vec![RolloutState::Running],
                    RolloutState::Paused,
                    Some("by t".into())
                )
                .await
                .unwrap(),
                StateChange::Changed
            );
            let advance = vec![RolloutWrite::Advance { from: 0, to: 1 }];
            assert!(
                !s.apply_rollout_writes(b[0].clone(), advance.clone())
                    .await
                    .unwrap()
            );
            assert!(
                s.claim_rollouts("B".into(), 60_000, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                s.set_rollout_state(
                    "r1".into(),
                    vec![RolloutState::Running],
                    RolloutState::Aborted,
                    None
                )
                .await
                .unwrap(),
                StateChange::Refused(RolloutState::Paused)
            );
            s.set_rollout_state(
                "r1".into(),
                vec![RolloutState::Paused],
                RolloutState::Running,
                None,
            )
            .await
            .unwrap();
            let c = s.claim_rollouts("A".into(), 60_000, 10).await.unwrap();
            // Claims 1 and 2, the pause 3, the resume 4, this claim 5.
            assert_eq!(c[0].fence, 5);
            // A guarded write whose state does not hold rolls the whole batch back.
            let bad = vec![
                RolloutWrite::Publish {
                    devices: vec!["b".into()],
                },
                RolloutWrite::Advance { from: 1, to: 2 },
            ];
            assert!(!s.apply_rollout_writes(c[0].clone(), bad).await.unwrap());
            let d = s.rollout("r1".into()).await.unwrap().unwrap();
            assert!(
                d.targets
                    .iter()
                    .all(|t| t.device != "b" || t.state == TargetState::Pending)
            );
            assert!(s.apply_rollout_writes(c[0].clone(), advance).await.unwrap());
            assert_eq!(
                s.rollout("r1".into()).await.unwrap().unwrap().rollout.step,
                1
            );
            assert_eq!(
                s.set_rollout_state("nope".into(), vec![], RolloutState::Aborted, None)
                    .await
                    .unwrap(),
                StateChange::Missing
            );
        }
    }

    #[tokio::test]
    async fn a_device_is_held_by_one_unfinished_rollout_at_a_time() {
        for (db, s) in stores().await {
            eprintln!("--- on {}", db.engine());
            s.create_rollout(new_rollout("r1", &["a", "b"], RolloutState::Paused))
                .await
                .unwrap();
            assert_eq!(
                s.create_rollout(new_rollout("r2", &["c", "b"], RolloutState::Running))
                    .await
                    .unwrap(),
                Created::Busy {
                    device: "b".into(),
                    rollout: "r1".into()
                }
            );
            assert!(s.rollout("r2".into()).await.unwrap().is_none());
            s.set_rollout_state(
                "r1".into(),
                RolloutState::HOLDING.to_vec(),
                RolloutState::Aborted,
                None,
            )
            .await
            .unwrap();
            assert_eq!(
                s.create_rollout(new_rollout("r2", &["c", "b"], RolloutState::Running))
                    .await
                    .unwrap(),
                Created::Done
            );
            assert_eq!(s.rollouts(10).await.unwrap().len(), 2);
        }
    }

    #[tokio::test]
    async fn answers_settle_targets_once_and_reconcile_claims_once() {
        for (db, s) in stores().await {
            eprintln!("--- on {}", db.engine());
            s.create_rollout(new_rollout("r1", &["a", "b"], RolloutState::Running))
                .await
                .unwrap();
            let c = s.claim_rollouts("A".into(), 60_000, 10).await.unwrap();
            assert!(
                s.apply_rollout_writes(c[0].clone(), publish(&["a", "b"]))
                    .await
                    .unwrap()
            );
            let answer = |device: &str, digest: &str, negative: bool| Answer {
                device: device.into(),
                digest: digest.into(),
                verdict: if negative { "rejected" } else { "applied" }.into(),
                negative,
                reason: String::new(),
                receipt_id: format!("rc-{device}"),
            };
            let moved = s.record_answer(answer("a", W, false)).await.unwrap();
            assert_eq!(moved.len(), 1);
            assert_eq!(moved[0].state, Some(TargetState::Applied));
            // A second copy moves nothing; an answer for another document moves nothing.
            assert!(
                s.record_answer(answer("a", W, true))
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert!(
                s.record_answer(answer("b", B, false))
                    .await
                    .unwrap()
                    .is_empty()
            );
            // b asked again: sent once more, still published; an ask bounded by a time
            // before that send (a racing replica's) touches nothing.
            let sent_before = crate::serve::store::now_ms() + 1;
            let ask = |sent_before| {
                vec![RolloutWrite::Ask {
                    device: "b".into(),
                    sent_before,
                }]
            };
            let b_now = |d: RolloutDetail| {
                let t = d.targets.into_iter().find(|t| t.device == "b").unwrap();
                (t.state, t.sends, t.sent_at.unwrap())
            };
            let first = b_now(s.rollout("r1".into()).await.unwrap().unwrap()).2;
            assert!(
                s.apply_rollout_writes(c[0].clone(), ask(sent_before))
                    .await
                    .unwrap()
            );
            let (state, sends, at) = b_now(s.rollout("r1".into()).await.unwrap().unwrap());
            assert_eq!((state, sends), (TargetState::Published, 2));
            assert!(at >= first);
            assert!(
                s.apply_rollout_writes(c[0].clone(), ask(first))
                    .await
                    .unwrap()
            );
            assert_eq!(
                b_now(s.rollout("r1".into()).await.unwrap().unwrap()),
                (TargetState::Published, 2, at)
            );
            // b: overdue (not seen): offline.
            let overdue = vec![RolloutWrite::Overdue {
                device: "b".into(),
                state: TargetState::Offline,
                sent_before: crate::serve::store::now_ms() + 1,
            }];
            assert!(s.apply_rollout_writes(c[0].clone(), overdue).await.unwrap());

            // Reconcile: nothing while b has no status or is offline, or runs the document.
            let far = crate::serve::store::now_ms() + 10_000;
            assert_eq!(s.reconcile_claim("b".into(), far).await.unwrap(), None);
            status(&*s, "b", false, None).await;
            assert_eq!(s.reconcile_claim("b".into(), far).await.unwrap(), None);
            status(&*s, "b", true, Some(W)).await;
            assert_eq!(s.reconcile_claim("b".into(), far).await.unwrap(), None);
            // Online, running something else: claimed; a racing claim that only wants it if it
            // was not sent since a moment before that finds it sent already.
            status(&*s, "b", true, Some(B)).await;
            let before = crate::serve::store::now_ms();
            let got = s.reconcile_claim("b".into(), far).await.unwrap().unwrap();
            assert_eq!(
                (got.digest.as_str(), got.rollout.as_deref()),
                (W, Some("r1"))
            );
            assert_eq!(s.reconcile_claim("b".into(), before).await.unwrap(), None);
            let d = s.rollout("r1".into()).await.unwrap().unwrap();
            let t = d.targets.iter().find(|t| t.device == "b").unwrap();
            assert_eq!(
                (t.state, t.sends, t.online),
                (TargetState::Published, 3, Some(true))
            );
            // Once b answered it (whatever the verdict), it is never re-sent.
            let receipt = NewReceipt {
                device: "b".into(),
                kind: "workflow".into(),
                workflow_id: Some("urn:uuid:1".into()),
                digest: Some(W.into()),
                verdict: Some("rejected".into()),
                signed_text: "signed".into(),
                verified: true,
                error: None,
            };
            let id = s.add_receipt(receipt.clone()).await.unwrap();
            // The same bytes again (a QoS 1 redelivery) are the same receipt.
            assert_eq!(s.add_receipt(receipt).await.unwrap(), id);
            assert_eq!(s.receipts(Some("b".into()), 10).await.unwrap().len(), 1);
            let far = crate::serve::store::now_ms() + 10_000;
            assert_eq!(s.reconcile_claim("b".into(), far).await.unwrap(), None);
            // Unknown devices have no status.
            let ghost = StatusReport {
                device: "ghost".into(),
                online: true,
                running_id: None,
                running_digest: None,
                agent_version: None,
                trust_version: None,
                received_at: 1,
                snapshot_of: None,
            };
            assert_eq!(s.record_status(ghost).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn a_retained_snapshot_never_overwrites_a_newer_live_status() {
        for (db, s) in stores().await {
            eprintln!("--- on {}", db.engine());
            let report = |online, at, snapshot_of| StatusReport {
                device: "a".into(),
                online,
                running_id: None,
                running_digest: None,
                agent_version: None,
                trust_version: None,
                received_at: at,
                snapshot_of,
            };
            let first = s
                .record_status(report(true, 100, None))
                .await
                .unwrap()
                .unwrap();
            assert!(first.stored && first.changed && first.came_online);
            // The snapshot began at 90, before the live status at 100: its copy is older.
            let old = s
                .record_status(report(false, 120, Some(90)))
                .await
                .unwrap()
                .unwrap();
            assert!(!old.stored);
            assert!(
                s.device("a".into())
                    .await
                    .unwrap()
                    .unwrap()
                    .status
                    .unwrap()
                    .online
            );
            // A snapshot that began after it is newer.
            let newer = s
                .record_status(report(false, 130, Some(110)))
                .await
                .unwrap()
                .unwrap();
            assert!(newer.stored && newer.changed && !newer.came_online);
            let again = s
                .record_status(report(true, 140, None))
                .await
                .unwrap()
                .unwrap();
            assert!(again.came_online);
            let st = s.device("a".into()).await.unwrap().unwrap().status.unwrap();
            assert_eq!((st.online, st.last_seen, st.status_at), (true, 140, 140));
        }
    }

    #[tokio::test]
    async fn a_status_keeps_the_versions_it_gave_and_a_new_trust_version_is_a_change() {
        for (db, s) in stores().await {
            eprintln!("--- on {}", db.engine());
            let report = |at, agent: Option<&str>, trust| StatusReport {
                device: "a".into(),
                online: true,
                running_id: None,
                running_digest: None,
                agent_version: agent.map(str::to_string),
                trust_version: trust,
                received_at: at,
                snapshot_of: None,
            };
            let record = |r| {
                let s = &s;
                async move { s.record_status(r).await.unwrap().unwrap() }
            };
            let versions = || {
                let s = &s;
                async move {
                    let st = s.device("a".into()).await.unwrap().unwrap().status.unwrap();
                    (st.agent_version, st.trust_version)
                }
            };
            assert!(record(report(100, Some("0.9.1"), Some(3))).await.changed);
            assert_eq!(versions().await, (Some("0.9.1".into()), Some(3)));
            assert!(!record(report(110, Some("0.9.1"), Some(3))).await.changed);
            assert!(record(report(120, Some("0.9.1"), Some(4))).await.changed);
            // The largest version a BIGINT holds goes in and comes out whole.
            let top = i64::MAX as u64;
            assert!(record(report(125, Some("1.0"), Some(top))).await.changed);
            assert_eq!(versions().await, (Some("1.0".into()), Some(top)));
            // A status that does not say forgets what an older one said.
            assert!(record(report(130, None, None)).await.changed);
            assert_eq!(versions().await, (None, None));
        }
    }

    /// Replicas claiming at the same moment on one PostgreSQL database: each active rollout
    /// goes to exactly one of them (`FOR UPDATE SKIP LOCKED`); two replicas creating a
    /// rollout for the same device at the same moment: one is stored, the other is told the
    /// device is busy (the creation lock).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_replicas_claim_each_rollout_once_on_postgres() {
        use crate::serve::postgres::PgStore;
        let Some(db) = TestDb::postgres() else {
            return;
        };
        let target = TestDb::target(&db);
        let mut replicas = Vec::new();
        for _ in 0..4 {
            replicas.push(PgStore::open(&target).await.unwrap());
        }
        let first = replicas[0].clone();
        fill(&first).await;
        for (id, device) in [("r1", "a"), ("r2", "b"), ("r3", "c")] {
            let r = new_rollout(id, &[device], RolloutState::Running);
            assert_eq!(first.create_rollout(r).await.unwrap(), Created::Done);
        }
        // All spawned before any is awaited: they run at once.
        let claims: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.clone();
                tokio::spawn(async move { s.claim_rollouts(format!("R{i}"), 60_000, 10).await })
            })
            .collect();
        let mut claimed = Vec::new();
        for c in claims {
            claimed.extend(c.await.unwrap().unwrap().into_iter().map(|c| c.id));
        }
        claimed.sort();
        assert_eq!(claimed, ["r1", "r2", "r3"], "each rollout claimed once");

        // Device c freed, then raced for, round after round.
        let mut holder = "r3".to_string();
        for round in 0..5 {
            let freed = first
                .set_rollout_state(
                    holder.clone(),
                    vec![RolloutState::Running],
                    RolloutState::Aborted,
                    None,
                )
                .await
                .unwrap();
            assert_eq!(freed, StateChange::Changed);
            let racers: Vec<_> = replicas
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let (s, id) = (s.clone(), format!("r{round}-{i}"));
                    tokio::spawn(async move {
                        let r = new_rollout(&id, &["c"], RolloutState::Running);
                        (id, s.create_rollout(r).await.unwrap())
                    })
                })
                .collect();
            let mut done = Vec::new();
            let mut busy = Vec::new();
            for r in racers {
                match r.await.unwrap() {
                    (id, Created::Done) => done.push(id),
                    (_, Created::Busy { device, rollout }) => busy.push((device, rollout)),
                }
            }
            assert_eq!(done.len(), 1, "round {round}: {done:?}");
            holder = done[0].clone();
            assert!(
                busy.iter().all(|(d, r)| d == "c" && *r == holder),
                "round {round}: {busy:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_unenrolled_device_leaves_groups_and_unfinished_rollouts_and_keeps_its_history() {
        use crate::serve::store::Unenrolment;
        for (db, s) in stores().await {
            let engine = db.engine();
            eprintln!("--- on {engine}");
            // r1 runs for a and b (a published, so its desired state is W); r2, for c, was
            // aborted (finished: its targets are history).
            s.create_rollout(new_rollout("r1", &["a", "b"], RolloutState::Running))
                .await
                .unwrap();
            let claim = s.claim_rollouts("A".into(), 60_000, 10).await.unwrap();
            assert!(
                s.apply_rollout_writes(claim[0].clone(), publish(&["a"]))
                    .await
                    .unwrap()
            );
            s.create_rollout(new_rollout("r2", &["c"], RolloutState::Running))
                .await
                .unwrap();
            s.set_rollout_state(
                "r2".into(),
                vec![RolloutState::Running],
                RolloutState::Aborted,
                None,
            )
            .await
            .unwrap();
            status(&*s, "a", true, None).await;
            let receipt = s
                .add_receipt(NewReceipt {
                    device: "a".into(),
                    kind: "unverified".into(),
                    workflow_id: None,
                    digest: None,
                    verdict: None,
                    signed_text: "sent before".into(),
                    verified: false,
                    error: Some("x".into()),
                })
                .await
                .unwrap();

            let Unenrolment::Done(u) = s.unenroll_device("a".into()).await.unwrap() else {
                panic!("{engine}: not done");
            };
            assert_eq!(
                (u.groups.clone(), u.rollouts.clone()),
                (vec!["g".to_string()], vec!["r1".to_string()])
            );
            assert_eq!(
                s.unenroll_device("a".into()).await.unwrap(),
                Unenrolment::Already(u.unenrolled_at)
            );
            assert_eq!(
                s.unenroll_device("nobody".into()).await.unwrap(),
                Unenrolment::Unknown
            );
            assert_eq!(s.unenrolled_devices().await.unwrap(), ["a"]);
            // Out of the list, its groups and desired state; its status and receipts stay.
            let listed: Vec<String> = s
                .devices()
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.id)
                .collect();
            assert_eq!(listed, ["b", "c"], "{engine}");
            let a = s.device("a".into()).await.unwrap().unwrap();
            assert_eq!(a.unenrolled_at, Some(u.unenrolled_at));
            assert!(
                a.groups.is_empty() && a.desired.is_none(),
                "{engine}: {a:?}"
            );
            assert!(a.status.is_some());
            let kept = s.receipts(Some("a".into()), 10).await.unwrap();
            assert_eq!(kept.len(), 1);
            assert_eq!(kept[0].summary.id, receipt);
            assert_eq!(
                s.signing_key("a".into())
                    .await
                    .unwrap()
                    .unwrap()
                    .unenrolled_at,
                Some(u.unenrolled_at)
            );
            // Its status is not stored any more.
            assert!(
                s.record_status(StatusReport {
                    device: "a".into(),
                    online: false,
                    running_id: None,
                    running_digest: None,
                    agent_version: None,
                    trust_version: None,
                    received_at: crate::serve::store::now_ms(),
                    snapshot_of: None,
                })
                .await
                .unwrap()
                .is_none()
            );
            // In r1 its target is unenrolled (counted apart) and the claim is void; the
            // finished r2 is untouched.
            let r1 = s.rollout("r1".into()).await.unwrap().unwrap();
            let t = r1.targets.iter().find(|t| t.device == "a").unwrap();
            assert_eq!(t.state, TargetState::Unenrolled, "{engine}");
            assert_eq!(t.reason.as_deref(), Some("the device was un-enrolled"));
            assert_eq!(
                (
                    r1.rollout.progress[0].unenrolled,
                    r1.rollout.progress[0].published
                ),
                (1, 0)
            );
            assert!(
                !s.apply_rollout_writes(claim[0].clone(), vec![])
                    .await
                    .unwrap()
            );
            let r2 = s.rollout("r2".into()).await.unwrap().unwrap();
            assert_eq!(r2.targets[0].state, TargetState::Pending);
            // A target it left does not hold it: a new rollout takes it in, as unenrolled
            // (an audience resolved before the un-enrolment), beside c.
            assert_eq!(
                s.create_rollout(new_rollout("r3", &["a", "c"], RolloutState::Paused))
                    .await
                    .unwrap(),
                Created::Done
            );
            let r3 = s.rollout("r3".into()).await.unwrap().unwrap();
            let states: Vec<(String, TargetState)> = r3
                .targets
                .iter()
                .map(|t| (t.device.clone(), t.state))
                .collect();
            assert_eq!(
                states,
                [
                    ("a".to_string(), TargetState::Unenrolled),
                    ("c".to_string(), TargetState::Pending)
                ]
            );
            // The registry import keeps it out with its old key, takes it back with a new one.
            let enrol = |key: &str| Enrolment {
                id: "a".into(),
                signing_key: key.into(),
                key_id: "id-a".into(),
                kem_key: None,
                groups: vec!["g".into()],
            };
            let counts = s
                .import_registry(vec![enrol("key-a")], vec![])
                .await
                .unwrap();
            assert_eq!((counts.kept_out, counts.updated), (1, 0), "{engine}");
            assert!(
                s.device("a".into())
                    .await
                    .unwrap()
                    .unwrap()
                    .unenrolled_at
                    .is_some()
            );
            let counts = s
                .import_registry(vec![enrol("key-a2")], vec![])
                .await
                .unwrap();
            assert_eq!((counts.kept_out, counts.updated), (0, 1), "{engine}");
            let a = s.device("a".into()).await.unwrap().unwrap();
            assert_eq!((a.unenrolled_at, a.groups), (None, vec!["g".to_string()]));
            assert!(s.unenrolled_devices().await.unwrap().is_empty());
        }
    }
}
