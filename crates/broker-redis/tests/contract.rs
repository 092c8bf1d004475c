//! The broker contract (`wsgate_core::broker::contract`) on a real Redis
//! (`TEST_REDIS_URL`, which `.ci/run` sets; skipped without it), each
//! check under a key prefix of its own.

use std::sync::Arc;

use wsgate_broker_redis::{clients, Keys, RedisBroker, RedisPresence};
use wsgate_core::broker::contract;
use wsgate_core::broker::{Broker, NodeSink, Presence};

fn url() -> String {
    std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL (see .ci/run)")
}

fn prefix() -> String {
    format!("wsgate-test-{}", uuid::Uuid::new_v4().simple())
}

fn make(sink: Arc<dyn NodeSink>) -> Arc<dyn Broker> {
    let (client, subscriber) = clients(&url()).expect("a Redis URL");
    Arc::new(RedisBroker::new(
        client,
        subscriber,
        Keys::new(&prefix()),
        sink,
    ))
}

macro_rules! on_redis {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            #[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
            async fn $check() {
                contract::$check(make).await;
            }
        )*
    };
}

on_redis!(
    offsets_epochs_and_delivery,
    delivery_follows_subscriptions,
    join_and_leave,
    history_and_recovery,
    history_ttl,
    forget,
);

/// Three nodes on one prefix: a command sent by one reaches all three.
#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn node_commands_reach_every_node() {
    let shared = prefix();
    let make = move |sink: Arc<dyn NodeSink>| -> Arc<dyn Broker> {
        let (client, subscriber) = clients(&url()).expect("a Redis URL");
        Arc::new(RedisBroker::new(
            client,
            subscriber,
            Keys::new(&shared),
            sink,
        ))
    };
    contract::node_commands_reach_every_node(make, 3).await;
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn presence() {
    contract::presence(|| -> Arc<dyn Presence> {
        let (client, _) = clients(&url()).expect("a Redis URL");
        Arc::new(RedisPresence::new(client, Keys::new(&prefix())))
    })
    .await;
}
