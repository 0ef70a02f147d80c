//! The HTTP API: one route table ([`routes`], the tables of [`TABLES`]) from which both the
//! axum router and the OpenAPI document are built, so a route cannot exist without its documented role, nor be
//! documented without existing. Authorisation is one middleware on the whole router and
//! denies by default: a path or method not in the table (the fallback included) needs an
//! admin token, so it answers 401/403 before it can say 404/405 to a stranger.
//!
//! Request bodies are hostile until parsed: a size limit before anything reads them,
//! JSON with unknown fields refused, errors that name the field.

use std::sync::Arc;

use aegis_ota::trust::TrustMetadata;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Json, middleware};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde::Deserialize;
use serde_json::{Value, json};

use super::events::Bus;
use super::ingest::IngestCounters;
use super::publisher::{PublishError, Publisher};
use super::service;
use super::store::{
    AuditRow, Device, Role, Store, StoredReceipt, Unenrolled, Unenrolment, Workflow,
};

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The state.
    pub(crate) store: Arc<dyn Store>,
    /// The verified trust metadata uploads are checked against (None: uploads refused).
    pub(crate) trust: Option<Arc<TrustMetadata>>,
    /// Publishes to the broker (None: no `broker`, publishing and rollouts refused).
    pub(crate) publisher: Option<Arc<Publisher>>,
    /// The device registry `chimera publish` resolves audiences with.
    pub(crate) registry: std::path::PathBuf,
    /// This replica's events (the SSE stream).
    pub(crate) events: Bus,
    /// Wakes the rollout engine (a rollout was created or resumed).
    pub(crate) engine: Arc<tokio::sync::Notify>,
    /// The MQTT ingest's counters (None: no `broker`).
    pub(crate) ingest: Option<Arc<IngestCounters>>,
    /// The OIDC provider whose JWTs are accepted as bearer tokens (None: API tokens only).
    pub(crate) oidc: Option<Arc<super::auth::oidc::OidcVerifier>>,
    /// The online issuer key (None: no `signer`, signing refused).
    pub(crate) signer: Option<Arc<super::signer::Signer>>,
}

pub(crate) use super::auth::Caller;

/// Makes (and registers in the generator's definitions) the JSON Schema of a body type.
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

/// A documented parameter.
pub(crate) struct Param {
    pub(crate) name: &'static str,
    /// `path` or `query`.
    pub(crate) location: &'static str,
    pub(crate) description: &'static str,
}

/// One route: method, path (axum syntax, which is OpenAPI's), the least role that may call
/// it (None: public), and its documentation.
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) role: Option<Role>,
    pub(crate) summary: &'static str,
    pub(crate) params: &'static [Param],
    /// A JSON request body: its description and schema.
    pub(crate) body: Option<(&'static str, SchemaOf)>,
    /// The success status.
    pub(crate) ok: u16,
    /// The JSON Schema of the success body (None: not JSON, or this document itself).
    pub(crate) response: Option<SchemaOf>,
    pub(crate) make: fn() -> MethodRouter<AppState>,
}

/// Every route table: this file's, then one per feature module (each module keeps its
/// routes beside its handlers and adds its table here).
pub(crate) static TABLES: &[&[Route]] = &[
    ROUTES,
    super::rollout_api::ROUTES,
    super::events::ROUTES,
    super::ingest::ROUTES,
    super::signer_api::ROUTES,
    super::dashboard::ROUTES,
];

/// Every route the service answers.
pub(crate) fn routes() -> impl Iterator<Item = &'static Route> {
    TABLES.iter().flat_map(|t| t.iter())
}

pub(crate) const LIMIT: Param = Param {
    name: "limit",
    location: "query",
    description: "Rows to return, newest first (1..=1000, default 100).",
};

