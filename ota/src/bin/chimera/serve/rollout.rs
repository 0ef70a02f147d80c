//! Rollouts: a signed workflow sent to an audience in canary steps (default 1 %, 10 %,
//! 100 %), each step waiting for the devices' signed receipts; negative or missing answers
//! beyond the failure budget stop it by itself, and — when a rollback document was given —
//! that document goes to every device that got the rollout's.
//!
//! ```text
//! running(step k) ──every device of steps ≤ k answered or overdue──▶ step k+1 … ──▶ completed
//! running ──budget exceeded──▶ rolling_back ──rollback sent to every device published to──▶ rolled_back
//! running ──budget exceeded, no rollback document──▶ halted
//! running ──pause──▶ paused ──resume──▶ running        running | paused | rolling_back ──abort──▶ aborted
//! ```
//!
//! Rolling back needs a *newer* signed document: devices refuse any document issued before
//! the one they run (anti-replay, `aegis_ota::device`), so re-publishing the previous file
//! does nothing. The rollback document re-issues the previous pipeline with a later
//! `issued_at` and the next sequence; it is uploaded like any workflow and named when the
//! rollout is created. Without one a rollout can only halt, and its creation says so.
//!
//! Step membership is `gateway::canary`'s stable SHA-256 ranking of the audience by the
//! workflow's id, so steps are cumulative (1 % ⊂ 10 % ⊂ 100 %) and the CLI's `--canary`
//! picks the same devices. When a device's answer is overdue (`answer_timeout_s` after it
//! was last sent the document) and it was seen online since, it is asked again once
//! ([`ASKS`]); still silent after that it is *missing*. Otherwise it is *offline*: not
//! counted against the budget, and reconciled (sent the document again) when its status
//! says online. Only receipts verified with the device's
//! enrolled key count (`service::store_receipt`). A device un-enrolled meanwhile is
//! *unenrolled*: settled, counted neither way, sent nothing more (not even the rollback).
//!
//! The engine of every replica claims rollouts through the database (a lease and a fence:
//! `store_rollouts`), never by electing a leader; whatever it decides is written under the
//! fence before anything is published.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::events::Bus;
use super::publisher::Publisher;
use super::store::{Store, now_ms};
use super::store_rollouts::{
    Claim, RolloutDetail, RolloutState, RolloutWrite, Target, TargetState,
};

/// What the engine does next with a rollout (decided from its stored state alone).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Nothing until an answer arrives or a deadline passes.
    Wait,
    /// These published targets' answers are overdue and their devices were seen online:
    /// send them the document again, (device, the `sent_before` bound of the write).
    Ask(Vec<(String, i64)>),
    /// These published targets' answers are overdue: (device, missing or offline, the
    /// `sent_before` bound of the write).
    Overdue(Vec<(String, TargetState, i64)>),
    /// The failure budget is exceeded.
    Halt(String),
    /// Publish the document to these devices (the pending ones of the steps so far).
    Publish(Vec<String>),
    /// Every device of the steps so far is settled: the next step.
    Advance {
        /// The step in progress.
        from: u32,
        /// The next.
        to: u32,
    },
    /// Every step passed.
    Complete,
    /// Send the rollback document to these devices (every one published to).
    SendRollback(Vec<String>),
    /// The rollback document went to every device that got the rollout's.
    RolledBack,
}

