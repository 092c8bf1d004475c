//! `GET /ws` and the read-only streams (`/ws/metrics`, `/ws/events`,
//! `/ws/stream/{channel}`): every decision — upgrade validity, per-IP rate,
//! origin, token, connection caps, stream permission — is made before the
//! upgrade, so a refused client gets an
//! HTTP status, a JSON body and the right headers. Each outcome is counted
//! and written as one audit line; the token never is.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use tokio_util::task::task_tracker::TaskTrackerToken;
use wsgate_core::auth::{AuthError, Identity};
use wsgate_core::channels::publication::Filter;
use wsgate_core::channels::raw_stream::RawStream;
use wsgate_core::channels::Caller;
use wsgate_core::connection::handler::ConnectionHandler;
use wsgate_core::connection::outbound::Outbound;
use wsgate_core::hub::{Admission, AdmitError};
use wsgate_core::metrics::Metrics;
use wsgate_core::session::{Session, SessionContext};
use wsgate_graphql::{Gate, GraphqlConnection};
use wsgate_protocol::{CloseCode, Encoding, ErrorCode, BEARER_PROTOCOL_PREFIX};

use crate::auth::bearer_token;
use crate::http::error::ApiError;
use crate::listener::ip_key;
use crate::state::AppState;
use crate::transport::upgrade::{Socket, Upgrade, UpgradeError};
use crate::transport::{self, Connection, Ended, Shared as Transport};
use wsgate_deflate::Negotiated;

/// A refused handshake: the HTTP error and the bounded reason label.
pub struct Rejection {
    pub error: ApiError,
    pub reason: &'static str,
}

impl Rejection {
    fn new(error: ApiError, reason: &'static str) -> Self {
        Rejection { error, reason }
    }
}

impl From<AuthError> for Rejection {
    fn from(e: AuthError) -> Self {
        Rejection::new(ApiError::unauthorized(e.to_string()), e.reason())
    }
}

/// The subprotocols a client offered, split on commas.
fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The encoding a client asked for: the first wsgate protocol it offered,
/// JSON when it offered none.
pub fn negotiate_encoding(headers: &HeaderMap) -> Result<(Encoding, bool), Rejection> {
    let mut bearer = false;
    for p in offered_protocols(headers) {
        if let Some(encoding) = Encoding::from_protocol_name(p) {
            return Ok((encoding, true));
        }
        bearer |= p.starts_with(BEARER_PROTOCOL_PREFIX);
    }
    if bearer {
        // A browser would fail the connection when we select nothing.
        return Err(Rejection::new(
            ApiError::bad_request(
                "offer wsgate.v1.json or wsgate.v1.msgpack beside bearer.<token>",
            ),
            "bad_protocol",
        ));
    }
    Ok((Encoding::Json, false))
}

/// Finds the token in the three transports, in order of preference.
pub fn find_token<'a>(
    headers: &'a HeaderMap,
    uri: &'a Uri,
    allow_query: bool,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(token) = bearer_token(headers) {
        return Some(token.into());
    }
    if let Some(token) =
        offered_protocols(headers).find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
    {
        return Some(token.into());
    }
    if allow_query {
        if let Some(query) = uri.query() {
            if let Some((_, v)) =
                form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token")
            {
                return Some(v);
            }
        }
    }
    None
}

