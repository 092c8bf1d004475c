//! `/dashboard`: the live operations page. Its files are built from
//! `clients/dashboard` (which uses the SDK's sources) into
//! `crates/server/assets/dashboard/` and embedded in the binary, so
//! `cargo build` needs no npm and the page asks no other host for anything.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use crate::state::AppState;

/// What the page may load and talk to: its own two files and its own
/// server's `/ws` (`'self'` covers `ws:`/`wss:` of the same host in CSP 3).
/// No inline script or style, no other host, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The embedded files: (name under `/dashboard/`, content type, bytes).
const ASSETS: [(&str, &str, &[u8]); 3] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../assets/dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard/app.css"),
    ),
];

/// How this server serves the dashboard; set by `wsgate serve`.
#[derive(Debug, Default, Clone)]
pub struct DashboardOptions {
    /// In `--dev`: the printed token, offered to the page on loopback so
    /// the prompt is filled in (never put in a URL).
    pub dev_token: Option<String>,
    /// `serve --dashboard-dir DIR`: read the files from DIR on every
    /// request instead of the embedded copies (for working on the page
    /// without rebuilding the binary).
    pub assets_dir: Option<PathBuf>,
}

/// `GET /dashboard`.
pub async fn index(State(state): State<AppState>) -> Response {
    serve(&state, "index.html").await
}

/// `GET /dashboard/{file}`: `app.js` and `app.css`; anything else 404
/// (the page itself is `/dashboard` only; [`serve`] refuses other names).
pub async fn file(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    if name == "index.html" {
        return ApiError::not_found("no such dashboard file").into_response();
    }
    serve(&state, &name).await
}

/// `GET /dashboard/dev.json`: `{"token"}` in `--dev` to a page on this
/// machine, else 404. Remote clients never get it, even in `--dev` on a
/// public address; nor does a page that reached 127.0.0.1 under another
/// name (DNS rebinding: a site's name pointed at 127.0.0.1 makes its
/// scripts same-origin with whatever listens there), so the `Host` must
/// be a loopback name too.
pub async fn dev_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    // `server::run` serves with connect info; without it, nobody is local.
    let local_peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(addr)| addr.ip().is_loopback());
    let local_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(is_loopback_host);
    match (&state.dashboard.dev_token, local_peer && local_host) {
        (Some(token), true) => Json(json!({ "token": token })).into_response(),
        _ => ApiError::not_found("no development token here").into_response(),
    }
}

/// `localhost`, `127.0.0.1` (any 127/8 address) or `[::1]`, with or without
/// a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6] or [v6]:port; no closing bracket is no host.
        Some(rest) => match rest.split_once(']') {
            Some((v6, _)) => v6,
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `GET /dashboard/`: the page lives at `/dashboard` (its files are asked
/// for as `/dashboard/…`, so one URL is enough).
pub async fn trailing_slash() -> Redirect {
    Redirect::permanent("/dashboard")
}

async fn serve(state: &AppState, name: &str) -> Response {
    // Only names from ASSETS reach here, so the path cannot leave the dir.
    let Some(&(_, content_type, embedded)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::not_found("no such dashboard file").into_response();
    };
    let body = match &state.dashboard.assets_dir {
        None => axum::body::Body::from(embedded),
        Some(dir) => match tokio::fs::read(dir.join(name)).await {
            Ok(bytes) => axum::body::Body::from(bytes),
            Err(error) => {
                tracing::warn!(%error, file = name, "dashboard file not readable");
                return ApiError::not_found("dashboard file not readable").into_response();
            }
        },
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "192.0.2.2:8080",
            "[::2]:8080",
            "[::1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