/// The core routes: health, the document, devices, receipts, workflows, audit.
static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/healthz",
        role: None,
        summary: "Liveness: `ok` while the process serves requests.",
        params: &[],
        body: None,
        ok: 200,
        response: None,
        make: || get(healthz),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/openapi.json",
        role: None,
        summary: "This document.",
        params: &[],
        body: None,
        ok: 200,
        response: None,
        make: || get(openapi),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/devices",
        role: Some(Role::Viewer),
        summary: "Enrolled devices: groups and last receipt (un-enrolled ones left out).",
        params: &[],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<Vec<Device>>()),
        make: || get(list_devices),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/devices/{id}",
        role: Some(Role::Viewer),
        summary: "One device (an un-enrolled one too: its `unenrolled_at` is set).",
        params: &[Param {
            name: "id",
            location: "path",
            description: "Device id.",
        }],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<Device>()),
        make: || get(get_device),
    },
    Route {
        method: Method::DELETE,
        path: "/api/v1/devices/{id}",
        role: Some(Role::Admin),
        summary: "Un-enrol a device: it leaves its groups and every unfinished rollout (its \
                  targets become `unenrolled`, counted neither way), its key verifies \
                  nothing it sends from now on (receipts stored unverified, saying so; \
                  status ignored), and it leaves the device list. Its receipts, status and \
                  audit rows stay; the registry import does not bring it back with the same \
                  key. 404 for an unknown or already un-enrolled device.",
        params: &[Param {
            name: "id",
            location: "path",
            description: "Device id.",
        }],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<Unenrolled>()),
        make: || delete(unenroll_device),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/receipts",
        role: Some(Role::Viewer),
        summary: "Receipts as received (verified or not), newest first.",
        params: &[
            Param {
                name: "device",
                location: "query",
                description: "Only this device's receipts.",
            },
            LIMIT,
        ],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<Vec<StoredReceipt>>()),
        make: || get(list_receipts),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/workflows",
        role: Some(Role::Viewer),
        summary: "Uploaded signed workflows (without their text), newest first.",
        params: &[LIMIT],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<Vec<Workflow>>()),
        make: || get(list_workflows),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/workflows",
        role: Some(Role::Operator),
        summary: "Upload a signed workflow: stored only if it verifies against the service's \
                  trust metadata (signature, issuer, targets, time, pipeline).",
        params: &[],
        body: Some((
            "The signed workflow, as `chimera sign` wrote it; no other field.",
            |g| g.subschema_for::<Upload>(),
        )),
        ok: 201,
        response: Some(|g| g.subschema_for::<Workflow>()),
        make: || post(upload_workflow),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/workflows/{digest}/publish",
        role: Some(Role::Operator),
        summary: "Publish an uploaded workflow over MQTT as `chimera publish` does (retained, \
                  QoS 1): to a device or a group of the registry, optionally as a canary.",
        params: &[Param {
            name: "digest",
            location: "path",
            description: "The workflow's digest (64 hex digits), as the upload answered.",
        }],
        body: Some((
            "Where to: `to` (a device or a group), `canary` (percent of the group, optional).",
            |g| g.subschema_for::<PublishRequest>(),
        )),
        ok: 200,
        response: Some(|g| g.subschema_for::<Published>()),
        make: || post(publish_workflow),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/audit",
        role: Some(Role::Admin),
        summary: "The audit log, newest first.",
        params: &[LIMIT],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<Vec<AuditRow>>()),
        make: || get(list_audit),
    },
];

/// The router: every route of [`routes`], default-deny authorisation, the body limit, and
/// the security headers on every answer (refusals included).
pub(crate) fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut r = Router::new();
    for route in routes() {
        r = r.route(route.path, (route.make)());
    }
    r.fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authorise))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(super::dashboard::security_headers))
        .with_state(state)
}

/// An error body, as documented (the answers are built by [`ApiError`]).
#[derive(JsonSchema)]
#[allow(dead_code)] // Only its schema is used.
struct ErrorBody {
    /// What failed, naming the input.
    error: String,
    /// For a refused workflow upload or bearer token: the check that failed (an upload's
    /// `signature`, `target`, …; a token's `authorization`, `token`, `revoked`, `exp`,
    /// `nbf`, `iss`, `aud`, `client_id`, `token_use`, `alg`, `kid`, `key`, `signature`,
    /// `sub`, `jwks`, `role`).
    check: Option<String>,
}

