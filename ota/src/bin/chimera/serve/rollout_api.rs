//! The rollouts' HTTP surface: create (checked like a publish to each device, the rollback
//! document checked to be one devices would accept after the rollout's), list, show with
//! per-step progress and per-device state, pause, resume, abort. The engine
//! (`rollout.rs`) does the rest.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use aegis_ota::maml;

use super::api::{ApiError, AppState, Caller, LIMIT, LimitQuery, Param, Route, limit};
use super::service;
use super::store::{Role, new_id};
use super::store_rollouts::{
    Budget, Created, NewRollout, Rollout, RolloutAudience, RolloutDetail, RolloutState, StateChange,
};
use crate::gateway::{self, Audience, AudienceRules, Registry, To};

const ID: Param = Param {
    name: "id",
    location: "path",
    description: "The rollout's id.",
};

/// The routes of this module.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/api/v1/rollouts",
        role: Some(Role::Viewer),
        summary: "Rollouts, newest first, with per-step progress.",
        params: &[LIMIT],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<Vec<Rollout>>()),
        make: || get(list),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/rollouts",
        role: Some(Role::Operator),
        summary: "Roll an uploaded workflow out to a group or a list of devices in canary \
                  steps with a failure budget; it halts by itself when negative or missing \
                  answers exceed the budget and then publishes the rollback document (an \
                  uploaded document that re-issues the previous pipeline, newer than the \
                  rollout's: devices refuse older ones) to every device that got it. \
                  Without one it can only halt (`on_failure: halt`).",
        params: &[],
        body: Some((
            "`workflow` (digest), `group` or `devices`, `steps` (percent, default [1, 10, \
             100]), `budget`, `answer_timeout_s` (default 120), `rollback` (digest), \
             `paused` (create it paused).",
            |g| g.subschema_for::<CreateRollout>(),
        )),
        ok: 201,
        response: Some(|g| g.subschema_for::<CreatedRollout>()),
        make: || post(create),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/rollouts/{id}",
        role: Some(Role::Viewer),
        summary: "One rollout: per-step progress and every device's state.",
        params: &[ID],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<RolloutDetail>()),
        make: || get(show),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/rollouts/{id}/pause",
        role: Some(Role::Operator),
        summary: "Pause a running rollout: nothing more is published or decided until it \
                  is resumed (answers are still recorded).",
        params: &[ID],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<RolloutDetail>()),
        make: || post(pause),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/rollouts/{id}/resume",
        role: Some(Role::Operator),
        summary: "Resume a paused rollout.",
        params: &[ID],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<RolloutDetail>()),
        make: || post(resume),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/rollouts/{id}/abort",
        role: Some(Role::Operator),
        summary: "Abort a running, paused or rolling-back rollout: nothing more is \
                  published (no rollback); devices keep what they were sent.",
        params: &[ID],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<RolloutDetail>()),
        make: || post(abort),
    },
];

fn default_steps() -> Vec<f64> {
    vec![1.0, 10.0, 100.0]
}

fn default_answer_timeout_s() -> u32 {
    120
}

/// `POST /api/v1/rollouts`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRollout {
    /// The digest of an uploaded workflow.
    workflow: String,
    /// A group of the registry the workflow targets (or `devices`).
    #[serde(default)]
    group: Option<String>,
    /// Enrolled devices the workflow targets (or `group`).
    #[serde(default)]
    devices: Option<Vec<String>>,
    /// Cumulative percentages of the audience, increasing, the last 100 (default
    /// [1, 10, 100]; each step at least one device).
    #[serde(default = "default_steps")]
    steps: Vec<f64>,
    /// The failure budget (default: no negative and no missing answer).
    #[serde(default)]
    budget: Budget,
    /// Seconds each device has to answer after it was sent the document (1 to 86400,
    /// default 120).
    #[serde(default = "default_answer_timeout_s")]
    answer_timeout_s: u32,
    /// The digest of an uploaded document that rolls it back: the previous pipeline issued
    /// again, after the rollout's document, for the same devices.
    #[serde(default)]
    rollback: Option<String>,
    /// Create it paused (resume starts it).
    #[serde(default)]
    paused: bool,
}

/// What creating a rollout answers.
#[derive(Debug, Serialize, JsonSchema)]
struct CreatedRollout {
    /// The rollout.
    #[serde(flatten)]
    rollout: RolloutDetail,
    /// What happens when the budget is exceeded: `rollback` (the rollback document is
    /// published) or `halt` (it only stops).
    on_failure: String,
    /// What the caller should know (no rollback document, created paused).
    warnings: Vec<String>,
}

