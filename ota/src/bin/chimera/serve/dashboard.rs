//! The operator dashboard: one static page, its script and its style sheet, embedded in the
//! binary and served without a token. The page holds no data: its script asks the JSON API
//! for everything (fleet, rollouts, audit log, the event stream) with the bearer token the
//! operator pastes, so the API's roles decide what it shows and what its buttons may do.
//!
//! Why a bearer token and no cookie: the API already takes `Authorization: Bearer` only. A
//! browser never attaches that header by itself, so a page on another site cannot make the
//! operator's browser act with it (no CSRF to defend against, no session state in the
//! service). The script keeps the token in the tab's `sessionStorage` (gone when the tab
//! closes), never in a URL, a cookie or a log.
//!
//! What it must not do: render anything from the API as HTML (device ids, groups, reasons and
//! audit details are whatever a device, an uploader or a registry file said), load anything
//! from elsewhere, or run inline script. [`security_headers`] sets a CSP that forbids all
//! three on every answer of the service, so a mistake in the script cannot become a way in.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::api::Route;

/// The Content-Security-Policy of every answer: nothing but this service's own script,
/// style sheet and API (no inline script or style, no `eval`, no other origin), never in a
/// frame; `base-uri` and `form-action` are not covered by `default-src` and are closed too
/// (the token form must never be submitted, so the token can never end up in a URL).
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// A file of the dashboard, as served.
pub(crate) struct Asset {
    /// Where.
    pub(crate) path: &'static str,
    /// Its `Content-Type`.
    pub(crate) content_type: &'static str,
    /// Its bytes.
    pub(crate) body: &'static str,
}

impl Asset {
    /// Its media type without parameters (the OpenAPI document's content key).
    pub(crate) fn media_type(&self) -> &'static str {
        self.content_type
            .split(';')
            .next()
            .unwrap_or(self.content_type)
    }
}

const PAGE: Asset = Asset {
    path: "/",
    content_type: "text/html; charset=utf-8",
    body: include_str!("dashboard/index.html"),
};

const SCRIPT: Asset = Asset {
    path: "/dashboard/app.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("dashboard/app.js"),
};

const STYLE: Asset = Asset {
    path: "/dashboard/app.css",
    content_type: "text/css; charset=utf-8",
    body: include_str!("dashboard/app.css"),
};

/// Every file of the dashboard.
pub(crate) static ASSETS: &[&Asset] = &[&PAGE, &SCRIPT, &STYLE];

/// The asset served at `path`, if any.
pub(crate) fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().copied().find(|a| a.path == path)
}

/// The routes of this module: public, as static files are (they hold no data).
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: PAGE.path,
        role: None,
        summary: "The operator dashboard (HTML): fleet, rollouts, audit log, live from the \
                  event stream. It holds no data; its script calls this API with the bearer \
                  token the operator pastes.",
        params: &[],
        body: None,
        ok: 200,
        response: None,
        make: || get(|| serve(&PAGE)),
    },
    Route {
        method: Method::GET,
        path: SCRIPT.path,
        role: None,
        summary: "The dashboard's script.",
        params: &[],
        body: None,
        ok: 200,
        response: None,
        make: || get(|| serve(&SCRIPT)),
    },
    Route {
        method: Method::GET,
        path: STYLE.path,
        role: None,
        summary: "The dashboard's style sheet.",
        params: &[],
        body: None,
        ok: 200,
        response: None,
        make: || get(|| serve(&STYLE)),
    },
];

async fn serve(a: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, a.content_type),
            // Embedded in the binary: a new binary may serve new files under the same path.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        a.body,
    )
        .into_response()
}

/// Adds the security headers to every answer of the service (the API's JSON included: a
/// JSON answer opened in a browser is then inert too).
pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_its_route_and_nothing_else_is_public_here() {
        let paths: Vec<_> = ROUTES.iter().map(|r| r.path).collect();
        let assets: Vec<_> = ASSETS.iter().map(|a| a.path).collect();
        assert_eq!(paths, assets);
        assert!(ROUTES.iter().all(|r| r.role.is_none()));
        assert_eq!(asset("/").unwrap().media_type(), "text/html");
        assert!(asset("/dashboard/nope.js").is_none());
    }

    /// The page loads only its own files, and nothing in them is inline or remote: what
    /// the CSP forbids is not there to be blocked (the browser test runs it for real).
    #[test]
    fn the_page_has_no_inline_script_style_or_remote_resource() {
        let page = PAGE.body.to_ascii_lowercase();
        assert_eq!(page.matches("<script").count(), 1, "one script tag");
        assert!(page.contains("<script src=\"dashboard/app.js\" defer></script>"));
        assert!(page.contains("<link rel=\"stylesheet\" href=\"dashboard/app.css\">"));
        for forbidden in [
            "<style",
            " style=",
            " onclick=",
            " onload=",
            " onerror=",
            "javascript:",
            "http:",
            "https:",
            "//",
        ] {
            assert!(!page.contains(forbidden), "the page holds {forbidden:?}");
        }
        // No HTML from strings: the script builds every element and writes text only.
        for forbidden in [
            "innerhtml",
            "outerhtml",
            "insertadjacenthtml",
            "document.write",
            "eval(",
            "new function",
            "settimeout(\"",
            "http:",
            "https:",
        ] {
            assert!(
                !SCRIPT.body.to_ascii_lowercase().contains(forbidden),
                "the script holds {forbidden:?}"
            );
        }
        assert!(
            !STYLE.body.contains("url("),
            "the style sheet loads nothing"
        );
    }
}
