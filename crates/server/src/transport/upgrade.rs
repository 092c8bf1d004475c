//! The HTTP/1.1 upgrade to WebSocket (RFC 6455 §4.2), done here rather than
//! by axum's `WebSocketUpgrade` because the socket needs a layer beneath the
//! frame codec for permessage-deflate (`wsgate_deflate::Inflating`), a
//! response header (`Sec-WebSocket-Extensions`) that axum's extractor cannot
//! add, and the bare TCP stream back from hyper (no boxed IO, no buffer).

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Version};
use axum::response::Response;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use wsgate_deflate::{Inflating, Negotiated};

use super::codec::Frames;
use super::http_io::{HttpIo, Switch};
use super::TransportLimits;

/// The byte stream under the frame codec: the TCP connection, with
/// compressed frames inflated on the way in when deflate was negotiated.
pub type Io = Inflating<TcpStream>;
/// A WebSocket connection as the transport drives it.
pub type Socket = Frames<Io>;

/// Why a request is not a valid WebSocket upgrade; answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("WebSocket upgrades need HTTP/1.1")]
    Version,
    #[error("WebSocket upgrades must use GET")]
    Method,
    #[error("the Connection header must contain `upgrade`")]
    Connection,
    #[error("the Upgrade header must be `websocket`")]
    Upgrade,
    #[error("the Sec-WebSocket-Version header must be 13")]
    WebSocketVersion,
    #[error("the Sec-WebSocket-Key header is missing or not a 16-byte base64 nonce")]
    Key,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

/// A request that is a valid WebSocket upgrade; nothing is answered yet.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// Lets the 101 wait for the first frames (`http_io`); absent when the
    /// connection is not served by `listener::serve`.
    switch: Option<Switch>,
}

fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl Upgrade {
    /// Checks the upgrade headers and takes the connection's upgrade handle
    /// from the request.
    pub fn from_parts(parts: &mut Parts) -> Result<Self, UpgradeError> {
        if parts.version != Version::HTTP_11 {
            return Err(UpgradeError::Version);
        }
        if parts.method != Method::GET {
            return Err(UpgradeError::Method);
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(UpgradeError::Connection);
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(UpgradeError::Upgrade);
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return Err(UpgradeError::WebSocketVersion);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            // A base64 encoding of 16 bytes is 24 characters.
            .filter(|k| k.len() == 24)
            .cloned()
            .ok_or(UpgradeError::Key)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeError::NotUpgradable)?;
        Ok(Upgrade {
            key,
            on_upgrade,
            switch: parts.extensions.remove::<Switch>(),
        })
    }

    /// Answers 101 and calls `start(socket)` once the connection is
    /// switched; `start` spawns the connection's task. The switch runs on a
    /// short task of its own that ends there, so the connection's task is
    /// exactly its future, allocated once (one tokio task cell, no box and
    /// no switching state beside it). `protocol` is the selected
    /// subprotocol; `deflate` the negotiated permessage-deflate parameters.
    ///
    /// The connection must be served by `listener::serve` (hyper's `http1`
    /// over `TokioIo<HttpIo>`): the socket is taken back by downcasting
    /// to that type, and any other (hyper-util's auto builder, TLS) is
    /// refused after the 101 with an error log.
    pub fn respond<F>(
        self,
        limits: &TransportLimits,
        protocol: Option<&'static str>,
        deflate: Option<Negotiated>,
        start: F,
    ) -> Response
    where
        F: FnOnce(Socket) + Send + 'static,
    {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::try_from(accept).expect("base64 is a valid header value"),
        );
        if let Some(protocol) = protocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        if let Some(deflate) = &deflate {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, deflate.response_header());
        }

        if let Some(switch) = &self.switch {
            switch.arm();
        }
        let on_upgrade = self.on_upgrade;
        let limits = *limits;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(error) => {
                    tracing::debug!(%error, "upgrade failed");
                    return;
                }
            };
            // hyper boxes the connection's IO behind a trait object and
            // keeps what it read past the request; taking the TcpStream back
            // saves that box and a layer of dynamic calls per read.
            let parts = match upgraded.downcast::<TokioIo<HttpIo>>() {
                Ok(parts) => parts,
                Err(_) => {
                    tracing::error!("upgraded connection is not a TCP stream");
                    return;
                }
            };
            let (tcp, held_101) = parts.io.into_inner().into_parts();
            // Bytes the client sent after its request (a first frame in the
            // same packet) go through the inflater when there is one.
            // Copied: `read_buf` is a view of hyper's 8 KiB read buffer and
            // would keep all of it alive (an empty view too).
            let (io, already_read) = match deflate {
                Some(d) => (Inflating::server(tcp, d, &parts.read_buf), Bytes::new()),
                None if parts.read_buf.is_empty() => (Inflating::new(tcp, None), Bytes::new()),
                None => (
                    Inflating::new(tcp, None),
                    Bytes::copy_from_slice(&parts.read_buf),
                ),
            };
            start(super::frames(io, already_read, held_101, &limits));
        });
        response
    }
}