/// The OpenAPI 3.1 document of [`routes`]. Schemas are generated from the Rust types the
/// handlers serialise (JSON Schema 2020-12, OpenAPI 3.1's own dialect) and referenced from
/// `components/schemas`.
pub(crate) fn openapi_document() -> Value {
    let mut schemas = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .for_serialize()
        .into_generator();
    let error_schema = schemas.subschema_for::<ErrorBody>().to_value();
    let mut paths = serde_json::Map::new();
    for r in routes() {
        let mut params: Vec<Value> = r
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name, "in": p.location, "required": p.location == "path",
                    "description": p.description,
                    "schema": if p.name == "limit" {
                        json!({ "type": "integer", "minimum": 1, "maximum": 1000 })
                    } else {
                        json!({ "type": "string" })
                    }
                })
            })
            .collect();
        params.sort_by_key(|p| p["name"].to_string());
        let mut responses = serde_json::Map::new();
        let ok_content = match (r.response, r.path, super::dashboard::asset(r.path)) {
            (Some(schema), _, _) => {
                json!({ "application/json": { "schema": schema(&mut schemas) } })
            }
            (None, _, Some(asset)) => {
                json!({ asset.media_type(): { "schema": { "type": "string" } } })
            }
            (None, "/healthz", _) => json!({ "text/plain": { "schema": { "type": "string" } } }),
            (None, "/api/v1/events", _) => {
                json!({ "text/event-stream": { "schema": { "type": "string" } } })
            }
            (None, _, _) => json!({ "application/json": { "schema": { "type": "object" } } }),
        };
        responses.insert(
            r.ok.to_string(),
            json!({ "description": "Success.", "content": ok_content }),
        );
        let error = |d: &str| json!({ "description": d, "content": { "application/json": { "schema": error_schema } } });
        if r.role.is_some() {
            responses.insert(
                "401".into(),
                error(
                    "No token, or one the service does not accept: an unknown, revoked or \
                       expired API token, or a JWT that fails a check; `check` names it.",
                ),
            );
            responses.insert(
                "403".into(),
                error("The caller's role is below the route's (or its JWT maps to no role)."),
            );
            responses.insert(
                "503".into(),
                error(
                    "The service lacks what the route needs (trust metadata, a broker) or, \
                       for a JWT, the provider's signing keys are not loaded yet.",
                ),
            );
        }
        if !r.params.is_empty() || r.body.is_some() {
            responses.insert(
                "400".into(),
                error("A parameter or the body is malformed; the error names it."),
            );
        }
        if r.path.contains('{') {
            responses.insert("404".into(), error("No such object."));
        }
        if r.method == Method::POST && r.path.starts_with("/api/v1/rollouts") {
            responses.insert(
                "409".into(),
                error("The rollout's state does not allow this, or a device is held by another rollout."),
            );
        }
        if r.path.ends_with("/publish") {
            responses.insert(
                "502".into(),
                error("The broker did not take the publish; the error says why."),
            );
        }
        if r.body.is_some() {
            responses.insert(
                "413".into(),
                error("The body is over the configured limit."),
            );
            responses.insert(
                "415".into(),
                error("The body is not declared as application/json."),
            );
            responses.insert(
                "422".into(),
                error("A body field is unknown or of the wrong type, or the request was refused (an upload's `check` names the check that failed)."),
            );
        }
        let mut op = json!({
            "operationId": format!("{}{}", r.method.as_str().to_lowercase(), r.path.replace(['/', '{', '}', '.'], "_")),
            "summary": r.summary,
            "parameters": params,
            "responses": responses,
            "security": match r.role { Some(_) => json!([{ "bearer": [] }]), None => json!([]) },
            "x-aegis-role": r.role.map(Role::as_str),
        });
        if let Some((description, schema)) = r.body {
            op["requestBody"] = json!({
                "required": true, "description": description,
                "content": { "application/json": { "schema": schema(&mut schemas) } }
            });
        }
        let entry = paths.entry(r.path).or_insert_with(|| json!({}));
        entry[r.method.as_str().to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "chimera serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Aegis Edge gateway service (docs/chimera-serve.md). Every route \
                            needs `Authorization: Bearer <API token or OIDC JWT>` except those \
                            whose `security` is empty; `x-aegis-role` is the least role it \
                            needs (viewer < operator < admin)."
        },
        "components": {
            "securitySchemes": { "bearer": {
                "type": "http", "scheme": "bearer",
                "description": "An API token (`chimera_…`, `chimera serve token create`) or, \
                                with `oidc` configured, a JWT of that provider."
            } },
            "schemas": schemas.take_definitions(true),
        },
        "paths": paths,
    })
}