/// The origin policy: no `Origin` passes (not a browser); the request's own
/// host passes; otherwise an exact `scheme://host[:port]` entry or `*`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // The request's own host, reached over HTTP or HTTPS: TLS may end at a
    // proxy in front, so either scheme is the page's own. Any other scheme
    // (`ftp://host`, `chrome-extension://…`) is not a page of this server.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.split_once("://"), host) {
        (Some((scheme, authority)), Some(host)) => {
            (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && authority.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

/// The per-IP handshake rate (IPv6 by /64), checked before anything else
/// so that malformed upgrade requests count against it too.
fn check_ip_rate(state: &AppState, ip: IpAddr) -> Result<(), Rejection> {
    let Err(not_until) = state.handshakes_per_ip.check_key(&ip_key(ip)) else {
        return Ok(());
    };
    let wait = not_until.wait_time_from(state.handshakes_per_ip.clock().now());
    Err(Rejection::new(
        ApiError::rate_limited("too many handshakes from this address", wait.as_secs() + 1),
        "ip_rate",
    ))
}

fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Rejection> {
    if origin_allowed(headers, &state.config.origins.allowed) {
        return Ok(());
    }
    Err(Rejection::new(
        ApiError::forbidden("origin not allowed"),
        "origin",
    ))
}

/// Checks that are the same for `/ws` and the read-only streams, after the
/// per-IP rate.
pub fn admit(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(Identity, Admission), Rejection> {
    check_origin(state, headers)?;
    let token =
        find_token(headers, uri, state.config.auth.allow_query_token).ok_or(AuthError::Missing)?;
    let identity = state.verifier.verify(&token)?;
    let admission = state.hub.admit(&identity.user).map_err(|e| match e {
        AdmitError::UserLimit => user_limit(),
        AdmitError::ServerFull | AdmitError::PendingLimit => server_full(),
    })?;
    Ok((identity, admission))
}

fn user_limit() -> Rejection {
    Rejection::new(
        ApiError::rate_limited("too many connections for this user", 5),
        "user_limit",
    )
}

fn reject(state: &AppState, ip: IpAddr, origin: Option<&str>, r: Rejection) -> Response {
    state.metrics.rejection(r.reason);
    let now = std::time::Instant::now();
    if let Some(left_out) = state.rejection_log.admit(r.reason, ip_key(ip), now) {
        tracing::info!(
            target: "wsgate::audit",
            event = "handshake",
            result = "rejected",
            reason = r.reason,
            status = r.error.status.as_u16(),
            %ip,
            origin,
            // Rejections of the same reason and address not logged since
            // the last line (see `audit`).
            left_out,
        );
    }
    r.error.into_response()
}

/// What the client asked to upgrade to.
enum Target {
    Protocol,
    Stream(String),
    Graphql,
}

/// What runs on an accepted connection.
enum Endpoint {
    /// The full `/ws` protocol.
    Protocol { identity: Identity },
    /// A read-only stream of one channel's `data`.
    Stream {
        identity: Identity,
        channel: Arc<str>,
        filter: Option<Filter>,
    },
    /// graphql-transport-ws; the token may come later, in `connection_init`.
    Graphql { identity: Option<Identity> },
}

impl Endpoint {
    /// The `protocol` label of `wsgate_connections_open`.
    fn label(&self, encoding: Encoding) -> &'static str {
        match self {
            Endpoint::Protocol { .. } => encoding.protocol_name(),
            Endpoint::Stream { .. } => "stream",
            Endpoint::Graphql { .. } => wsgate_graphql::PROTOCOL,
        }
    }
}

/// `/graphql` accepts only graphql-transport-ws, which it selects.
fn graphql_protocol(headers: &HeaderMap) -> Result<(), Rejection> {
    let mut legacy = false;
    for p in offered_protocols(headers) {
        if p == wsgate_graphql::PROTOCOL {
            return Ok(());
        }
        legacy |= p == "graphql-ws";
    }
    let message = if legacy {
        "the legacy graphql-ws protocol (subscriptions-transport-ws) is not supported: \
         offer graphql-transport-ws (the npm graphql-ws client does)"
    } else {
        "offer the graphql-transport-ws subprotocol"
    };
    Err(Rejection::new(
        ApiError::bad_request(message),
        "bad_protocol",
    ))
}

/// `/graphql`'s checks: as [`admit`], but without a token on the upgrade
/// the slot is reserved for a user to be named by `connection_init`.
fn admit_graphql(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(Option<Identity>, Admission), Rejection> {
    if find_token(headers, uri, state.config.auth.allow_query_token).is_some() {
        let (identity, admission) = admit(state, headers, uri)?;
        return Ok((Some(identity), admission));
    }
    check_origin(state, headers)?;
    let admission = state.hub.admit_pending().map_err(|e| match e {
        AdmitError::PendingLimit => Rejection::new(
            ApiError::unavailable(
                "too many connections are waiting for connection_init: send the token on the upgrade",
            ),
            "pending_limit",
        ),
        _ => server_full(),
    })?;
    Ok((None, admission))
}

fn server_full() -> Rejection {
    Rejection::new(
        ApiError::unavailable("server is at its connection limit"),
        "server_full",
    )
}

/// What every upgrade endpoint needs from the request. The upgrade is kept
/// as a `Result` so an invalid one is refused with our JSON 400 after the
/// rate limit has counted it.
pub struct UpgradeRequest {
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<Upgrade, UpgradeError>,
}

impl FromRequestParts<AppState> for UpgradeRequest {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let upgrade = Upgrade::from_parts(parts);
        // `server::run` serves with connect info; without it (a router used
        // elsewhere) every client shares the unspecified address's limit.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        Ok(UpgradeRequest {
            state: state.clone(),
            peer,
            headers: parts.headers.clone(),
            uri: parts.uri.clone(),
            upgrade,
        })
    }
}

