//! Schema version 4's part of the state (device status, desired state, rollouts) in
//! PostgreSQL: the same operations as the SQLite functions in `store_rollouts.rs`, whose docs
//! state each one's semantics, written for several replicas at once. Where SQLite serialises
//! with `BEGIN IMMEDIATE`, these take row locks (`FOR UPDATE`, `FOR UPDATE SKIP LOCKED` for
//! claims, `FOR NO KEY UPDATE` on the device row for status), put the condition into the
//! `UPDATE` itself (so a racing replica moves nothing twice) or, for rollout creation, an
//! advisory lock.
//!
//! Lock order, so that two transactions never wait on each other in a circle: the rollout
//! row, then `desired_state` rows, then `rollout_targets` rows, each set by device id
//! (`sorted`). `reconcile_claim` (desired state, then the target) and the engine's writes
//! (rollout, desired state, targets) follow it; so does an un-enrolment, which takes the
//! creation lock and the device row (`FOR NO KEY UPDATE`, as a status does) first.
//!
//! Column types: the flags are INTEGER (`i32`), counts, steps and times BIGINT (`i64`).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::store::{Unenrolled, Unenrolment};
use super::store_rollouts::{
    Answer, Budget, Claim, Created, DesiredState, DeviceStatus, NewRollout, PriorStatus, Rollout,
    RolloutDetail, RolloutState, RolloutWrite, StateChange, StatusChange, StatusReport,
    StepProgress, TARGET_STATE_AT_CREATION, Target, TargetChange, TargetState, UNENROLLING,
};

/// What a PostgreSQL call fails with (see `postgres.rs`).
pub(crate) type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Advisory lock key held while creating a rollout ("chimeraO"): the check that no device
/// is held by another unfinished rollout and the insert are one step for all replicas.
const CREATE_ROLLOUT_LOCK: i64 = 0x6368_696d_6572_614f;

/// `devices` in id order, once each: rows are locked in this order.
fn sorted(devices: &[String]) -> Vec<&String> {
    let mut v: Vec<&String> = devices.iter().collect();
    v.sort();
    v.dedup();
    v
}

fn words(states: &[RolloutState]) -> Vec<&'static str> {
    states.iter().map(|s| s.as_str()).collect()
}

fn rollout_state(word: &str) -> Result<RolloutState, Failure> {
    RolloutState::from_word(word).ok_or_else(|| format!("unknown rollout state {word:?}").into())
}

fn target_state(word: &str) -> Result<TargetState, Failure> {
    TargetState::from_word(word).ok_or_else(|| format!("unknown target state {word:?}").into())
}

fn count(n: i64, what: &str) -> Result<u32, Failure> {
    u32::try_from(n).map_err(|_| format!("{what} {n} out of range").into())
}