/// An error answer: `{"error": …}` (and `check` for refused uploads).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status,
            body: json!({ "error": message.to_string() }),
        }
    }

    /// A refused workflow (an upload, a draft to sign): `{"error": "workflow refused:
    /// CHECK: …", "check": "CHECK"}`.
    pub(crate) fn refused(status: StatusCode, r: &service::UploadRefused) -> ApiError {
        ApiError {
            status,
            body: json!({ "error": format!("workflow refused: {r}"), "check": r.check }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<super::store::StoreError> for ApiError {
    fn from(e: super::store::StoreError) -> ApiError {
        eprintln!("chimera serve: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (logged)")
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        // body_text names the field (`unknown field `x``, `missing field `document``).
        ApiError::new(e.status(), format!("request body: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

/// The least role `method path` needs: the table's, admin for anything not in it.
fn needed_role(method: &Method, matched: Option<&str>) -> Option<Role> {
    match matched.and_then(|p| routes().find(|r| r.path == p && r.method == *method)) {
        Some(r) => r.role,
        None => Some(Role::Admin),
    }
}

async fn authorise(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(needed) = needed_role(req.method(), matched.as_deref()) else {
        return next.run(req).await;
    };
    let caller = match super::auth::identify(
        &*s.store,
        s.oidc.as_deref(),
        req.headers().get(header::AUTHORIZATION),
    )
    .await
    {
        Ok(c) => c,
        Err(r) => {
            return ApiError {
                status: r.status,
                body: json!({ "error": r.message, "check": r.check }),
            }
            .into_response();
        }
    };
    if caller.role < needed {
        return ApiError {
            status: StatusCode::FORBIDDEN,
            body: json!({
                "error": format!(
                    "{} has role {}; this route needs {}",
                    caller.actor,
                    caller.role.as_str(),
                    needed.as_str()
                ),
                "check": "role",
            }),
        }
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn healthz() -> &'static str {
    "ok"
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// `?limit=` (and nothing else).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitQuery {
    pub(crate) limit: Option<u32>,
}

/// `?device=&limit=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptQuery {
    device: Option<String>,
    limit: Option<u32>,
}

pub(crate) fn limit(l: Option<u32>) -> Result<u32, ApiError> {
    match l.unwrap_or(100) {
        n @ 1..=1000 => Ok(n),
        n => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit: {n} is not in 1..=1000"),
        )),
    }
}

async fn list_devices(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.store.devices().await?)))
}

async fn get_device(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match s.store.device(id.clone()).await? {
        Some(d) => Ok(Json(json!(d))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no enrolled device {id:?}"),
        )),
    }
}

/// `DELETE /api/v1/devices/{id}`.
async fn unenroll_device(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Unenrolled>, ApiError> {
    let u = match service::unenroll(&*s.store, &id, caller.actor()).await? {
        Unenrolment::Done(u) => u,
        Unenrolment::Already(at) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no enrolled device {id:?}: it was un-enrolled at {}",
                    super::auth::rfc3339_ms(at)
                ),
            ));
        }
        Unenrolment::Unknown => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no enrolled device {id:?}"),
            ));
        }
    };
    s.events.send(
        "device",
        json!({ "device": u.device, "unenrolled_at": u.unenrolled_at }),
    );
    for r in &u.rollouts {
        s.events.send(
            "rollout_target",
            json!({ "rollout": r, "device": u.device, "state": "unenrolled" }),
        );
    }
    // Its rollouts' claims are void: their engines re-decide without it now.
    s.engine.notify_one();
    Ok(Json(u))
}

async fn list_receipts(
    State(s): State<AppState>,
    q: Result<Query<ReceiptQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q?;
    let n = limit(q.limit)?;
    Ok(Json(json!(s.store.receipts(q.device, n).await?)))
}

async fn list_workflows(
    State(s): State<AppState>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q?;
    Ok(Json(json!(s.store.workflows(limit(q.limit)?).await?)))
}

async fn list_audit(
    State(s): State<AppState>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q?;
    Ok(Json(json!(s.store.audit_log(limit(q.limit)?).await?)))
}

/// `POST /api/v1/workflows`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Upload {
    /// The signed workflow.
    document: String,
}

async fn upload_workflow(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<Upload>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(up) = body?;
    let Some(trust) = s.trust.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this service has no trust metadata to check workflows against \
             (serve.yaml: trust_metadata, trust_roots)",
        ));
    };
    let actor = caller.actor();
    let checked = {
        let doc = up.document.clone();
        let actor = actor.clone();
        // ML-DSA verification and YAML parsing: CPU work off the async workers.
        tokio::task::spawn_blocking(move || {
            service::check_upload(doc.as_bytes(), &trust, aegis_ota::maml::now_s(), &actor)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
    };
    let w = match checked {
        Ok(w) => w,
        Err(refused) => {
            s.store
                .audit(actor, "workflow.refused".into(), refused.to_string())
                .await?;
            return Err(ApiError::refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                &refused,
            ));
        }
    };
    let created = s.store.add_workflow(w.clone(), up.document).await?;
    s.store
        .audit(
            actor,
            "workflow.upload".into(),
            format!(
                "{} sequence {} digest {}{}",
                w.id,
                w.sequence,
                w.digest,
                if created { "" } else { " (already held)" }
            ),
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(w))))
}

/// `POST /api/v1/workflows/{digest}/publish`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    /// A device or a group of the registry.
    to: String,
    /// Percent of the group (above 0, at most 100): a canary, each member on its own topic.
    #[serde(default)]
    canary: Option<f64>,
}