/// The next thing to do with `d` at `now` (unix ms).
pub(crate) fn decide(d: &RolloutDetail, now: i64) -> Decision {
    let r = &d.rollout;
    match r.state {
        RolloutState::Running => {}
        RolloutState::RollingBack => {
            let to_send: Vec<String> = d
                .targets
                .iter()
                .filter(|t| {
                    t.published_at.is_some()
                        && t.rollback_sent_at.is_none()
                        && t.state != TargetState::Unenrolled
                })
                .map(|t| t.device.clone())
                .collect();
            return if to_send.is_empty() {
                Decision::RolledBack
            } else {
                Decision::SendRollback(to_send)
            };
        }
        _ => return Decision::Wait,
    }
    let due_before = now - r.answer_timeout_ms;
    let overdue: Vec<(&Target, TargetState)> = d
        .targets
        .iter()
        .filter(|t| t.state == TargetState::Published && t.sent_at.is_some_and(|s| s <= due_before))
        .map(|t| (t, overdue_state(t)))
        .collect();
    let (ask, overdue): (Vec<_>, Vec<_>) = overdue
        .into_iter()
        .partition(|(t, s)| *s == TargetState::Missing && t.sends < ASKS);
    if !ask.is_empty() {
        return Decision::Ask(
            ask.iter()
                .map(|(t, _)| (t.device.clone(), due_before + 1))
                .collect(),
        );
    }
    let overdue: Vec<(String, TargetState, i64)> = overdue
        .into_iter()
        .map(|(t, s)| (t.device.clone(), s, due_before + 1))
        .collect();
    if !overdue.is_empty() {
        return Decision::Overdue(overdue);
    }
    let count = |s: TargetState| d.targets.iter().filter(|t| t.state == s).count() as u64;
    let (negative, missing) = (count(TargetState::Negative), count(TargetState::Missing));
    let b = &r.budget;
    if negative > u64::from(b.max_negative) {
        return Decision::Halt(format!(
            "{negative} negative answer(s), over the budget of {}",
            b.max_negative
        ));
    }
    if missing > u64::from(b.max_missing) {
        return Decision::Halt(format!(
            "{missing} device(s) online but silent past the {} s answer timeout, over the \
             budget of {}",
            r.answer_timeout_ms / 1000,
            b.max_missing
        ));
    }
    let in_step = |t: &&Target| t.step <= r.step;
    let pending: Vec<String> = d
        .targets
        .iter()
        .filter(in_step)
        .filter(|t| t.state == TargetState::Pending)
        .map(|t| t.device.clone())
        .collect();
    if !pending.is_empty() {
        return Decision::Publish(pending);
    }
    let settled = d
        .targets
        .iter()
        .filter(in_step)
        .all(|t| t.state != TargetState::Published);
    if !settled {
        return Decision::Wait;
    }
    // The percentage is judged on a settled step, not on its first answers.
    if let Some(pct) = b.max_failure_percent {
        let published = d
            .targets
            .iter()
            .filter(|t| t.published_at.is_some() && t.state != TargetState::Unenrolled)
            .count() as f64;
        let failed = (negative + missing) as f64;
        if published > 0.0 && failed * 100.0 > pct * published {
            return Decision::Halt(format!(
                "{failed} of {published} device(s) answered negatively or not at all, over \
                 the budget of {pct} %"
            ));
        }
    }
    if (r.step as usize) + 1 < r.steps.len() {
        Decision::Advance {
            from: r.step,
            to: r.step + 1,
        }
    } else {
        Decision::Complete
    }
}

/// An overdue target is missing if its device was seen online since it was last sent the
/// document (or says online now), else offline.
fn overdue_state(t: &Target) -> TargetState {
    let seen_since = matches!((t.last_seen, t.sent_at), (Some(l), Some(s)) if l >= s);
    if t.online == Some(true) || seen_since {
        TargetState::Missing
    } else {
        TargetState::Offline
    }
}

/// How many times a device seen online is sent a rollout's document before its silence
/// counts as missing: a second send asks again, and the device answers a document it
/// answered already with the receipt it sent (`aegis_ota::state::AnswerAgain`), so an
/// answer lost on the way (a replica killed with it in flight) is recovered.
pub(crate) const ASKS: u32 = 2;

/// A replica's rollout engine.
pub(crate) struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) events: Bus,
    /// This replica's name (claims are held under it).
    pub(crate) replica: String,
    pub(crate) lease_ms: i64,
    pub(crate) tick: Duration,
    /// Wakes it before the next tick (a receipt, a new or resumed rollout).
    pub(crate) wake: Arc<Notify>,
    pub(crate) log: super::ingest::OncePerMinute,
}