/// `GET /ws`: the full protocol.
pub async fn ws_handler(req: UpgradeRequest) -> Response {
    handshake(req, Target::Protocol).await
}

/// `/ws/metrics`: the built-in `metrics` channel as a raw stream.
pub async fn metrics_stream(req: UpgradeRequest) -> Response {
    handshake(req, Target::Stream("metrics".into())).await
}

/// `/ws/events`: the built-in `events` channel as a raw stream.
pub async fn events_stream(req: UpgradeRequest) -> Response {
    handshake(req, Target::Stream("events".into())).await
}

/// `/ws/stream/{channel}`.
pub async fn channel_stream(Path(channel): Path<String>, req: UpgradeRequest) -> Response {
    handshake(req, Target::Stream(channel)).await
}

/// `GET /graphql` with an upgrade: graphql-transport-ws.
pub async fn graphql_upgrade(req: UpgradeRequest) -> Response {
    handshake(req, Target::Graphql).await
}

impl UpgradeRequest {
    /// Whether the client asked for a WebSocket at all (`/graphql` serves
    /// plain GETs too).
    pub fn wants_upgrade(&self) -> bool {
        self.headers.contains_key(header::UPGRADE)
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

/// Query parameters other than `token` are equality filters of a stream.
fn query_filter(uri: &Uri) -> Option<Filter> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(uri.query()?.as_bytes())
        .filter(|(k, _)| k != "token")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (!pairs.is_empty()).then(|| Filter::from_pairs(pairs))
}

async fn handshake(req: UpgradeRequest, target: Target) -> Response {
    let UpgradeRequest {
        state,
        peer,
        headers,
        uri,
        upgrade,
    } = req;
    let ip = peer.ip();
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if let Err(r) = check_ip_rate(&state, ip) {
        return reject(&state, ip, origin, r);
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            let r = Rejection::new(ApiError::bad_request(e.to_string()), "bad_upgrade");
            let mut response = reject(&state, ip, origin, r);
            if e == UpgradeError::WebSocketVersion {
                // RFC 6455 §4.4: name the version we speak.
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    axum::http::HeaderValue::from_static("13"),
                );
            }
            return response;
        }
    };
    // The subprotocol to select: only a wsgate or GraphQL protocol, never
    // `bearer.<jwt>`.
    let negotiated_protocol = match &target {
        Target::Graphql => {
            graphql_protocol(&headers).map(|()| (Encoding::Json, Some(wsgate_graphql::PROTOCOL)))
        }
        _ => negotiate_encoding(&headers)
            .map(|(encoding, selected)| (encoding, selected.then(|| encoding.protocol_name()))),
    };
    let (encoding, protocol) = match negotiated_protocol {
        Ok(x) => x,
        Err(r) => return reject(&state, ip, origin, r),
    };
    let admitted = match target {
        Target::Graphql => admit_graphql(&state, &headers, &uri),
        _ => admit(&state, &headers, &uri).map(|(i, a)| (Some(i), a)),
    };
    let (identity, admission) = match admitted {
        Ok(x) => x,
        Err(r) => return reject(&state, ip, origin, r),
    };
    if identity.is_some() && state.hub.admit_across_nodes(&admission).await.is_err() {
        return reject(&state, ip, origin, user_limit());
    }
    let user = identity.as_ref().map(|i| i.user.clone());
    let endpoint = match (target, identity) {
        (Target::Graphql, identity) => Endpoint::Graphql { identity },
        // `admit` answers an identity or an error for these two.
        (_, None) => return reject(&state, ip, origin, AuthError::Missing.into()),
        (Target::Protocol, Some(identity)) => Endpoint::Protocol { identity },
        (Target::Stream(channel), Some(identity)) => match state
            .channels
            .may_read(Caller::User(&identity), &channel)
            .await
        {
            Ok(_) => Endpoint::Stream {
                identity,
                channel: channel.into(),
                filter: query_filter(&uri),
            },
            Err(e) => {
                let r = match e.code {
                    ErrorCode::BadRequest => Rejection::new(ApiError::from(e), "bad_channel"),
                    ErrorCode::Forbidden => Rejection::new(
                        ApiError::forbidden("stream channel not permitted"),
                        "channel_forbidden",
                    ),
                    _ => Rejection::new(ApiError::from(e), "unavailable"),
                };
                return reject(&state, ip, origin, r);
            }
        },
    };
    Metrics::count(&state.metrics.connections, "result", "accepted");
    tracing::info!(
        target: "wsgate::audit",
        event = "handshake",
        result = "accepted",
        %ip,
        origin,
        user = user.as_deref(),
        connection_id = %admission.connection_id(),
        protocol = endpoint.label(encoding),
        stream = matches!(endpoint, Endpoint::Stream { .. }),
    );
    let negotiated = state.deflate.as_ref().and_then(|d| d.negotiate(&headers));
    let limits = state.transport.limits;
    // One box for everything the connection needs: the upgrade callback
    // then captures a pointer, not a few hundred bytes that would stay in
    // the upgrade task for the connection's whole life.
    let accepted = Box::new(Accepted {
        tracked: state.connections.token(),
        state,
        admission,
        encoding,
        endpoint,
        deflate: negotiated.clone(),
    });
    upgrade.respond(&limits, protocol, negotiated, move |socket| {
        accepted.start(socket)
    })
}