/// What a publish did.
#[derive(Debug, serde::Serialize, JsonSchema)]
struct Published {
    /// The workflow's digest.
    digest: String,
    /// Its id.
    id: String,
    /// Its sequence.
    sequence: u64,
    /// The devices it reaches.
    devices: Vec<String>,
    /// The topics it went to (retained).
    topics: Vec<String>,
    /// The canary percentage, if any.
    canary: Option<f64>,
}

async fn publish_workflow(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body?;
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "digest: 64 lowercase hex digits",
        ));
    }
    if let Some(p) = req.canary
        && !(p > 0.0 && p <= 100.0)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("canary: {p} is not above 0 and at most 100"),
        ));
    }
    let Some(publisher) = s.publisher.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this service has no broker to publish to (serve.yaml: broker)",
        ));
    };
    let Some(text) = s.store.workflow_text(digest.clone()).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no uploaded workflow with digest {digest}"),
        ));
    };
    let actor = caller.actor();
    let to = req.to.clone();
    // Devices un-enrolled here are no audience, whatever the registry file still says.
    let gone = s.store.unenrolled_devices().await?;
    let outcome = publisher
        .publish(&digest, text, move |file, registry| {
            let reg = service::registry_without(registry, &gone)?;
            crate::gateway::plan_publish_in(file, &to, req.canary, &reg, registry)
        })
        .await;
    let plan = match outcome {
        Ok(plan) => plan,
        Err(e) => {
            let status = match e {
                PublishError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
                PublishError::Broker { .. } => StatusCode::BAD_GATEWAY,
                PublishError::Unknown(_) => StatusCode::NOT_FOUND,
                PublishError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            s.store
                .audit(actor, "workflow.publish_failed".into(), e.to_string())
                .await?;
            return Err(ApiError::new(status, e));
        }
    };
    // What these devices should run now: reconcile re-sends it to one that comes back
    // running something else.
    s.store
        .set_desired(plan.devices.clone(), plan.digest.clone(), None)
        .await?;
    s.store
        .audit(actor, "workflow.publish".into(), plan.summary())
        .await?;
    Ok(Json(json!(Published {
        digest: plan.digest,
        id: plan.id,
        sequence: plan.sequence,
        devices: plan.devices,
        topics: plan.topics,
        canary: plan.canary_percent,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_route_with_its_role() {
        let doc = openapi_document();
        for r in routes() {
            let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
            assert!(op.is_object(), "{} {} missing", r.method, r.path);
            assert_eq!(op["x-aegis-role"], json!(r.role.map(Role::as_str)));
        }
        // Only /healthz, the document itself and the dashboard's static files (which hold
        // no data: its script calls the API with a token) are public.
        let public: Vec<_> = routes()
            .filter(|r| r.role.is_none())
            .map(|r| r.path)
            .collect();
        assert_eq!(
            public,
            [
                "/healthz",
                "/api/v1/openapi.json",
                "/",
                "/dashboard/app.js",
                "/dashboard/app.css"
            ]
        );
        assert_eq!(
            doc["paths"]["/"]["get"]["responses"]["200"]["content"]["text/html"]["schema"]["type"],
            "string"
        );
    }

    /// Every `$ref` in the document names a schema of `components/schemas`, and every
    /// JSON answer but the document itself has one.
    #[test]
    fn every_schema_reference_resolves() {
        let doc = openapi_document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "Device",
            "ReceiptSummary",
            "StoredReceipt",
            "Workflow",
            "AuditRow",
            "ErrorBody",
            "Upload",
        ] {
            assert!(
                schemas.contains_key(name),
                "{name} not in {:?}",
                schemas.keys()
            );
        }
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = vec![];
        refs(&doc, &mut all);
        assert!(all.len() > 10);
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
        // Upload refuses unknown fields, and says so.
        assert_eq!(schemas["Upload"]["additionalProperties"], json!(false));
        let devices = &doc["paths"]["/api/v1/devices"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert_eq!(devices["items"]["$ref"], "#/components/schemas/Device");
    }

    #[test]
    fn anything_not_in_the_table_needs_an_admin() {
        assert_eq!(needed_role(&Method::GET, None), Some(Role::Admin));
        assert_eq!(
            needed_role(&Method::DELETE, Some("/api/v1/devices")),
            Some(Role::Admin)
        );
        assert_eq!(
            needed_role(&Method::GET, Some("/api/v1/devices")),
            Some(Role::Viewer)
        );
        assert_eq!(needed_role(&Method::GET, Some("/healthz")), None);
    }
}