/// `record_status` (see `store_rollouts::record_status`). The device row is locked first
/// (`FOR NO KEY UPDATE`: receipts referencing it are not blocked), so two statuses of one
/// device are compared and stored one after the other.
pub(crate) async fn record_status(
    c: &mut deadpool_postgres::Object,
    s: &StatusReport,
) -> Result<Option<StatusChange>, Failure> {
    let tx = c.transaction().await?;
    if tx
        .query_opt(
            "SELECT 1 FROM devices WHERE id = $1 AND unenrolled_at IS NULL FOR NO KEY UPDATE",
            &[&s.device],
        )
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let old = match tx
        .query_opt(
            "SELECT online, running_digest, trust_version, status_at FROM device_status \
             WHERE device_id = $1",
            &[&s.device],
        )
        .await?
    {
        Some(r) => Some(PriorStatus {
            online: r.try_get::<_, i32>(0)? != 0,
            running_digest: r.try_get(1)?,
            trust_version: r.try_get(2)?,
            status_at: r.try_get(3)?,
        }),
        None => None,
    };
    let Some(change) = s.change_from(old.as_ref()) else {
        return Ok(Some(StatusChange::default()));
    };
    tx.execute(
        "INSERT INTO device_status (device_id, online, running_id, running_digest, last_seen, \
         status_at, agent_version, trust_version) VALUES ($1, $2, $3, $4, $5, $5, $6, $7) \
         ON CONFLICT (device_id) DO UPDATE SET \
         online = excluded.online, running_id = excluded.running_id, \
         running_digest = excluded.running_digest, status_at = excluded.status_at, \
         agent_version = excluded.agent_version, trust_version = excluded.trust_version, \
         last_seen = GREATEST(device_status.last_seen, excluded.last_seen)",
        &[
            &s.device,
            &i32::from(s.online),
            &s.running_id,
            &s.running_digest,
            &s.received_at,
            &s.agent_version,
            &s.trust_version_column(),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(change))
}

/// `set_desired` (an upsert per device).
pub(crate) async fn set_desired(
    c: &impl GenericClient,
    devices: &[String],
    digest: &str,
    rollout: Option<&str>,
    now: i64,
) -> Result<(), Failure> {
    let st = c
        .prepare_cached(
            "INSERT INTO desired_state (device_id, digest, rollout_id, set_at, sent_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (device_id) DO UPDATE SET \
             digest = excluded.digest, rollout_id = excluded.rollout_id, \
             set_at = excluded.set_at, sent_at = excluded.sent_at",
        )
        .await?;
    for d in sorted(devices) {
        c.execute(&st, &[d, &digest, &rollout, &now]).await?;
    }
    Ok(())
}

/// `reconcile_claim`. The claim is the conditional `UPDATE … AND (sent_at IS NULL OR
/// sent_at < $sent_before)`: a racing replica's update waits for the first, re-reads the
/// row and finds the condition false.
pub(crate) async fn reconcile_claim(
    c: &mut deadpool_postgres::Object,
    device: &str,
    sent_before: i64,
    now: i64,
) -> Result<Option<DesiredState>, Failure> {
    let tx = c.transaction().await?;
    let Some(r) = tx
        .query_opt(
            "SELECT d.digest, d.rollout_id, d.set_at, d.sent_at FROM desired_state d \
             JOIN device_status s ON s.device_id = d.device_id \
             WHERE d.device_id = $1 AND s.online = 1 \
             AND (s.running_digest IS NULL OR s.running_digest <> d.digest) \
             AND (d.sent_at IS NULL OR d.sent_at < $2) \
             AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.device_id = d.device_id \
                             AND r.digest = d.digest AND r.verified = 1)",
            &[&device, &sent_before],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut desired = DesiredState {
        digest: r.try_get(0)?,
        rollout: r.try_get(1)?,
        set_at: r.try_get(2)?,
        sent_at: r.try_get(3)?,
    };
    let n = tx
        .execute(
            "UPDATE desired_state SET sent_at = $3 WHERE device_id = $1 AND digest = $2 \
             AND (sent_at IS NULL OR sent_at < $4)",
            &[&device, &desired.digest, &now, &sent_before],
        )
        .await?;
    if n != 1 {
        return Ok(None);
    }
    if let Some(rollout) = &desired.rollout {
        tx.execute(
            "UPDATE rollout_targets SET sends = sends + 1, sent_at = $3, \
             state = CASE WHEN state = 'offline' THEN 'published' ELSE state END \
             WHERE rollout_id = $1 AND device_id = $2 \
             AND state IN ('published', 'missing', 'offline') \
             AND EXISTS (SELECT 1 FROM rollouts WHERE id = $1 AND workflow_digest = $4)",
            &[rollout, &device, &now, &desired.digest],
        )
        .await?;
    }
    tx.commit().await?;
    desired.sent_at = Some(now);
    Ok(Some(desired))
}

/// `record_answer`. Each target moves only if it still waits (the condition is in the
/// `UPDATE`): a copy of the answer handled by another replica at the same time moves
/// nothing, and only what moved is returned.
pub(crate) async fn record_answer(
    c: &mut deadpool_postgres::Object,
    a: &Answer,
    now: i64,
) -> Result<Vec<TargetChange>, Failure> {
    let tx = c.transaction().await?;
    let state = if a.negative {
        TargetState::Negative
    } else {
        TargetState::Applied
    };
    let moved = tx
        .query(
            "UPDATE rollout_targets t SET state = $3, answered_at = $4, verdict = $5, \
             reason = $6, receipt_id = $7 FROM rollouts r \
             WHERE r.id = t.rollout_id AND t.device_id = $1 AND r.workflow_digest = $2 \
             AND t.state IN ('published', 'missing', 'offline') \
             RETURNING t.rollout_id",
            &[
                &a.device,
                &a.digest,
                &state.as_str(),
                &now,
                &a.verdict,
                &a.reason,
                &a.receipt_id,
            ],
        )
        .await?;
    let mut changes = Vec::new();
    for r in moved {
        changes.push(TargetChange {
            rollout: r.try_get(0)?,
            device: a.device.clone(),
            state: Some(state),
            rollback_verdict: None,
        });
    }
    let rolled = tx
        .query(
            "UPDATE rollout_targets t SET rollback_verdict = $3 FROM rollouts r \
             WHERE r.id = t.rollout_id AND t.device_id = $1 AND r.rollback_digest = $2 \
             AND t.rollback_sent_at IS NOT NULL AND t.rollback_verdict IS NULL \
             RETURNING t.rollout_id",
            &[&a.device, &a.digest, &a.verdict],
        )
        .await?;
    for r in rolled {
        changes.push(TargetChange {
            rollout: r.try_get(0)?,
            device: a.device.clone(),
            state: None,
            rollback_verdict: Some(a.verdict.clone()),
        });
    }
    tx.execute(
        "UPDATE device_status SET last_seen = $2 WHERE device_id = $1 AND last_seen < $2",
        &[&a.device, &now],
    )
    .await?;
    tx.commit().await?;
    // A stable order (answers to the document first, then to rollbacks; by rollout).
    changes.sort_by(|x, y| (x.state.is_none(), &x.rollout).cmp(&(y.state.is_none(), &y.rollout)));
    Ok(changes)
}

/// `create_rollout`, under the creation lock.
pub(crate) async fn create_rollout(
    c: &mut deadpool_postgres::Object,
    r: &NewRollout,
    now: i64,
) -> Result<Created, Failure> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_ROLLOUT_LOCK])
        .await?;
    let busy = tx
        .prepare(
            "SELECT r.id FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id \
             WHERE t.device_id = $1 AND r.state = ANY($2) AND t.state <> 'unenrolled' LIMIT 1",
        )
        .await?;
    let holding = words(&RolloutState::HOLDING);
    for (device, _) in &r.targets {
        if let Some(row) = tx.query_opt(&busy, &[device, &holding]).await? {
            return Ok(Created::Busy {
                device: device.clone(),
                rollout: row.try_get(0)?,
            });
        }
    }
    tx.execute(
        "INSERT INTO rollouts (id, workflow_digest, workflow_id, rollback_digest, audience, \
         steps, max_negative, max_missing, max_failure_pct, answer_timeout_ms, state, step, \
         step_started_at, reason, created_by, created_at, updated_at, claimed_by, \
         lease_until, fence) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, \
         NULL, $13, $12, $12, NULL, 0, 0)",
        &[
            &r.id,
            &r.workflow_digest,
            &r.workflow_id,
            &r.rollback_digest,
            &serde_json::to_string(&r.audience)?,
            &serde_json::to_string(&r.steps)?,
            &i64::from(r.budget.max_negative),
            &i64::from(r.budget.max_missing),
            &r.budget.max_failure_percent,
            &r.answer_timeout_ms,
            &r.state.as_str(),
            &now,
            &r.created_by,
        ],
    )
    .await?;
    let ins = tx
        .prepare(&format!(
            "INSERT INTO rollout_targets (rollout_id, device_id, step, state, sends) \
             SELECT $1, $2, $3, {TARGET_STATE_AT_CREATION}, 0 FROM devices WHERE id = $2"
        ))
        .await?;
    for (device, step) in &r.targets {
        tx.execute(&ins, &[&r.id, device, &i64::from(*step)])
            .await?;
    }
    tx.commit().await?;
    Ok(Created::Done)
}

