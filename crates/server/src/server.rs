//! The server as a library call: `run(config, listener, shutdown)`. The
//! binary only parses flags and calls this; tests bind `127.0.0.1:0` and
//! call it too.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use governor::{Quota, RateLimiter};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsgate_agents::{HttpAgent, OpenAiAgent};
use wsgate_core::broker;
use wsgate_core::channels::authorizer::Authorizer;
use wsgate_core::channels::fanout::ChannelIndex;
use wsgate_core::channels::{Caller, Channels};
use wsgate_core::hub::Hub;
use wsgate_core::metrics::Metrics;
use wsgate_core::node::NodeRouter;
use wsgate_core::runs::{AgentBackend, EchoAgent, Runs};
use wsgate_core::session::SessionShared;
use wsgate_core::threads::{ThreadStore, Threads};
use wsgate_graphql::{Graphql, GraphqlSettings, StatsFn};
use wsgate_protocol::CloseCode;
use wsgate_storage::Storage;

use crate::auth::{JwksCache, JwtVerifier};
use crate::config::Config;
use crate::http;
use crate::http::dashboard::DashboardOptions;
use crate::state::{AppState, ServerState};
use crate::transport::{Shared as Transport, TransportLimits};
use wsgate_deflate::Deflate;

/// How long start-up waits for the first JWKS fetch before serving anyway
/// (tokens then fail until the background refresh succeeds).
const FIRST_JWKS_FETCH: Duration = Duration::from_secs(5);
/// How often a node of a cluster looks for runs a crashed node left
/// `running` (found once their claim expired, `RUN_TTL` in broker-redis).
const ORPHAN_SWEEP: Duration = Duration::from_secs(15);