/// Decisions acted on per rollout per tick at most (each reloads the rollout).
const DECISIONS_PER_TICK: usize = 8;

/// Rollouts claimed per tick at most.
const CLAIMS_PER_TICK: u32 = 32;

impl Engine {
    /// Runs until the process ends.
    pub(crate) fn spawn(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                self.tick_once().await;
                tokio::select! {
                    _ = tokio::time::sleep(self.tick) => {}
                    _ = self.wake.notified() => {}
                }
            }
        });
    }

    /// Claims what it may and moves each claimed rollout on.
    pub(crate) async fn tick_once(&self) {
        let claims = match self
            .store
            .claim_rollouts(self.replica.clone(), self.lease_ms, CLAIMS_PER_TICK)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.log_once("claim", &format!("cannot claim rollouts: {e}"));
                return;
            }
        };
        for claim in claims {
            if let Err(e) = self.work(&claim).await {
                self.log_once(&claim.id, &format!("rollout {}: {e}", claim.id));
            }
        }
    }

    fn log_once(&self, key: &str, message: &str) {
        if self.log.due(key) {
            eprintln!("chimera serve: rollouts: {message} (logged once a minute)");
        }
    }

    /// Acts on the rollout's decisions until it waits (or the claim is lost).
    async fn work(&self, claim: &Claim) -> anyhow::Result<()> {
        for _ in 0..DECISIONS_PER_TICK {
            let Some(d) = self.store.rollout(claim.id.clone()).await? else {
                return Ok(());
            };
            if d.rollout.fence != claim.fence {
                return Ok(());
            }
            let decision = decide(&d, now_ms());
            if decision == Decision::Wait || !self.act(claim, &d, decision).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Writes `writes` under the claim; false when it was lost.
    async fn write(&self, claim: &Claim, writes: Vec<RolloutWrite>) -> anyhow::Result<bool> {
        Ok(self
            .store
            .apply_rollout_writes(claim.clone(), writes)
            .await?)
    }

    /// Does one decision; false when the claim was lost (stop working on it).
    async fn act(
        &self,
        claim: &Claim,
        d: &RolloutDetail,
        decision: Decision,
    ) -> anyhow::Result<bool> {
        let r = &d.rollout;
        let transition =
            |from, to, reason: Option<String>| RolloutWrite::Transition { from, to, reason };
        match decision {
            Decision::Wait => Ok(true),
            Decision::Ask(list) => {
                let writes = list
                    .iter()
                    .map(|(device, sent_before)| RolloutWrite::Ask {
                        device: device.clone(),
                        sent_before: *sent_before,
                    })
                    .collect();
                if !self.write(claim, writes).await? {
                    return Ok(false);
                }
                let devices: Vec<String> = list.into_iter().map(|(d, _)| d).collect();
                // Not published: the targets wait another answer timeout and then count
                // as missing (they were sent twice).
                if let Err(e) = self
                    .publisher
                    .to_devices(self.store.as_ref(), &r.workflow, devices.clone())
                    .await
                {
                    anyhow::bail!("asking {} again: {e}", devices.join(", "));
                }
                self.events.send(
                    "rollout",
                    serde_json::json!({ "id": r.id, "state": r.state, "step": r.step,
                                        "asked_again": devices }),
                );
                Ok(true)
            }
            Decision::Overdue(list) => {
                let writes = list
                    .iter()
                    .map(|(device, state, sent_before)| RolloutWrite::Overdue {
                        device: device.clone(),
                        state: *state,
                        sent_before: *sent_before,
                    })
                    .collect();
                if !self.write(claim, writes).await? {
                    return Ok(false);
                }
                for (device, state, _) in list {
                    self.events.send(
                        "rollout_target",
                        serde_json::json!({ "rollout": r.id, "device": device, "state": state }),
                    );
                }
                Ok(true)
            }
            Decision::Halt(reason) => {
                let to = if r.rollback.is_some() {
                    RolloutState::RollingBack
                } else {
                    RolloutState::Halted
                };
                let ok = self
                    .write(
                        claim,
                        vec![transition(RolloutState::Running, to, Some(reason.clone()))],
                    )
                    .await?;
                if ok {
                    self.audit(
                        "rollout.halt",
                        format!("{}: {reason}; now {}", r.id, to.as_str()),
                    )
                    .await?;
                    self.announce(r, to, r.step, Some(&reason));
                }
                Ok(ok)
            }
            Decision::Publish(devices) => {
                // Recorded under the fence first: a replica that lost its claim publishes
                // nothing. If the broker does not take it, the targets go back to pending
                // and the next tick tries again.
                if !self
                    .write(
                        claim,
                        vec![RolloutWrite::Publish {
                            devices: devices.clone(),
                        }],
                    )
                    .await?
                {
                    return Ok(false);
                }
                if let Err(e) = self
                    .publisher
                    .to_devices(self.store.as_ref(), &r.workflow, devices.clone())
                    .await
                {
                    self.write(claim, vec![RolloutWrite::Unpublish { devices }])
                        .await?;
                    anyhow::bail!("step {} not published: {e}", r.step);
                }
                self.events.send(
                    "rollout",
                    serde_json::json!({ "id": r.id, "state": r.state, "step": r.step,
                                        "published": devices }),
                );
                Ok(true)
            }
            Decision::Advance { from, to } => {
                let ok = self
                    .write(claim, vec![RolloutWrite::Advance { from, to }])
                    .await?;
                if ok {
                    self.announce(r, r.state, to, None);
                }
                Ok(ok)
            }
            Decision::Complete => {
                let ok = self
                    .write(
                        claim,
                        vec![transition(
                            RolloutState::Running,
                            RolloutState::Completed,
                            None,
                        )],
                    )
                    .await?;
                if ok {
                    self.audit("rollout.complete", r.id.clone()).await?;
                    self.announce(r, RolloutState::Completed, r.step, None);
                }
                Ok(ok)
            }
            Decision::SendRollback(devices) => {
                let Some(rollback) = &r.rollback else {
                    anyhow::bail!("rolling back without a rollback document");
                };
                if !self
                    .write(
                        claim,
                        vec![RolloutWrite::RollbackSent {
                            devices: devices.clone(),
                        }],
                    )
                    .await?
                {
                    return Ok(false);
                }
                if let Err(e) = self
                    .publisher
                    .to_devices(self.store.as_ref(), rollback, devices.clone())
                    .await
                {
                    self.write(claim, vec![RolloutWrite::RollbackUnsent { devices }])
                        .await?;
                    anyhow::bail!("rollback not published: {e}");
                }
                self.audit(
                    "rollout.rollback",
                    format!("{}: {rollback} sent to {}", r.id, devices.join(", ")),
                )
                .await?;
                Ok(true)
            }
            Decision::RolledBack => {
                let ok = self
                    .write(
                        claim,
                        vec![transition(
                            RolloutState::RollingBack,
                            RolloutState::RolledBack,
                            None,
                        )],
                    )
                    .await?;
                if ok {
                    self.announce(r, RolloutState::RolledBack, r.step, r.reason.as_deref());
                }
                Ok(ok)
            }
        }
    }

    async fn audit(&self, action: &str, detail: String) -> anyhow::Result<()> {
        Ok(self
            .store
            .audit("system".into(), action.into(), detail)
            .await?)
    }

    fn announce(
        &self,
        r: &super::store_rollouts::Rollout,
        state: RolloutState,
        step: u32,
        reason: Option<&str>,
    ) {
        self.events.send(
            "rollout",
            serde_json::json!({ "id": r.id, "state": state, "step": step, "reason": reason }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::store_rollouts::{Budget, Rollout, RolloutAudience};

    fn rollout(steps: &[f64], budget: Budget, targets: Vec<Target>) -> RolloutDetail {
        RolloutDetail {
            rollout: Rollout {
                id: "r".into(),
                workflow: "w".into(),
                workflow_id: "urn:uuid:1".into(),
                rollback: Some("b".into()),
                audience: RolloutAudience {
                    group: Some("g".into()),
                    devices: None,
                },
                steps: steps.to_vec(),
                budget,
                answer_timeout_ms: 1000,
                state: RolloutState::Running,
                step: 0,
                step_started_at: 0,
                reason: None,
                created_by: "t".into(),
                created_at: 0,
                updated_at: 0,
                claimed_by: None,
                lease_until: 0,
                fence: 1,
                progress: vec![],
            },
            targets,
        }
    }

    fn target(device: &str, step: u32, state: TargetState) -> Target {
        let sent = (state != TargetState::Pending).then_some(10_000);
        Target {
            device: device.into(),
            step,
            state,
            sends: u32::from(sent.is_some()),
            published_at: sent,
            sent_at: sent,
            answered_at: None,
            verdict: None,
            receipt_id: None,
            reason: None,
            rollback_sent_at: None,
            rollback_verdict: None,
            online: Some(true),
            last_seen: Some(9_000),
        }
    }

    use TargetState::*;

    #[test]
    fn steps_publish_wait_advance_and_complete() {
        let mut d = rollout(
            &[50.0, 100.0],
            Budget::default(),
            vec![target("a", 0, Pending), target("b", 1, Pending)],
        );
        assert_eq!(decide(&d, 10_000), Decision::Publish(vec!["a".into()]));
        d.targets[0] = target("a", 0, Published);
        assert_eq!(decide(&d, 10_500), Decision::Wait);
        d.targets[0].state = Applied;
        assert_eq!(decide(&d, 10_500), Decision::Advance { from: 0, to: 1 });
        d.rollout.step = 1;
        assert_eq!(decide(&d, 10_500), Decision::Publish(vec!["b".into()]));
        d.targets[1] = target("b", 1, Applied);
        assert_eq!(decide(&d, 10_500), Decision::Complete);
        d.rollout.state = RolloutState::Paused;
        assert_eq!(decide(&d, 10_500), Decision::Wait);
    }

    #[test]
    fn overdue_answers_are_asked_again_then_missing_when_seen_online_else_offline() {
        let mut silent = target("a", 0, Published);
        let mut away = target("b", 0, Published);
        away.online = Some(false);
        // The decision at `now` on these two targets.
        let at = |now, targets: [&Target; 2]| {
            let d = rollout(
                &[100.0],
                Budget::default(),
                targets.into_iter().cloned().collect(),
            );
            decide(&d, now)
        };
        // Due at sent_at + 1000. Online and silent after one send: asked again first.
        assert_eq!(at(10_999, [&silent, &away]), Decision::Wait);
        assert_eq!(
            at(11_000, [&silent, &away]),
            Decision::Ask(vec![("a".into(), 10_001)])
        );
        // Sent twice: missing; the offline one is offline whatever its sends.
        silent.sends = ASKS;
        assert_eq!(
            at(11_000, [&silent, &away]),
            Decision::Overdue(vec![
                ("a".into(), Missing, 10_001),
                ("b".into(), Offline, 10_001)
            ])
        );
        // Offline at the deadline but it said something after it was sent: asked again,
        // then missing.
        away.last_seen = Some(10_500);
        silent.state = Applied;
        assert_eq!(
            at(11_000, [&silent, &away]),
            Decision::Ask(vec![("b".into(), 10_001)])
        );
        away.sends = ASKS;
        assert_eq!(
            at(11_000, [&silent, &away]),
            Decision::Overdue(vec![("b".into(), Missing, 10_001)])
        );
    }

    #[test]
    fn the_budget_halts_on_counts_at_once_and_on_the_percentage_when_settled() {
        let budget = Budget {
            max_negative: 1,
            max_missing: 0,
            max_failure_percent: None,
        };
        let d = rollout(
            &[100.0],
            budget.clone(),
            vec![target("a", 0, Negative), target("b", 0, Published)],
        );
        assert_eq!(
            decide(&d, 10_500),
            Decision::Wait,
            "one negative is allowed"
        );
        let d = rollout(
            &[100.0],
            budget.clone(),
            vec![target("a", 0, Negative), target("b", 0, Negative)],
        );
        assert!(matches!(decide(&d, 10_500), Decision::Halt(w) if w.contains("2 negative")));
        let d = rollout(&[100.0], budget, vec![target("a", 0, Missing)]);
        assert!(matches!(decide(&d, 10_500), Decision::Halt(w) if w.contains("silent")));
        // Offline devices are not counted.
        let d = rollout(&[100.0], Budget::default(), vec![target("a", 0, Offline)]);
        assert_eq!(decide(&d, 10_500), Decision::Complete);
        // 1 of 3 is 33 %: within 40 %, not within 30 %; judged once the step settled.
        let pct = |p| Budget {
            max_negative: 5,
            max_missing: 5,
            max_failure_percent: Some(p),
        };
        let three = |last| {
            vec![
                target("a", 0, Negative),
                target("b", 0, Applied),
                target("c", 0, last),
            ]
        };
        assert_eq!(
            decide(&rollout(&[100.0], pct(30.0), three(Published)), 10_500),
            Decision::Wait
        );
        assert!(matches!(
            decide(&rollout(&[100.0], pct(30.0), three(Applied)), 10_500),
            Decision::Halt(_)
        ));
        assert_eq!(
            decide(&rollout(&[100.0], pct(40.0), three(Applied)), 10_500),
            Decision::Complete
        );
    }

    #[test]
    fn rolling_back_sends_to_every_device_published_to_then_ends() {
        let mut d = rollout(
            &[50.0, 100.0],
            Budget::default(),
            vec![
                target("a", 0, Applied),
                target("b", 0, Negative),
                target("c", 1, Pending),
            ],
        );
        d.rollout.state = RolloutState::RollingBack;
        assert_eq!(
            decide(&d, 10_500),
            Decision::SendRollback(vec!["a".into(), "b".into()])
        );
        d.targets[0].rollback_sent_at = Some(10_600);
        d.targets[1].rollback_sent_at = Some(10_600);
        assert_eq!(decide(&d, 10_700), Decision::RolledBack);
    }

    #[test]
    fn an_unenrolled_device_is_settled_counted_neither_way_and_sent_nothing() {
        // Published once, then un-enrolled: the step is settled without it.
        let d = rollout(
            &[100.0],
            Budget::default(),
            vec![target("a", 0, Applied), target("b", 0, Unenrolled)],
        );
        assert_eq!(decide(&d, 10_500), Decision::Complete);
        // Not in the percentage: 1 negative of 2 is 50 %, over 40 % (of 3 it would not be).
        let d = rollout(
            &[100.0],
            Budget {
                max_negative: 5,
                max_missing: 5,
                max_failure_percent: Some(40.0),
            },
            vec![
                target("a", 0, Negative),
                target("b", 0, Applied),
                target("c", 0, Unenrolled),
            ],
        );
        assert!(matches!(decide(&d, 10_500), Decision::Halt(w) if w.contains("1 of 2")));
        // Never pending again, and never sent the rollback document.
        let mut d = rollout(
            &[100.0],
            Budget::default(),
            vec![target("a", 0, Applied), target("b", 0, Unenrolled)],
        );
        d.rollout.state = RolloutState::RollingBack;
        assert_eq!(decide(&d, 10_500), Decision::SendRollback(vec!["a".into()]));
    }
}