/// `unenroll_device` (see `store_rollouts::unenroll_device`), in the lock order of this
/// module, after the creation lock.
pub(crate) async fn unenroll_device(
    c: &mut deadpool_postgres::Object,
    device: &str,
    now: i64,
) -> Result<Unenrolment, Failure> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_ROLLOUT_LOCK])
        .await?;
    let Some(row) = tx
        .query_opt(
            "SELECT unenrolled_at FROM devices WHERE id = $1 FOR NO KEY UPDATE",
            &[&device],
        )
        .await?
    else {
        return Ok(Unenrolment::Unknown);
    };
    if let Some(at) = row.try_get::<_, Option<i64>>(0)? {
        return Ok(Unenrolment::Already(at));
    }
    let holding = words(&RolloutState::HOLDING);
    let rollouts: Vec<String> = tx
        .query(
            &format!(
                "SELECT r.id FROM rollouts r WHERE r.state = ANY($2) AND EXISTS ( \
                   SELECT 1 FROM rollout_targets t WHERE t.rollout_id = r.id \
                   AND t.device_id = $1 AND t.state IN ({UNENROLLING})) \
                 ORDER BY r.id COLLATE \"C\" FOR UPDATE"
            ),
            &[&device, &holding],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    tx.execute("DELETE FROM desired_state WHERE device_id = $1", &[&device])
        .await?;
    tx.execute(
        &format!(
            "UPDATE rollout_targets SET state = 'unenrolled', \
             reason = COALESCE(reason, 'the device was un-enrolled') \
             WHERE rollout_id = ANY($2) AND device_id = $1 AND state IN ({UNENROLLING})"
        ),
        &[&device, &rollouts],
    )
    .await?;
    tx.execute(
        "UPDATE rollouts SET fence = fence + 1, claimed_by = NULL, lease_until = 0, \
         updated_at = $2 WHERE id = ANY($1)",
        &[&rollouts, &now],
    )
    .await?;
    let groups: Vec<String> = tx
        .query(
            "DELETE FROM group_members WHERE device_id = $1 RETURNING group_name",
            &[&device],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut groups = groups;
    groups.sort();
    tx.execute(
        "UPDATE devices SET unenrolled_at = $2 WHERE id = $1",
        &[&device, &now],
    )
    .await?;
    tx.commit().await?;
    Ok(Unenrolment::Done(Unenrolled {
        device: device.to_string(),
        unenrolled_at: now,
        groups,
        rollouts,
    }))
}

const ROLLOUT_COLUMNS: &str = "id, workflow_digest, workflow_id, rollback_digest, audience, \
     steps, max_negative, max_missing, max_failure_pct, answer_timeout_ms, state, step, \
     step_started_at, reason, created_by, created_at, updated_at, claimed_by, lease_until, fence";

fn rollout_row(r: &Row) -> Result<Rollout, Failure> {
    Ok(Rollout {
        id: r.try_get(0)?,
        workflow: r.try_get(1)?,
        workflow_id: r.try_get(2)?,
        rollback: r.try_get(3)?,
        audience: serde_json::from_str(r.try_get(4)?)?,
        steps: serde_json::from_str(r.try_get(5)?)?,
        budget: Budget {
            max_negative: count(r.try_get(6)?, "max_negative")?,
            max_missing: count(r.try_get(7)?, "max_missing")?,
            max_failure_percent: r.try_get(8)?,
        },
        answer_timeout_ms: r.try_get(9)?,
        state: rollout_state(r.try_get(10)?)?,
        step: count(r.try_get(11)?, "step")?,
        step_started_at: r.try_get(12)?,
        reason: r.try_get(13)?,
        created_by: r.try_get(14)?,
        created_at: r.try_get(15)?,
        updated_at: r.try_get(16)?,
        claimed_by: r.try_get(17)?,
        lease_until: r.try_get(18)?,
        fence: r.try_get(19)?,
        progress: Vec::new(),
    })
}

/// Fills `r.progress` from its targets.
async fn progress(c: &impl GenericClient, r: &mut Rollout) -> Result<(), Failure> {
    let mut steps: Vec<StepProgress> = r
        .steps
        .iter()
        .map(|p| StepProgress {
            percent: *p,
            ..Default::default()
        })
        .collect();
    let st = c
        .prepare_cached(
            "SELECT step, state, COUNT(*), \
             SUM(CASE WHEN rollback_sent_at IS NULL THEN 0 ELSE 1 END) \
             FROM rollout_targets WHERE rollout_id = $1 GROUP BY step, state",
        )
        .await?;
    for row in c.query(&st, &[&r.id]).await? {
        let step: i64 = row.try_get(0)?;
        let state = target_state(row.try_get(1)?)?;
        let n = count(row.try_get(2)?, "count")?;
        let rollback = count(row.try_get(3)?, "count")?;
        let Some(p) = usize::try_from(step).ok().and_then(|s| steps.get_mut(s)) else {
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
pub(crate) async fn rollouts(c: &impl GenericClient, limit: u32) -> Result<Vec<Rollout>, Failure> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts \
             ORDER BY created_at DESC, id COLLATE \"C\" LIMIT $1"
        ))
        .await?;
    let mut list = Vec::new();
    for row in c.query(&st, &[&i64::from(limit)]).await? {
        list.push(rollout_row(&row)?);
    }
    for r in &mut list {
        progress(c, r).await?;
    }
    Ok(list)
}

/// `rollout`: one, with progress and every target (with its device's status).
pub(crate) async fn rollout(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<RolloutDetail>, Failure> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"
        ))
        .await?;
    let Some(row) = c.query_opt(&st, &[&id]).await? else {
        return Ok(None);
    };
    let mut rollout = rollout_row(&row)?;
    progress(c, &mut rollout).await?;
    let st = c
        .prepare_cached(
            "SELECT t.device_id, t.step, t.state, t.sends, t.published_at, t.sent_at, \
             t.answered_at, t.verdict, t.receipt_id, t.reason, t.rollback_sent_at, \
             t.rollback_verdict, s.online, s.last_seen FROM rollout_targets t \
             LEFT JOIN device_status s ON s.device_id = t.device_id \
             WHERE t.rollout_id = $1 ORDER BY t.step, t.device_id COLLATE \"C\"",
        )
        .await?;
    let mut targets = Vec::new();
    for r in c.query(&st, &[&id]).await? {
        targets.push(Target {
            device: r.try_get(0)?,
            step: count(r.try_get(1)?, "step")?,
            state: target_state(r.try_get(2)?)?,
            sends: count(r.try_get(3)?, "sends")?,
            published_at: r.try_get(4)?,
            sent_at: r.try_get(5)?,
            answered_at: r.try_get(6)?,
            verdict: r.try_get(7)?,
            receipt_id: r.try_get(8)?,
            reason: r.try_get(9)?,
            rollback_sent_at: r.try_get(10)?,
            rollback_verdict: r.try_get(11)?,
            online: r.try_get::<_, Option<i32>>(12)?.map(|o| o != 0),
            last_seen: r.try_get(13)?,
        });
    }
    Ok(Some(RolloutDetail { rollout, targets }))
}

