//! WHIP (RFC 9725) for `whip:` sources: `POST /whip/<source id>` with an SDP offer
//! (`application/sdp`) and the source's `publish_token` as a bearer token answers
//! `201 Created` with the SDP answer and the session's `Location`; `DELETE` there, with the
//! token, ends it. No session cookie is involved: publishers are encoders and scripts. The
//! session's socket is bound where the publisher reached this server (its `Host`: an IP
//! address or `localhost`), as for WHEP.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::whep::{answered, sdp_offer};
use super::{PagesState, refuse_plain};
use crate::outputs::whip::WhipError;

/// None when the request's bearer token is `stream`'s publish token; else the 401. Unknown
/// sources get the same answer as wrong tokens (nothing tells which ids exist).
fn refused(s: &PagesState, stream: &str, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let expected = s.served.whip.token(stream);
    let ok = match (presented, &expected) {
        (Some(p), Some(e)) => crate::web::auth::same(p, e.expose()),
        _ => false,
    };
    if ok {
        return None;
    }
    tracing::warn!(%stream, presented = presented.is_some(), "whip: publisher refused");
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

/// POST `/whip/{stream}`.
pub async fn offer(
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
