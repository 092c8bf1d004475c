//! How one node's per-channel subscriptions scale (docs/scaling.md): a
//! node subscribes to N channels, then another node publishes to channels
//! picked among them, one at a time, and the round trip publish → the
//! first node's sink is timed. Also Redis's memory for the subscriptions.
//!   cargo run --release -p wsgate-broker-redis --example many_channels -- [N=100000] [URL]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::{ClientLike, LuaInterface};
use tokio::sync::Notify;
use wsgate_broker_redis::{clients, Keys, RedisBroker};
use wsgate_core::broker::{Broker, ClientInfo, ControlKind, HistoryPolicy, NodeCommand, NodeSink};
use wsgate_core::channels::publication::Publication;

#[derive(Default)]
struct Arrivals {
    last: Mutex<Option<Arc<str>>>,
    notify: Notify,
}

impl NodeSink for Arrivals {
    fn on_publication(&self, p: &Arc<Publication>) {
        *self.last.lock().unwrap() = Some(p.channel.clone());
        self.notify.notify_one();
    }
    fn on_control(&self, _: &str, _: ControlKind, _: &ClientInfo) {}
    fn on_node_command(&self, _: &NodeCommand) {}
    fn on_gap(&self, _: &str) {}
}

async fn used_memory(client: &fred::clients::Client) -> i64 {
    let info: String = client
        .info(Some(fred::types::InfoKind::Memory))
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(100_000);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let prefix = format!("many-{}", std::process::id());
    let keys = Keys::new(&prefix);
    let arrivals = Arc::new(Arrivals::default());
    let (client, subscriber) = clients(&url).unwrap();
    client.wait_for_connect().await.unwrap();
    let mem0 = used_memory(&client).await;
    let node = Arc::new(RedisBroker::new(
        client.clone(),
        subscriber,
        keys.clone(),
        arrivals.clone(),
    ));
    let (c2, s2) = clients(&url).unwrap();
    let publisher = RedisBroker::new(c2, s2, keys, Arc::new(Arrivals::default()));

    let began = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (node, sem) = (node.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            node.subscribe(&format!("ch:{i}")).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = began.elapsed();
    let mem1 = used_memory(&client).await;
    println!(
        "subscribed {n} channels in {:.2} s ({:.0}/s); Redis memory +{:.1} MB ({:.0} B per channel)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        (mem1 - mem0) as f64 / 1e6,
        (mem1 - mem0) as f64 / n.max(1) as f64
    );

    let mut rtts = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let history = HistoryPolicy {
        size: 0,
        ttl: Duration::ZERO,
    };
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let channel = format!("ch:{}", x % n as u64);
        let t0 = Instant::now();
        let waiting = arrivals.notify.notified();
        publisher
            .publish(
                &channel,
                Bytes::from_static(b"{}"),
                serde_json::json!({}),
                history,
            )
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("delivered");
        assert_eq!(
            arrivals.last.lock().unwrap().as_deref(),
            Some(channel.as_str())
        );
        rtts.push(t0.elapsed());
    }
    rtts.sort();
    let q = |f: f64| rtts[((rtts.len() - 1) as f64 * f) as usize].as_secs_f64() * 1e3;
    println!(
        "publish -> delivered on the subscribed node, 2000 one at a time: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    // The channels' keys (an epoch each) go: nothing left behind.
    let removed: i64 = client
        .eval(
            "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) n = n + 1 end return n",
            Vec::<String>::new(),
            vec![format!("{prefix}:*")],
        )
        .await
        .unwrap();
    println!("removed {removed} keys");
}