/// `set_rollout_state`: the rollout row locked (`FOR UPDATE`), its state checked, then the
/// update that raises the fence.
pub(crate) async fn set_rollout_state(
    c: &mut deadpool_postgres::Object,
    id: &str,
    from: &[RolloutState],
    to: RolloutState,
    reason: Option<&str>,
    now: i64,
) -> Result<StateChange, Failure> {
    let tx = c.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT state FROM rollouts WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Ok(StateChange::Missing);
    };
    let current = rollout_state(row.try_get(0)?)?;
    if !from.contains(&current) {
        return Ok(StateChange::Refused(current));
    }
    tx.execute(
        "UPDATE rollouts SET state = $2, reason = COALESCE($3, reason), updated_at = $4, \
         fence = fence + 1, claimed_by = NULL, lease_until = 0 WHERE id = $1",
        &[&id, &to.as_str(), &reason, &now],
    )
    .await?;
    tx.commit().await?;
    Ok(StateChange::Changed)
}

/// `claim_rollouts`: the claimable rows taken with `FOR UPDATE SKIP LOCKED` (a replica
/// claiming at the same moment skips them instead of waiting), then updated.
pub(crate) async fn claim_rollouts(
    c: &mut deadpool_postgres::Object,
    replica: &str,
    now: i64,
    lease_ms: i64,
    limit: u32,
) -> Result<Vec<Claim>, Failure> {
    let tx = c.transaction().await?;
    let rows = tx
        .query(
            "SELECT id, claimed_by, lease_until, fence FROM rollouts WHERE state = ANY($3) \
             AND (lease_until < $1 OR claimed_by = $2) ORDER BY created_at, id COLLATE \"C\" \
             LIMIT $4 FOR UPDATE SKIP LOCKED",
            &[
                &now,
                &replica,
                &words(&RolloutState::ACTIVE),
                &i64::from(limit),
            ],
        )
        .await?;
    let mut claims = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get(0)?;
        let holder: Option<String> = r.try_get(1)?;
        let lease_until: i64 = r.try_get(2)?;
        let fence: i64 = r.try_get(3)?;
        let fence = if holder.as_deref() == Some(replica) && lease_until >= now {
            fence
        } else {
            fence + 1
        };
        tx.execute(
            "UPDATE rollouts SET claimed_by = $2, lease_until = $3, fence = $4 WHERE id = $1",
            &[&id, &replica, &(now + lease_ms), &fence],
        )
        .await?;
        claims.push(Claim { id, fence });
    }
    tx.commit().await?;
    Ok(claims)
}

