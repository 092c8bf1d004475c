//! A node that loses Redis and gets it back (`TEST_REDIS_URL`; skipped
//! without it): the node's connections run through a TCP relay the test
//! cuts, while another node keeps publishing straight to Redis.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::KeysInterface;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use wsgate_broker_redis::{clients, Keys, RedisBroker};
use wsgate_core::broker::contract::Collected;
use wsgate_core::broker::{Broker, BrokerError, HistoryPolicy};

fn url() -> String {
    std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL (see .ci/run)")
}

/// Forwards connections from `listen` to `target` until dropped; dropping
/// it cuts every relayed connection and stops listening.
struct Relay {
    _tasks: JoinSet<()>,
}

impl Relay {
    async fn start(listen: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { _tasks: tasks }
    }
}

const KEEP: HistoryPolicy = HistoryPolicy {
    size: 100,
    ttl: Duration::ZERO,
};

async fn publish(b: &RedisBroker, channel: &str, n: u64) -> u64 {
    let v = json!({ "n": n });
    b.publish(channel, Bytes::from(v.to_string()), v, KEEP)
        .await
        .expect("publish")
        .offset
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn a_node_that_loses_redis_delivers_what_it_missed_or_reports_the_gap() {
    let target = {
        let u = url();
        let rest = u.trim_start_matches("redis://");
        let host = rest.split('/').next().unwrap().to_owned();
        tokio::net::lookup_host(host).await.unwrap().next().unwrap()
    };
    let relay_addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let prefix = format!("wsgate-outage-{}", uuid::Uuid::new_v4().simple());
    let channel = "room";

    let relay = Relay::start(relay_addr, target).await;
    let sink = Arc::new(Collected::default());
    let (c, s) = clients(&format!("redis://{relay_addr}/0")).unwrap();
    let node = RedisBroker::new(c, s, Keys::new(&prefix), sink.clone());
    let (c, s) = clients(&url()).unwrap();
    let direct = c.clone();
    let other = RedisBroker::new(c, s, Keys::new(&prefix), Arc::new(Collected::default()));

    node.subscribe(channel).await.unwrap();
    for n in 1..=2 {
        publish(&other, channel, n).await;
    }
    sink.wait_for(channel, 2).await;

    // Redis goes away for this node: its calls answer `unavailable`
    // within the bound, while publications go on elsewhere.
    drop(relay);
    let started = std::time::Instant::now();
    let Err(BrokerError::Unavailable(_)) = node.ping().await else {
        panic!("ping without Redis")
    };
    assert!(started.elapsed() < Duration::from_secs(4));
    for n in 3..=5 {
        publish(&other, channel, n).await;
    }

    // Back: the node re-subscribes and delivers 3..5 from history, then
    // the live rest, each once, in order.
    let _relay = Relay::start(relay_addr, target).await;
    sink.wait_for(channel, 5).await;
    publish(&other, channel, 6).await;
    sink.wait_for(channel, 6).await;
    assert_eq!(sink.offsets(channel), [1, 2, 3, 4, 5, 6]);
    node.ping().await.expect("ping after Redis is back");
    assert!(sink.gaps().is_empty());

    // Redis loses the channel (flushed): the next publication starts a new
    // epoch, which the node reports as a gap instead of delivering it as
    // if nothing happened.
    let keys = Keys::new(&prefix);
    let _: i64 = direct
        .del(vec![keys.meta(channel), keys.history(channel)])
        .await
        .unwrap();
    assert_eq!(publish(&other, channel, 7).await, 1, "a new stream");
    for _ in 0..100 {
        if !sink.gaps().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.gaps(), [channel]);
    assert_eq!(
        sink.offsets(channel),
        [1, 2, 3, 4, 5, 6],
        "nothing of the new stream as if it were the old"
    );
}