/// A refusal: its status and message.
type Refusal = (StatusCode, String);

fn unprocessable(m: impl std::fmt::Display) -> Refusal {
    (StatusCode::UNPROCESSABLE_ENTITY, m.to_string())
}

fn check_digest(field: &str, d: &str) -> Result<(), Refusal> {
    if d.len() == 64 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err((
            StatusCode::BAD_REQUEST,
            format!("{field}: 64 lowercase hex digits"),
        ))
    }
}

/// A document the service holds, as a rollout needs it.
#[derive(Debug, Clone)]
pub(crate) struct HeldDocument {
    digest: String,
    front: maml::FrontMatter,
    /// The key id of its signature.
    key_id: String,
}

impl HeldDocument {
    /// Reads an uploaded document's front matter (it verified at upload).
    pub(crate) fn read(digest: &str, text: &str) -> Result<HeldDocument, Refusal> {
        let bad = |e: &dyn std::fmt::Display| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored workflow {digest}: {e}"),
            )
        };
        let (signed, block) = maml::split_signed(text.as_bytes()).map_err(|e| bad(&e))?;
        let doc = maml::parse(&signed).map_err(|e| bad(&e))?;
        Ok(HeldDocument {
            digest: digest.to_string(),
            front: doc.front,
            key_id: block.key,
        })
    }

    fn issued_at(&self) -> i64 {
        maml::parse_time(&self.front.issued_at).unwrap_or(i64::MIN)
    }
}

/// A rollout decided, not yet stored.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) rollout: NewRollout,
    pub(crate) warnings: Vec<String>,
}

/// Checks a creation request against the held documents and the registry and decides the
/// audience and each device's step. Every audience check is the publish path's
/// (`gateway::audience`), for the rollout's document and for the rollback document alike.
pub(crate) fn plan(
    req: &CreateRollout,
    forward: &HeldDocument,
    rollback: Option<&HeldDocument>,
    reg: &Registry,
    registry_path: &std::path::Path,
    created_by: &str,
) -> Result<Plan, Refusal> {
    let steps = &req.steps;
    if steps.is_empty() || steps.len() > 20 {
        return Err(unprocessable("steps: 1 to 20 percentages"));
    }
    if steps.iter().any(|p| !(*p > 0.0 && *p <= 100.0)) {
        return Err(unprocessable("steps: each above 0 and at most 100"));
    }
    if steps.windows(2).any(|w| w[0] >= w[1]) || steps.last() != Some(&100.0) {
        return Err(unprocessable(
            "steps: increasing, the last 100 (a rollout reaches its whole audience)",
        ));
    }
    if let Some(p) = req.budget.max_failure_percent
        && !(0.0..=100.0).contains(&p)
    {
        return Err(unprocessable("budget.max_failure_percent: 0 to 100"));
    }
    if !(1..=86_400).contains(&req.answer_timeout_s) {
        return Err(unprocessable("answer_timeout_s: 1 to 86400"));
    }
    let rules = |d: &HeldDocument| -> (String, Vec<String>, Vec<String>) {
        (
            format!("workflow {}", d.digest),
            d.front.target.devices.clone(),
            d.front.target.groups.clone(),
        )
    };
    let resolve = |d: &HeldDocument, to: To<'_>| -> Result<Audience, Refusal> {
        let (what, devices, groups) = rules(d);
        gateway::audience(
            reg,
            registry_path,
            to,
            None,
            &AudienceRules {
                what: &what,
                canary_key: &d.front.id,
                target_devices: &devices,
                target_groups: &groups,
                device_topic: &|x| gateway::workflow_topic(x),
                group_topic: &|g| format!("aegis/v1/groups/{g}/workflows"),
            },
        )
        .map_err(unprocessable)
    };
    let (audience, devices) = match (&req.group, &req.devices) {
        (Some(g), None) => (
            RolloutAudience {
                group: Some(g.clone()),
                devices: None,
            },
            resolve(forward, To::Group(g))?.devices,
        ),
        (None, Some(list)) => {
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.is_empty() || sorted.len() != list.len() || list.len() > 100_000 {
                return Err(unprocessable(
                    "devices: 1 to 100000 device ids, each named once",
                ));
            }
            for d in list {
                resolve(forward, To::Device(d))?;
            }
            (
                RolloutAudience {
                    group: None,
                    devices: Some(list.clone()),
                },
                list.clone(),
            )
        }
        _ => return Err(unprocessable("name either `group` or `devices`")),
    };
    let mut warnings = Vec::new();
    match rollback {
        Some(b) => {
            if b.digest == forward.digest {
                return Err(unprocessable(
                    "rollback: the rollout's own document cannot roll it back",
                ));
            }
            // Devices never replace a running workflow with one issued before it.
            if b.issued_at() < forward.issued_at() {
                return Err(unprocessable(format!(
                    "rollback: issued at {}, before the rollout's document ({}): devices that \
                     applied it would refuse the rollback; re-issue the previous pipeline now",
                    b.front.issued_at, forward.front.issued_at
                )));
            }
            let same_order = b.key_id == forward.key_id
                && sorted_target(&b.front.target) == sorted_target(&forward.front.target);
            if same_order && b.front.sequence <= forward.front.sequence {
                return Err(unprocessable(format!(
                    "rollback: sequence {} is not above the rollout's {} for the same issuer \
                     key and targets: devices would refuse it as a replay",
                    b.front.sequence, forward.front.sequence
                )));
            }
            for d in &devices {
                resolve(b, To::Device(d)).map_err(|(s, m)| (s, format!("rollback: {m}")))?;
            }
        }
        None => warnings.push(
            "no rollback document: when the failure budget is exceeded the rollout halts, and \
             the devices that applied it keep it (devices refuse older documents, so rolling \
             back needs a newer signed one re-issuing the previous pipeline)"
                .to_string(),
        ),
    }
    if req.paused {
        warnings.push("created paused: POST /api/v1/rollouts/{id}/resume starts it".into());
    }
    // Cumulative steps from the stable ranking: a device's step is the first that has it.
    let mut step_of = std::collections::HashMap::new();
    for (k, pct) in steps.iter().enumerate() {
        for d in gateway::canary(&devices, &forward.front.id, *pct) {
            step_of.entry(d).or_insert(k as u32);
        }
    }
    let targets = devices
        .iter()
        .map(|d| (d.clone(), step_of.get(d).copied().unwrap_or(0)))
        .collect();
    Ok(Plan {
        rollout: NewRollout {
            id: new_id(),
            workflow_digest: forward.digest.clone(),
            workflow_id: forward.front.id.clone(),
            rollback_digest: rollback.map(|b| b.digest.clone()),
            audience,
            steps: steps.clone(),
            budget: req.budget.clone(),
            answer_timeout_ms: i64::from(req.answer_timeout_s) * 1000,
            state: if req.paused {
                RolloutState::Paused
            } else {
                RolloutState::Running
            },
            created_by: created_by.to_string(),
            targets,
        },
        warnings,
    })
}