/// `apply_rollout_writes`: the rollout row locked (`FOR UPDATE`) and its fence checked,
/// then every write, all in one transaction (dropped, so rolled back, when one is refused).
pub(crate) async fn apply_rollout_writes(
    c: &mut deadpool_postgres::Object,
    claim: &Claim,
    writes: &[RolloutWrite],
    now: i64,
) -> Result<bool, Failure> {
    let tx = c.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT fence, workflow_digest, rollback_digest FROM rollouts WHERE id = $1 \
             FOR UPDATE",
            &[&claim.id],
        )
        .await?
    else {
        return Ok(false);
    };
    let fence: i64 = row.try_get(0)?;
    let digest: String = row.try_get(1)?;
    let rollback: Option<String> = row.try_get(2)?;
    if fence != claim.fence {
        return Ok(false);
    }
    let id = claim.id.as_str();
    for w in writes {
        match w {
            RolloutWrite::Publish { devices } => {
                set_desired(&tx, devices, &digest, Some(id), now).await?;
                let st = tx
                    .prepare_cached(
                        "UPDATE rollout_targets SET state = 'published', published_at = $3, \
                         sent_at = $3, sends = sends + 1 \
                         WHERE rollout_id = $1 AND device_id = $2 AND state = 'pending'",
                    )
                    .await?;
                for d in sorted(devices) {
                    tx.execute(&st, &[&id, d, &now]).await?;
                }
            }
            RolloutWrite::Unpublish { devices } => {
                let st = tx
                    .prepare_cached(
                        "UPDATE rollout_targets SET state = 'pending', published_at = NULL, \
                         sent_at = NULL, sends = sends - 1 \
                         WHERE rollout_id = $1 AND device_id = $2 AND state = 'published'",
                    )
                    .await?;
                for d in sorted(devices) {
                    tx.execute(&st, &[&id, d]).await?;
                }
            }
            RolloutWrite::Ask {
                device,
                sent_before,
            } => {
                tx.execute(
                    "UPDATE rollout_targets SET sent_at = $3, sends = sends + 1 \
                     WHERE rollout_id = $1 AND device_id = $2 AND state = 'published' \
                     AND sent_at < $4",
                    &[&id, device, &now, sent_before],
                )
                .await?;
            }
            RolloutWrite::Overdue {
                device,
                state,
                sent_before,
            } => {
                tx.execute(
                    "UPDATE rollout_targets SET state = $3 WHERE rollout_id = $1 \
                     AND device_id = $2 AND state = 'published' AND sent_at < $4",
                    &[&id, device, &state.as_str(), sent_before],
                )
                .await?;
            }
            RolloutWrite::Advance { from, to } => {
                let n = tx
                    .execute(
                        "UPDATE rollouts SET step = $3, step_started_at = $4, updated_at = $4 \
                         WHERE id = $1 AND step = $2 AND state = 'running'",
                        &[&id, &i64::from(*from), &i64::from(*to), &now],
                    )
                    .await?;
                if n != 1 {
                    return Ok(false);
                }
            }
            RolloutWrite::Transition { from, to, reason } => {
                let n = tx
                    .execute(
                        "UPDATE rollouts SET state = $3, reason = COALESCE($4, reason), \
                         updated_at = $5 WHERE id = $1 AND state = $2",
                        &[&id, &from.as_str(), &to.as_str(), reason, &now],
                    )
                    .await?;
                if n != 1 {
                    return Ok(false);
                }
            }
            RolloutWrite::RollbackSent { devices } => {
                let Some(rollback) = &rollback else {
                    return Ok(false);
                };
                set_desired(&tx, devices, rollback, Some(id), now).await?;
                let st = tx
                    .prepare_cached(
                        "UPDATE rollout_targets SET rollback_sent_at = $3 \
                         WHERE rollout_id = $1 AND device_id = $2 AND rollback_sent_at IS NULL",
                    )
                    .await?;
                for d in sorted(devices) {
                    tx.execute(&st, &[&id, d, &now]).await?;
                }
            }
            RolloutWrite::RollbackUnsent { devices } => {
                let st = tx
                    .prepare_cached(
                        "UPDATE rollout_targets SET rollback_sent_at = NULL \
                         WHERE rollout_id = $1 AND device_id = $2",
                    )
                    .await?;
                for d in sorted(devices) {
                    tx.execute(&st, &[&id, d]).await?;
                }
            }
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// A device's status from the status columns starting at `at` (online, running_id,
/// running_digest, last_seen, status_at, agent_version, trust_version), None when they are
/// NULL (no status yet).
pub(crate) fn device_status(r: &Row, at: usize) -> Result<Option<DeviceStatus>, Failure> {
    let Some(online) = r.try_get::<_, Option<i32>>(at)? else {
        return Ok(None);
    };
    Ok(Some(DeviceStatus {
        online: online != 0,
        running_id: r.try_get(at + 1)?,
        running_digest: r.try_get(at + 2)?,
        last_seen: r.try_get(at + 3)?,
        status_at: r.try_get(at + 4)?,
        agent_version: r.try_get(at + 5)?,
        trust_version: r
            .try_get::<_, Option<i64>>(at + 6)?
            .and_then(|v| u64::try_from(v).ok()),
    }))
}

/// A device's desired state from the columns starting at `at` (digest, rollout_id, set_at,
/// sent_at), None when they are NULL.
pub(crate) fn desired_state(r: &Row, at: usize) -> Result<Option<DesiredState>, Failure> {
    let Some(digest) = r.try_get::<_, Option<String>>(at)? else {
        return Ok(None);
    };
    Ok(Some(DesiredState {
        digest,
        rollout: r.try_get(at + 1)?,
        set_at: r.try_get(at + 2)?,
        sent_at: r.try_get(at + 3)?,
    }))
}
