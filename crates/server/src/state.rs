//! The state shared by every request and connection of one server instance.
//! Built once in [`crate::server::run`]; nothing is global.

use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use governor::DefaultKeyedRateLimiter;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsgate_core::auth::TokenVerifier;
use wsgate_core::channels::Channels;
use wsgate_core::hub::Hub;
use wsgate_core::metrics::Metrics;
use wsgate_core::session::SessionShared;
use wsgate_storage::Storage;

use crate::audit::RejectionLog;
use crate::config::Config;
use crate::http::dashboard::DashboardOptions;
use crate::transport::Shared as Transport;
use wsgate_deflate::Deflate;
use wsgate_graphql::{Graphql, StatsFn};

pub struct ServerState {
    pub config: Config,
    pub verifier: Arc<dyn TokenVerifier>,
    pub hub: Arc<Hub>,
    pub channels: Arc<Channels>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Keyed by [`crate::listener::ip_key`] (IPv6 by /64).
    pub handshakes_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    /// Which rejected handshakes get an audit line.
    pub rejection_log: RejectionLog,
    pub transport: Arc<Transport>,
    /// permessage-deflate, when `transport.compression` is on.
    pub deflate: Option<Arc<Deflate>>,
    /// What every session shares (verifier, metrics, channels, limits).
    pub sessions: Arc<SessionShared>,
    /// Threads and messages; probed by `/ready`.
    pub storage: Storage,
    pub shutdown: CancellationToken,
    /// Connection tasks, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Every other background task (channel work, periodic jobs, the JWKS
    /// refresh), so shutdown waits for them too, within the grace period.
    pub tasks: TaskTracker,
    pub started_at: Instant,
    pub node: String,
    /// `/ws/stats`' answer (GraphQL's `stats` too).
    pub stats: StatsFn,
    pub graphql: Arc<Graphql>,
    /// How `/dashboard` is served (the dev token, a files directory).
    pub dashboard: DashboardOptions,
}

#[derive(Clone)]
pub struct AppState(pub Arc<ServerState>);

impl Deref for AppState {
    type Target = ServerState;
    fn deref(&self) -> &ServerState {
        &self.0
    }
}
