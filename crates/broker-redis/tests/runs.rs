//! The cluster's run registry on a real Redis (`TEST_REDIS_URL`; skipped
//! without it): two nodes' registries under one prefix see each other's
//! claims, the per-user cap counts both, only a claim's holder rewrites or
//! releases it, and a crashed node's claims expire.

use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface};
use wsgate_broker_redis::{clients, Keys, RedisRuns};
use wsgate_core::runs::{Claimed, RunClaim, RunRegistry};

fn node(prefix: &str, ttl: Duration) -> RedisRuns {
    let url = std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL (see .ci/run)");
    let (client, _) = clients(&url).expect("a Redis URL");
    RedisRuns::with_ttl(client, Keys::new(prefix), ttl)
}

fn claim(owner: &str, thread: &str) -> RunClaim {
    RunClaim {
        claim: uuid::Uuid::new_v4().to_string(),
        owner: owner.into(),
        thread_id: thread.into(),
        run_id: String::new(),
        started: None,
        version: 0,
    }
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn claims_are_one_per_thread_and_capped_per_user_across_nodes() {
    let prefix = format!("wsgate-test-{}", uuid::Uuid::new_v4().simple());
    let (a, b) = (
        node(&prefix, Duration::from_secs(15)),
        node(&prefix, Duration::from_secs(15)),
    );
    let mut first = claim("alice", "t1");
    assert_eq!(a.claim(&first, 2).await.unwrap(), Claimed::Yes);
    assert_eq!(
        b.claim(&claim("alice", "t1"), 2).await.unwrap(),
        Claimed::ThreadBusy,
        "the thread runs on A"
    );
    assert_eq!(
        b.claim(&claim("alice", "t2"), 2).await.unwrap(),
        Claimed::Yes
    );
    assert_eq!(
        b.claim(&claim("alice", "t3"), 2).await.unwrap(),
        Claimed::UserAtCap,
        "two runs counted over both nodes"
    );
    assert_eq!(b.claim(&claim("bob", "t3"), 2).await.unwrap(), Claimed::Yes);

    // What A writes, B reads, by thread and by run.
    assert_eq!(b.by_run("alice", "r1").await.unwrap(), None);
    first.run_id = "r1".into();
    first.started = Some((1_700_000_000_000, 4, "ep".into()));
    first.version = 2;
    a.update(&first).await.unwrap();
    // An older copy (a keep-alive that read it before) does not replace it.
    let mut older = first.clone();
    older.version = 1;
    older.started = None;
    a.update(&older).await.unwrap();
    assert_eq!(
        b.by_thread("alice", "t1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(b.by_run("alice", "r1").await.unwrap(), Some(first.clone()));
    assert_eq!(
        b.by_run("mallory", "r1").await.unwrap(),
        None,
        "owner's only"
    );

    // Another claim's token can neither rewrite nor release it.
    let mut forged = first.clone();
    forged.claim = "forged".into();
    forged.run_id = "r9".into();
    b.update(&forged).await.unwrap();
    b.release(&forged).await.unwrap();
    assert_eq!(
        b.by_thread("alice", "t1").await.unwrap(),
        Some(first.clone())
    );

    a.release(&first).await.unwrap();
    assert_eq!(b.by_thread("alice", "t1").await.unwrap(), None);
    assert_eq!(b.by_run("alice", "r1").await.unwrap(), None);
    assert_eq!(
        b.claim(&claim("alice", "t3"), 2).await.unwrap(),
        Claimed::Yes,
        "the released run no longer counts"
    );
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn a_live_node_keeps_its_claims_and_a_crashed_one_loses_them() {
    let prefix = format!("wsgate-test-{}", uuid::Uuid::new_v4().simple());
    let ttl = Duration::from_millis(900);
    let (alive, crashed, watcher) = (node(&prefix, ttl), node(&prefix, ttl), node(&prefix, ttl));
    let mut kept = claim("alice", "kept");
    kept.run_id = "r-kept".into();
    kept.version = 1;
    assert_eq!(alive.claim(&kept, 5).await.unwrap(), Claimed::Yes);
    alive.update(&kept).await.unwrap();
    let lost = claim("alice", "lost");
    assert_eq!(crashed.claim(&lost, 5).await.unwrap(), Claimed::Yes);
    drop(crashed);
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(
        watcher.by_thread("alice", "kept").await.unwrap(),
        Some(kept.clone())
    );
    assert_eq!(
        watcher.by_run("alice", "r-kept").await.unwrap(),
        Some(kept.clone())
    );
    assert_eq!(watcher.by_thread("alice", "lost").await.unwrap(), None);
    assert_eq!(
        watcher.claim(&claim("alice", "lost"), 2).await.unwrap(),
        Claimed::Yes,
        "the crashed node's thread is free, and its run no longer counts"
    );

    // Redis loses the claim (restarted empty, say) while the run goes on:
    // its node's keep-alive puts it back, run id and all.
    let url = std::env::var("TEST_REDIS_URL").unwrap();
    let (raw, _) = clients(&url).unwrap();
    raw.wait_for_connect().await.unwrap();
    let keys = Keys::new(&prefix);
    let _: i64 = raw
        .del(vec![
            keys.run("alice", "kept"),
            keys.run_id("alice", "r-kept"),
        ])
        .await
        .unwrap();
    assert_eq!(watcher.by_thread("alice", "kept").await.unwrap(), None);
    tokio::time::sleep(ttl).await;
    assert_eq!(
        watcher.by_run("alice", "r-kept").await.unwrap(),
        Some(kept.clone())
    );
    // Released: the keep-alive does not bring it back.
    alive.release(&kept).await.unwrap();
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(watcher.by_thread("alice", "kept").await.unwrap(), None);
}