/// Builds the shared state and starts its background tasks.
pub async fn build_state(
    config: Config,
    dashboard: DashboardOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<AppState> {
    let tasks = TaskTracker::new();
    let jwks = match &config.auth.jwks_url {
        None => None,
        Some(url) => {
            let cache = JwksCache::new(url.clone());
            match tokio::time::timeout(FIRST_JWKS_FETCH, cache.refresh()).await {
                Ok(Ok(n)) => tracing::info!(keys = n, "JWKS loaded"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "JWKS not available yet; retrying in the background")
                }
                Err(_) => tracing::warn!("JWKS fetch timed out; retrying in the background"),
            }
            tasks.spawn(cache.clone().run(
                Duration::from_secs(config.auth.jwks_refresh_secs),
                shutdown.clone(),
            ));
            Some(cache)
        }
    };
    let verifier = JwtVerifier::new(&config.auth, jwks).context("auth configuration")?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    registry
        .sub_registry_with_prefix("wsgate")
        .register_collector(Box::new(crate::telemetry::LogDrops));
    let l = &config.limits;
    let hub = Hub::new(l.max_connections, l.max_connections_per_user);
    // The broker delivers channel traffic to the index, node commands
    // (disconnect a user everywhere) to the hub.
    let index = Arc::new(ChannelIndex::new(metrics.clone()));
    let sink = Arc::new(NodeRouter {
        index: index.clone(),
        hub: hub.clone(),
        runs: Default::default(),
    });
    let backend = connect_broker(&config.broker, sink.clone())
        .await
        .context("broker.url")?;
    if let Some(connections) = backend.connections.clone() {
        hub.count_across_nodes(connections);
    }
    let storage = Storage::open(config.storage.url.expose())
        .await
        .context("storage.url")?;
    tracing::info!(kind = storage.kind(), "storage open, migrations applied");
    // On one node, runs still `running` belonged to a server that stopped
    // without finishing them: nothing will, so they are recorded as failed.
    // With several nodes they may be running elsewhere: `Runs::fail_orphans`
    // fails those no node holds, below and periodically.
    let cluster_runs = backend.runs.clone();
    let interrupted = match cluster_runs {
        Some(_) => 0,
        None => storage
            .fail_interrupted_runs()
            .await
            .context("storage: marking interrupted runs")?,
    };
    if interrupted > 0 {
        tracing::warn!(
            runs = interrupted,
            "runs interrupted by the last stop marked failed"
        );
    }
    let channels = Arc::new(Channels {
        authorizer: Authorizer::new(
            config
                .channels
                .namespaces
                .iter()
                .map(|ns| (ns.name.clone(), ns.policy())),
        ),
        broker: backend.broker,
        presence: backend.presence,
        index,
        // The store answers who owns a `thread:<id>` channel.
        threads: Arc::new(storage.clone()),
        metrics: metrics.clone(),
        tasks: tasks.clone(),
    });
    let per_ip = NonZeroU32::new(l.handshakes_per_minute_per_ip).unwrap_or(NonZeroU32::MIN);
    let transport = TransportLimits::new(l, Duration::from_millis(config.transport.write_delay_ms));
    let verifier: Arc<dyn wsgate_core::auth::TokenVerifier> = Arc::new(verifier);
    let store: Arc<dyn ThreadStore> = Arc::new(storage.clone());
    let runs = Runs::new(
        store.clone(),
        channels.clone(),
        agent_backend(&config.agent)?,
        Duration::from_secs(config.agent.timeout_secs),
        config.limits.max_runs_per_user,
        cluster_runs,
    );
    let _ = sink.runs.set(Arc::downgrade(&runs));
    let sessions = Arc::new(SessionShared {
        verifier: verifier.clone(),
        metrics: metrics.clone(),
        channels: channels.clone(),
        threads: Arc::new(Threads {
            store,
            channels: channels.clone(),
        }),
        runs,
        limits: config.limits.clone(),
    });
    let node = format!("{}-{}", hostname(), std::process::id());
    let started_at = Instant::now();
    let stats: StatsFn = Arc::new(crate::http::ops::stats(
        hub.clone(),
        metrics.clone(),
        node.clone(),
        started_at,
    ));
    let g = &config.graphql;
    let graphql = Graphql::new(
        sessions.clone(),
        GraphqlSettings {
            max_depth: g.max_depth,
            max_complexity: g.max_complexity,
            introspection: g.introspection,
            init_timeout: Duration::from_secs(g.init_timeout_secs),
            shared_resolution: g.shared_resolution,
        },
        stats.clone(),
    );
    let state = AppState(Arc::new(ServerState {
        stats,
        graphql,
        hub,
        channels,
        handshakes_per_ip: RateLimiter::keyed(Quota::per_minute(per_ip)),
        rejection_log: Default::default(),
        verifier,
        sessions,
        metrics,
        registry,
        transport: Transport::start(transport),
        deflate: config.transport.compression.then(|| {
            Deflate::new(
                config.transport.compression_level,
                config.transport.compression_min_bytes,
                config.limits.max_message_bytes,
            )
        }),
        storage,
        shutdown: shutdown.clone(),
        connections: TaskTracker::new(),
        tasks,
        started_at,
        node,
        config,
        dashboard,
    }));
    // Forget per-IP limiter entries of addresses that went quiet, so the
    // map does not grow with every address ever seen.
    let s = state.clone();
    state.tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => return,
                _ = tick.tick() => s.handshakes_per_ip.retain_recent(),
            }
        }
    });
    state.tasks.spawn(publish_node_metrics(state.clone()));
    state.tasks.spawn(fail_orphan_runs(state.clone()));
    Ok(state)
}

/// With several nodes, every [`ORPHAN_SWEEP`]: runs a crashed node left
/// `running` are failed (`Runs::fail_orphans`; nothing on one node).
async fn fail_orphan_runs(state: AppState) {
    let mut tick = tokio::time::interval(ORPHAN_SWEEP);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => match state.sessions.runs.fail_orphans().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(runs = n, "runs of a node that stopped marked failed"),
                Err(e) => tracing::debug!(error = %e.message, "orphan runs not checked"),
            },
        }
    }
}

/// The broker `broker.url` names: Redis (its own crate) or what core
/// builds in.
async fn connect_broker(
    config: &crate::config::BrokerConfig,
    index: Arc<NodeRouter>,
) -> anyhow::Result<broker::Backend> {
    let url = config.url.expose();
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let backend = wsgate_broker_redis::connect(url, &config.prefix, index)?;
        tracing::info!(prefix = %config.prefix, "redis broker configured");
        return Ok(backend);
    }
    Ok(broker::connect(url, index).await?)
}