/// A handshake that passed every check, waiting for the upgrade.
struct Accepted {
    state: AppState,
    admission: Admission,
    encoding: Encoding,
    endpoint: Endpoint,
    /// Set when permessage-deflate was agreed.
    deflate: Option<Negotiated>,
    /// Lets shutdown wait for this connection.
    tracked: TaskTrackerToken,
}

impl Accepted {
    /// Builds the handler and spawns the connection's task: its one future,
    /// exactly sized for the handler, is the task. Takes the box the
    /// handshake made so the upgrade callback only ever held a pointer.
    #[allow(clippy::boxed_local)]
    fn start(self: Box<Self>, socket: Socket) {
        let Accepted {
            state,
            admission,
            encoding,
            endpoint,
            deflate,
            tracked,
        } = *self;
        let outbound = Arc::new(Outbound::with_latency(
            state.transport.limits.outbound_queue_bytes,
            state.metrics.clone(),
        ));
        admission.attach(outbound.clone());
        if state.shutdown.is_cancelled() {
            outbound.close(CloseCode::GoingAway);
        }
        let transport = state.transport.clone();
        let admission = Arc::new(admission);
        let end = ConnectionEnd::new(
            state.clone(),
            admission.clone(),
            endpoint.label(encoding),
            tracked,
        );
        // Generic over the handler, so each endpoint gets its own exactly-sized
        // connection future.
        fn run<H: ConnectionHandler>(
            socket: Socket,
            handler: H,
            outbound: Arc<Outbound>,
            transport: Arc<Transport>,
            deflate: Option<Negotiated>,
            end: ConnectionEnd,
        ) {
            tokio::spawn(transport::drive(Box::new(Connection {
                socket,
                handler,
                outbound,
                transport,
                deflate,
                on_end: move |ended| end.record(ended),
            })));
        }
        match endpoint {
            Endpoint::Protocol { identity } => {
                let session = Session::start(SessionContext {
                    connection_id: admission.connection_id().clone(),
                    identity,
                    encoding,
                    outbound: outbound.clone(),
                    shared: state.sessions.clone(),
                });
                run(socket, session, outbound, transport, deflate, end)
            }
            Endpoint::Stream {
                identity,
                channel,
                filter,
            } => {
                let handler = RawStream::start(
                    state.channels.clone(),
                    channel,
                    filter,
                    outbound.clone(),
                    identity.expires_at,
                );
                run(socket, handler, outbound, transport, deflate, end)
            }
            Endpoint::Graphql { identity } => {
                let gate = Arc::new(AdmissionGate {
                    state: state.clone(),
                    admission: admission.clone(),
                });
                let handler = GraphqlConnection::start(
                    state.graphql.clone(),
                    outbound.clone(),
                    admission.connection_id().clone(),
                    identity,
                    gate,
                );
                run(socket, handler, outbound, transport, deflate, end)
            }
        }
    }
}