fn sorted_target(t: &maml::Target) -> (Vec<String>, Vec<String>) {
    let (mut d, mut g) = (t.devices.clone(), t.groups.clone());
    d.sort();
    g.sort();
    (d, g)
}

async fn held(s: &AppState, field: &str, digest: &str) -> Result<HeldDocument, ApiError> {
    check_digest(field, digest).map_err(refusal)?;
    let Some(text) = s.store.workflow_text(digest.to_string()).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{field}: no uploaded workflow with digest {digest}"),
        ));
    };
    HeldDocument::read(digest, &text).map_err(refusal)
}

fn refusal((status, message): Refusal) -> ApiError {
    ApiError::new(status, message)
}

async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<CreateRollout>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedRollout>), ApiError> {
    let Json(req) = body?;
    if s.publisher.is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this service has no broker to publish to (serve.yaml: broker)",
        ));
    }
    let forward = held(&s, "workflow", &req.workflow).await?;
    let rollback = match &req.rollback {
        Some(d) => Some(held(&s, "rollback", d).await?),
        None => None,
    };
    let actor = caller.actor();
    let registry_path = s.registry.clone();
    // Un-enrolled devices are no audience, whatever the registry file still says.
    let gone = s.store.unenrolled_devices().await?;
    if let Some(d) = req.devices.iter().flatten().find(|d| gone.contains(*d)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("device {d:?} was un-enrolled"),
        ));
    }
    let plan = {
        let (req, actor) = (req.clone(), actor.clone());
        tokio::task::spawn_blocking(move || {
            let reg = service::registry_without(&registry_path, &gone).map_err(unprocessable)?;
            plan(
                &req,
                &forward,
                rollback.as_ref(),
                &reg,
                &registry_path,
                &actor,
            )
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .map_err(refusal)?
    };
    // The registry file may name devices the service has not imported yet (it is read
    // at start): refuse those by name rather than fail on the database.
    for (d, _) in &plan.rollout.targets {
        if s.store.signing_key(d.clone()).await?.is_none() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "device {d:?} is in the registry file but not enrolled in the service yet (restart it to import)"
                ),
            ));
        }
    }
    let id = plan.rollout.id.clone();
    let summary = format!(
        "{id}: {} to {} device(s) in steps {:?}, rollback {}",
        plan.rollout.workflow_digest,
        plan.rollout.targets.len(),
        plan.rollout.steps,
        plan.rollout.rollback_digest.as_deref().unwrap_or("none")
    );
    match s.store.create_rollout(plan.rollout).await? {
        Created::Done => {}
        Created::Busy { device, rollout } => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("device {device:?} is held by rollout {rollout}, which is not finished"),
            ));
        }
    }
    s.store
        .audit(actor, "rollout.create".into(), summary)
        .await?;
    s.engine.notify_one();
    let rollout = detail(&s, &id).await?;
    let on_failure = if rollout.rollout.rollback.is_some() {
        "rollback"
    } else {
        "halt"
    };
    s.events.send(
        "rollout",
        serde_json::json!({ "id": id, "state": rollout.rollout.state, "step": 0 }),
    );
    Ok((
        StatusCode::CREATED,
        Json(CreatedRollout {
            rollout,
            on_failure: on_failure.into(),
            warnings: plan.warnings,
        }),
    ))
}