/// The agent backend `agent.kind` names.
fn agent_backend(agent: &crate::config::AgentConfig) -> anyhow::Result<Arc<dyn AgentBackend>> {
    match agent.kind.as_str() {
        "echo" => Ok(Arc::new(EchoAgent {
            delay: Duration::from_millis(agent.echo_delay_ms),
        })),
        kind => {
            // One client for every run: connections to the upstream are
            // pooled. No redirects: the configured URL is the only one.
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .context("agent: HTTP client")?;
            Ok(match kind {
                "http" => Arc::new(HttpAgent {
                    client,
                    url: agent.url.clone(),
                    timeout: Duration::from_secs(agent.timeout_secs),
                }),
                // `config.validate` admits only echo, http and openai.
                _ => Arc::new(OpenAiAgent {
                    client,
                    base_url: agent.url.clone(),
                    model: agent.model.clone(),
                    api_key: agent.api_key.as_ref().map(|k| k.expose().to_owned()),
                    system_prompt: agent.system_prompt.clone(),
                }),
            })
        }
    }
}

/// Publishes this node's figures to the built-in `metrics` channel every
/// `metrics_interval_secs`, as
/// `{"type":"metrics","timestamp","node","metrics":{...}}`.
async fn publish_node_metrics(state: AppState) {
    let every = Duration::from_secs(state.config.metrics_interval_secs);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let m = &state.metrics;
    let mut last = (Instant::now(), 0u64, 0u64, 0u64, 0u64);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let counts = (
            m.messages_in_total.get(),
            m.messages_out_total.get(),
            m.deliveries.get(),
            m.publications.get(),
        );
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let rate =
            |new: u64, old: u64| ((new.saturating_sub(old)) as f64 / secs * 10.0).round() / 10.0;
        let (p50, p99, p999, samples) = m.latency_window.take_percentiles();
        let hub = state.hub.stats();
        let payload = serde_json::json!({
            "type": "metrics",
            "timestamp": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "node": state.node,
            "metrics": {
                "connections": hub.connections,
                "users": hub.users,
                "messages_in_per_sec": rate(counts.0, last.1),
                "messages_out_per_sec": rate(counts.1, last.2),
                "deliveries_per_sec": rate(counts.2, last.3),
                "publications_per_sec": rate(counts.3, last.4),
                "publish_latency_ms": { "p50": p50, "p99": p99, "p999": p999, "samples": samples },
            }
        });
        last = (now, counts.0, counts.1, counts.2, counts.3);
        let bytes = bytes::Bytes::from(payload.to_string());
        if let Err(error) = state
            .channels
            .publish(Caller::Server, "metrics", bytes, payload)
            .await
        {
            tracing::warn!(%error, "metrics publish failed");
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wsgate".into())
}

/// Serves until `shutdown` is cancelled, then closes every WebSocket with
/// 1001 and waits up to `shutdown_grace_secs` for connections to finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(config, DashboardOptions::default(), listener, shutdown).await
}

/// [`run`] with the dashboard's options (`wsgate serve --dev` passes its
/// token; `--dashboard-dir` a directory of files).
pub async fn run_with(
    config: Config,
    dashboard: DashboardOptions,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let state = build_state(config, dashboard, shutdown.clone()).await?;
    let app = http::router(state.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    // HTTP connections (until they upgrade) on their own tracker: shutdown
    // closes the idle ones at once and waits for the rest with the
    // WebSocket connections.
    let http_connections = TaskTracker::new();
    let server = tokio::spawn(crate::listener::serve(
        listener,
        app,
        state.config.limits.clone(),
        state.metrics.clone(),
        shutdown.clone(),
        http_connections.clone(),
    ));

    shutdown.cancelled().await;
    state.sessions.runs.interrupt_all();
    let closing = state.hub.close_all(CloseCode::GoingAway);
    tracing::info!(
        connections = closing,
        grace_secs = grace.as_secs(),
        "shutting down"
    );
    state.connections.close();
    let drained = tokio::time::timeout(grace, async {
        let _ = server.await;
        http_connections.close();
        state.tasks.close();
        tokio::join!(
            state.connections.wait(),
            http_connections.wait(),
            state.tasks.wait()
        );
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("shutdown complete"),
        Err(_) => tracing::warn!(
            remaining = state.hub.stats().connections,
            "grace period over; dropping remaining connections"
        ),
    }
    state.storage.close().await;
    Ok(())
}
