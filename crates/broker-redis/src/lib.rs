//! wsgate's Redis broker, presence, connection count and run registry:
//! several nodes as one (SPEC §7).
//! Core keeps the `Broker` and `Presence` traits; this crate implements
//! them on Redis with fred (see docs/architecture.md for why fred) and
//! passes the same contract suite as the memory broker.

mod broker;
mod connections;
mod kept_alive;
mod keys;
mod presence;
mod runs;
mod wire;

pub use broker::RedisBroker;
pub use connections::{RedisConnections, CONNECTION_TTL};
pub use keys::Keys;
pub use presence::{RedisPresence, PRESENCE_TTL};
pub use runs::{RedisRuns, RUN_TTL};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::prelude::{Builder, ClientLike, Config, EventInterface, ReconnectPolicy};
use wsgate_core::broker::{Backend, BrokerError, NodeSink};

/// How long any Redis command may take before the caller gets
/// `unavailable`: a Redis that is down must not hold a subscribe or a
/// publish for long (fred would otherwise queue it until Redis returns).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// A channel's offset and epoch outlive its history by this long (30
/// days, refreshed by every publication), so a client that comes back
/// within it is told exactly what it missed, or that history is gone.
pub const META_TTL_SECS: i64 = 30 * 24 * 3600;

/// Runs a Redis command bounded by [`ANSWER_WITHIN`]; errors become
/// `unavailable` with fred's reason (it never holds the URL).
///
/// fred's own timeout (the same bound) is what ends a command waiting for
/// Redis: it marks the command so it is never written later. This outer
/// bound, a little longer, only guards against fred itself hanging; were
/// it the one to fire first, a publish reported `unavailable` could still
/// go out once Redis is back.
pub(crate) async fn within<T>(
    command: impl Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, BrokerError> {
    let guard = ANSWER_WITHIN + Duration::from_millis(500);
    match tokio::time::timeout(guard, command).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BrokerError::Unavailable(format!("redis: {}", e.details()))),
        Err(_) => Err(BrokerError::Unavailable(format!(
            "redis: no answer within {:.1} s",
            guard.as_secs_f64()
        ))),
    }
}

/// Why `broker.url` could not be used. Never contains the URL (it may
/// carry a password).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("broker.url is not a Redis URL fred understands: {0}")]
    Url(String),
    #[error("redis: {0}")]
    Client(String),
}

/// Clients for `url` (`redis://` or `rediss://`), reconnecting with
/// exponential backoff (0.1 s to 5 s) forever, each command bounded by
/// [`ANSWER_WITHIN`]. They connect in the background: commands wait for
/// the connection, bounded as well.
pub fn clients(url: &str) -> Result<(Client, SubscriberClient), ConnectError> {
    let config = Config::from_url(url).map_err(|e| ConnectError::Url(e.details().to_string()))?;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_performance_config(|p| {
            p.default_command_timeout = ANSWER_WITHIN;
            // Messages a slow node may lag behind pub/sub before it loses
            // some (logged). fred gives this capacity to each of a
            // client's 8 event channels and tokio allocates every slot up
            // front (~95 B each): 1 << 16 for both clients cost 95 MiB per
            // node (the soak measured it), so the subscriber gets 1 << 15
            // and the command client, which receives no messages, 64.
            p.broadcast_channel_capacity = 1 << 15;
        })
        .with_connection_config(|c| {
            c.connection_timeout = ANSWER_WITHIN;
            // A command in flight when the connection drops is not sent
            // again on the next one: a publish Redis may have run already
            // must not run twice (a second offset for the same message).
            // The caller gets `unavailable`.
            c.max_command_attempts = 1;
        });
    let subscriber = builder
        .build_subscriber_client()
        .map_err(|e| ConnectError::Client(e.details().to_string()))?;
    builder.with_performance_config(|p| p.broadcast_channel_capacity = 64);
    let client = builder
        .build()
        .map_err(|e| ConnectError::Client(e.details().to_string()))?;
    client.connect();
    subscriber.connect();
    watch_state(&client);
    Ok((client, subscriber))
}

/// Logs the connection going and coming back, once per change (fred
/// retries quietly in between).
fn watch_state(client: &Client) {
    let (mut errors, mut reconnects) = (client.error_rx(), client.reconnect_rx());
    tokio::spawn(async move {
        let mut up = true;
        loop {
            tokio::select! {
                e = errors.recv() => match e {
                    Ok((error, _)) if up => {
                        up = false;
                        tracing::warn!(error = %error.details(), "redis connection lost; retrying with backoff");
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
                r = reconnects.recv() => match r {
                    Ok(_) if !up => {
                        up = true;
                        tracing::info!("redis connection restored");
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
            }
        }
    });
}

/// The broker, presence and connection count for `url` under `prefix`,
/// delivering into `sink`.
pub fn connect(url: &str, prefix: &str, sink: Arc<dyn NodeSink>) -> Result<Backend, ConnectError> {
    let (client, subscriber) = clients(url)?;
    let keys = Keys::new(prefix);
    Ok(Backend {
        broker: Arc::new(RedisBroker::new(
            client.clone(),
            subscriber,
            keys.clone(),
            sink,
        )),
        presence: Arc::new(RedisPresence::new(client.clone(), keys.clone())),
        connections: Some(Arc::new(RedisConnections::new(
            client.clone(),
            keys.clone(),
        ))),
        runs: Some(Arc::new(RedisRuns::new(client, keys))),
    })
}