async fn detail(s: &AppState, id: &str) -> Result<RolloutDetail, ApiError> {
    s.store
        .rollout(id.to_string())
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no rollout {id:?}")))
}

async fn list(
    State(s): State<AppState>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Vec<Rollout>>, ApiError> {
    let Query(q) = q?;
    Ok(Json(s.store.rollouts(limit(q.limit)?).await?))
}

async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutDetail>, ApiError> {
    Ok(Json(detail(&s, &id).await?))
}

/// An operator's state change: allowed only from `from`.
async fn change(
    s: &AppState,
    caller: &Caller,
    id: String,
    from: &[RolloutState],
    to: RolloutState,
    verb: &str,
) -> Result<Json<RolloutDetail>, ApiError> {
    let actor = caller.actor();
    match s
        .store
        .set_rollout_state(
            id.clone(),
            from.to_vec(),
            to,
            Some(format!("{verb} by {actor}")),
        )
        .await?
    {
        StateChange::Changed => {}
        StateChange::Missing => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no rollout {id:?}"),
            ));
        }
        StateChange::Refused(now) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "rollout {id} is {}: it can be {verb} only when {}",
                    now.as_str(),
                    from.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
    }
    s.store
        .audit(actor, format!("rollout.{}", to.as_str()), id.clone())
        .await?;
    s.engine.notify_one();
    let d = detail(s, &id).await?;
    s.events.send(
        "rollout",
        serde_json::json!({ "id": id, "state": to, "step": d.rollout.step, "reason": d.rollout.reason }),
    );
    Ok(Json(d))
}

/// A route handler that moves a rollout from one of `$from` to `$to` ([`change`]).
macro_rules! transition {
    ($name:ident, $from:expr, $to:expr, $verb:literal) => {
        async fn $name(
            State(s): State<AppState>,
            Extension(caller): Extension<Caller>,
            Path(id): Path<String>,
        ) -> Result<Json<RolloutDetail>, ApiError> {
            change(&s, &caller, id, $from, $to, $verb).await
        }
    };
}

