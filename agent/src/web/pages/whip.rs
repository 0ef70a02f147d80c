//! WHIP (RFC 9725) for `whip:` sources: `POST /whip/<source id>` with an SDP offer
//! (`application/sdp`) and the source's `publish_token` as a bearer token answers
//! `201 Created` with the SDP answer and the session's `Location`; `DELETE` there, with the
//! token, ends it. No session cookie is involved: publishers are encoders and scripts. The
//! session's socket is bound where the publisher reached this server (its `Host`: an IP
//! address or `localhost`), as for WHEP.
//!
//! Browser publishers are usually pages of another origin (a studio app), so the endpoint
//! answers CORS: a preflight (`OPTIONS`) for any origin, and `Access-Control-Allow-Origin:
//! *` with `Location` exposed on its answers. That opens nothing: no cookie is ever used
//! here (`*` forbids credentials), and only the bearer token admits a publisher.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::whep::{answered, sdp_offer};
use super::{PagesState, refuse_plain};
use crate::outputs::whip::WhipError;

/// None when the request's bearer token is `stream`'s publish token; else the 401. Unknown
/// sources get the same answer as wrong tokens (nothing tells which ids exist). Before the
/// first pipeline has started, a request that presents a bearer token gets 503 with
/// `Retry-After` (the agent is starting; its sources are not known yet); one without gets
/// the 401 as always.
fn refused(s: &PagesState, stream: &str, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let expected = match s.served.whip.token(stream) {
        Ok(expected) => expected,
        Err(_starting) if presented.is_some() => {
            let mut r = refuse_plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent is starting its pipeline; retry shortly".into(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
            return Some(r);
        }
        Err(_starting) => None,
    };
    let ok = match (presented, &expected) {
        (Some(p), Some(e)) => e.matches(p),
        // An unknown source costs the same comparison as a known one with a wrong token of
        // that length: the time taken tells nothing about which ids exist.
        (Some(p), None) => {
            std::hint::black_box(aegis_config::same_secret(std::hint::black_box(p), p));
            false
        }
        _ => false,
    };
    if ok {
        return None;
    }
    // Quoted: the id is whatever the request said (a newline in it cannot forge a line).
    tracing::warn!(stream = ?stream, presented = presented.is_some(), "whip: publisher refused");
    let mut r = refuse_plain(
        StatusCode::UNAUTHORIZED,
        "a whip source's publish token is needed (Authorization: Bearer <publish_token>)".into(),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Some(r)
}

/// The CORS headers of every answer (a browser page of another origin reads it, and the
/// `Location` of a new session).
fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::HeaderValue::from_static("Location"),
    );
    r
}

/// OPTIONS `/whip/{stream}` and `/whip/{stream}/{session}`: the CORS preflight.
pub async fn preflight() -> Response {
    let mut r = cors(StatusCode::NO_CONTENT.into_response());
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::HeaderValue::from_static("POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::HeaderValue::from_static("Authorization, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        header::HeaderValue::from_static("600"),
    );
    r
}

/// POST `/whip/{stream}`.
pub async fn offer(
    state: State<Arc<PagesState>>,
    stream: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    cors(answer_offer(state, stream, headers, body).await)
}

async fn answer_offer(
    State(s): State<Arc<PagesState>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = refused(&s, &stream, &headers) {
        return refusal;
    }
    let (text, ip) = match sdp_offer(&headers, &body) {
        Ok(o) => o,
        Err((code, why)) => return refuse_plain(code, why),
    };
    match s
        .served
        .whip
        .offer(&stream, text, ip, s.served.udp.as_ref())
        .await
    {
        Ok((id, answer)) => answered(format!("/whip/{stream}/{id}"), answer),
        Err(e) => {
            let code = match e {
                WhipError::NotServed(_) => StatusCode::NOT_FOUND,
                WhipError::BadOffer(_) => StatusCode::BAD_REQUEST,
                WhipError::NoCodec(_) => StatusCode::NOT_ACCEPTABLE,
                WhipError::Full => StatusCode::SERVICE_UNAVAILABLE,
                WhipError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            refuse_plain(code, e.to_string())
        }
    }
}

/// DELETE `/whip/{stream}/{session}`.
pub async fn end(
    state: State<Arc<PagesState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    cors(end_session(state, path, headers).await)
}

async fn end_session(
    State(s): State<Arc<PagesState>>,
    Path((stream, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refused(&s, &stream, &headers) {
        return refusal;
    }
    if s.served.whip.end(&stream, &id) {
        StatusCode::OK.into_response()
    } else {
        refuse_plain(
            StatusCode::NOT_FOUND,
            format!("no WHIP session {id:?} of {stream:?}"),
        )
    }
}