/// A GraphQL connection's token, arrived in `connection_init`, against the
/// per-user cap on this node and across nodes.
struct AdmissionGate {
    state: AppState,
    admission: Arc<Admission>,
}

impl Gate for AdmissionGate {
    fn admit<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send + 'a>> {
        Box::pin(async move {
            self.admission
                .identify(&identity.user)
                .map_err(|_| "user_limit")?;
            self.state
                .hub
                .admit_across_nodes(&self.admission)
                .await
                .map_err(|_| "user_limit")
        })
    }
}

/// What is left to do when a connection ends.
struct ConnectionEnd {
    state: AppState,
    admission: Arc<Admission>,
    /// This protocol's open-connections gauge (a pointer; looked up once).
    open: prometheus_client::metrics::gauge::Gauge,
    started: std::time::Instant,
    _tracked: TaskTrackerToken,
}

impl ConnectionEnd {
    /// Counts the connection as active until this is dropped.
    fn new(
        state: AppState,
        admission: Arc<Admission>,
        protocol: &'static str,
        tracked: TaskTrackerToken,
    ) -> Self {
        state.metrics.connections_active.inc();
        let open = state
            .metrics
            .connections_open
            .get_or_create(&[("protocol", protocol)])
            .clone();
        open.inc();
        ConnectionEnd {
            state,
            admission,
            open,
            started: std::time::Instant::now(),
            _tracked: tracked,
        }
    }

    fn record(self, ended: Ended) {
        let m = &self.state.metrics;
        m.connection_duration
            .observe(self.started.elapsed().as_secs_f64());
        Metrics::count(&m.disconnects, "code", close_label(&ended));
        // Connection lines carry `connection_id` and `user` as fields rather
        // than through a span: an entered span keeps ~0.5 KiB per idle
        // connection in the subscriber's registry.
        tracing::info!(
            connection_id = %self.admission.connection_id(),
            user = %self.admission.user(),
            code = ended.code(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "disconnected"
        );
        // Dropping `self` frees the slot and tells shutdown.
    }
}

/// The active-connections gauge, the slot and the tracker token are given
/// back on every exit path: a normal end (after `record`) and a
/// connection task that panicked or was dropped.
impl Drop for ConnectionEnd {
    fn drop(&mut self) {
        self.state.metrics.connections_active.dec();
        self.open.dec();
    }
}

/// A bounded metric label: our close code, or `peer` when the client
/// closed or went away.
fn close_label(ended: &Ended) -> &'static str {
    let Some(code) = ended.code() else {
        return "peer";
    };
    match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        4001 => "4001",
        4002 => "4002",
        4003 => "4003",
        4009 => "4009",
        4400 => "4400",
        4401 => "4401",
        4403 => "4403",
        4408 => "4408",
        4409 => "4409",
        4429 => "4429",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::mem::size_of;

    use super::*;

    /// The size of the future `f` returns.
    fn future_size<A, R: Future>(_: fn(A) -> R) -> usize {
        size_of::<R>()
    }

    /// A `/ws` connection's task is its future plus tokio's ~104 bytes of
    /// task header and trailer, in a cell aligned to 128 bytes: every byte
    /// here is paid by every idle connection (docs/benchmarks.md, issue
    /// #12). 664 keeps the cell at 768 bytes (it was 1,024).
    #[test]
    fn an_idle_connection_future_stays_small() {
        // The real `on_end` closure holds a `ConnectionEnd`.
        let size = future_size(transport::drive::<Socket, Session, fn(Ended)>)
            - size_of::<fn(Ended)>()
            + size_of::<ConnectionEnd>();
        assert!(size <= 664, "the /ws connection future is {size} bytes");
    }

    /// The outbound queue is one allocation per connection: 144 bytes
    /// plus the `Arc`'s two counters fill jemalloc's 160-byte class.
    #[test]
    fn the_outbound_queue_stays_small() {
        let size = size_of::<Outbound>();
        assert!(size <= 144, "Outbound is {size} bytes");
    }
}