transition!(
    pause,
    &[RolloutState::Running],
    RolloutState::Paused,
    "paused"
);
transition!(
    resume,
    &[RolloutState::Paused],
    RolloutState::Running,
    "resumed"
);
transition!(
    abort,
    &RolloutState::HOLDING,
    RolloutState::Aborted,
    "aborted"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A held document for group `g`: sequence, issued at `issued` (unix s), signed by `key`.
    fn doc(digest: char, seq: u64, issued: i64, key: &str) -> HeldDocument {
        let text = maml::template(
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "gw-1",
            "nobody",
            seq,
            &maml::format_time(issued),
            &maml::format_time(issued + 86_400),
        );
        let mut front = maml::parse(text.as_bytes()).unwrap().front;
        front.target = maml::Target {
            devices: vec![],
            groups: vec!["g".into()],
        };
        HeldDocument {
            digest: digest.to_string().repeat(64),
            front,
            key_id: key.into(),
        }
    }

    fn registry() -> Registry {
        let mut reg = Registry::new();
        for i in 0..10 {
            reg.insert(format!("d{i}"), serde_json::json!({ "groups": ["g"] }));
        }
        reg.insert("x".into(), serde_json::json!({ "groups": ["other"] }));
        reg
    }

    fn request(extra: serde_json::Value) -> CreateRollout {
        let mut body = serde_json::json!({ "workflow": "a".repeat(64), "group": "g" });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(body).unwrap()
    }

    fn try_plan(extra: serde_json::Value, rollback: Option<&HeldDocument>) -> Result<Plan, String> {
        plan(
            &request(extra),
            &doc('a', 5, 1_000_000, "k1"),
            rollback,
            &registry(),
            std::path::Path::new("devices.json"),
            "token:t",
        )
        .map_err(|(status, m)| {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{m}");
            m
        })
    }

    #[test]
    fn steps_are_cumulative_canary_shares_and_the_audience_is_checked_like_a_publish() {
        let p = try_plan(serde_json::json!({ "steps": [10, 50, 100] }), None).unwrap();
        let r = &p.rollout;
        assert_eq!(r.targets.len(), 10);
        assert_eq!(r.state, RolloutState::Running);
        assert_eq!(r.answer_timeout_ms, 120_000);
        let per_step = |k| r.targets.iter().filter(|(_, s)| *s == k).count();
        assert_eq!((per_step(0), per_step(1), per_step(2)), (1, 4, 5));
        // The first step is what `chimera publish --canary 10` picks.
        let devices: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        let first: Vec<String> = r
            .targets
            .iter()
            .filter(|(_, s)| *s == 0)
            .map(|(d, _)| d.clone())
            .collect();
        assert_eq!(
            first,
            gateway::canary(
                &devices,
                "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
                10.0
            )
        );
        assert!(
            p.warnings[0].contains("no rollback document"),
            "{:?}",
            p.warnings
        );
        let listed = try_plan(
            serde_json::json!({ "group": null, "devices": ["d1", "d2"], "paused": true }),
            None,
        )
        .unwrap();
        assert_eq!(listed.rollout.state, RolloutState::Paused);
        assert_eq!(listed.rollout.targets.len(), 2);

        for (extra, why) in [
            (serde_json::json!({ "steps": [] }), "steps"),
            (serde_json::json!({ "steps": [50, 10, 100] }), "increasing"),
            (serde_json::json!({ "steps": [10, 50] }), "the last 100"),
            (serde_json::json!({ "steps": [0, 100] }), "above 0"),
            (
                serde_json::json!({ "answer_timeout_s": 0 }),
                "answer_timeout_s",
            ),
            (
                serde_json::json!({ "budget": { "max_failure_percent": 101 } }),
                "max_failure_percent",
            ),
            (serde_json::json!({ "group": "other" }), "targets groups"),
            (
                serde_json::json!({ "group": null, "devices": ["x"] }),
                "does not target",
            ),
            (
                serde_json::json!({ "group": null, "devices": ["d1", "d1"] }),
                "each named once",
            ),
            (serde_json::json!({ "devices": ["d1"] }), "either"),
            (serde_json::json!({ "group": null }), "either"),
        ] {
            let e = try_plan(extra.clone(), None).unwrap_err();
            assert!(e.contains(why), "{extra}: {e}");
        }
    }

    #[test]
    fn a_rollback_must_be_one_devices_would_accept_after_the_rollout() {
        let ok = doc('b', 6, 1_000_100, "k1");
        let p = try_plan(serde_json::json!({}), Some(&ok)).unwrap();
        assert_eq!(p.rollout.rollback_digest, Some("b".repeat(64)));
        assert!(p.warnings.is_empty());
        // Another key has its own sequence: a lower one is fine when issued later.
        try_plan(serde_json::json!({}), Some(&doc('c', 1, 1_000_100, "k2"))).unwrap();
        for (rollback, why) in [
            (doc('a', 6, 1_000_100, "k1"), "own document"),
            (doc('b', 6, 999_000, "k1"), "before the rollout's document"),
            (doc('b', 5, 1_000_100, "k1"), "replay"),
        ] {
            let e = try_plan(serde_json::json!({}), Some(&rollback)).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut elsewhere = doc('b', 6, 1_000_100, "k1");
        elsewhere.front.target.groups = vec!["other".into()];
        let e = try_plan(serde_json::json!({}), Some(&elsewhere)).unwrap_err();
        assert!(e.starts_with("rollback:"), "{e}");
    }
}
