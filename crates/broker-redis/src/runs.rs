//! [`RedisRuns`]: the cluster's runs in progress (core's `RunRegistry`).
//! A thread's claim is one key written by one script that also checks the
//! owner's count, so two nodes cannot both start a run on a thread or let
//! a user past `max_runs_per_user`. The executing node keeps its claims
//! alive ([`KeptAlive`]); a crashed node's expire within [`RUN_TTL`].

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::KeysInterface;
use fred::types::scripts::Script;
use fred::types::Value as RedisValue;
use wsgate_core::broker::BrokerError;
use wsgate_core::runs::{Claimed, RunClaim, RunRegistry};

use crate::kept_alive::KeptAlive;
use crate::keys::Keys;
use crate::within;

const RUNS: &str = include_str!("lua/runs.lua");

/// How long a claim lives without its node writing it again: how long a
/// crashed node's thread stays busy.
pub const RUN_TTL: Duration = Duration::from_secs(15);

pub struct RedisRuns {
    client: Client,
    keys: Keys,
    script: Script,
    ttl: Duration,
    /// This node's claims, by claim token.
    mine: KeptAlive<String, RunClaim>,
}

/// Runs the script for `op` on `claim`: its answer (0 done, 1 thread busy,
/// 2 owner at max, 3 not this claim's).
async fn call(
    (client, script, keys, ttl): (&Client, &Script, &Keys, Duration),
    op: &str,
    claim: &RunClaim,
    max: usize,
) -> Result<i64, BrokerError> {
    let json = serde_json::to_string(claim).expect("a claim serializes");
    let k = vec![
        keys.run(&claim.owner, &claim.thread_id),
        keys.user_runs(&claim.owner),
        keys.run_id(&claim.owner, &claim.run_id),
    ];
    let args: Vec<RedisValue> = vec![
        op.into(),
        claim.claim.as_str().into(),
        json.into(),
        claim.thread_id.as_str().into(),
        claim.run_id.as_str().into(),
        (ttl.as_millis() as i64).into(),
        (max.min(i64::MAX as usize) as i64).into(),
        (claim.version.min(i64::MAX as u64) as i64).into(),
    ];
    within(script.evalsha_with_reload(client, k, args)).await
}

impl RedisRuns {
    pub fn new(client: Client, keys: Keys) -> Self {
        Self::with_ttl(client, keys, RUN_TTL)
    }

    /// As [`RedisRuns::new`], claims living `ttl` (tests shorten it).
    pub fn with_ttl(client: Client, keys: Keys, ttl: Duration) -> Self {
        let script = Script::from_lua(RUNS);
        let (c, k, s) = (client.clone(), keys.clone(), script.clone());
        let mine = KeptAlive::new(ttl, move |_token: String, claim: RunClaim| {
            let (c, k, s) = (c.clone(), k.clone(), s.clone());
            async move {
                // The same write as an update: puts the claim back if Redis
                // lost it (restarted empty) while the run goes on.
                let answer = call((&c, &s, &k, ttl), "write", &claim, 0).await?;
                if answer == 3 {
                    tracing::warn!(thread_id = %claim.thread_id, run_id = %claim.run_id, "another node claimed the thread of a run in progress here");
                }
                Ok(())
            }
        });
        RedisRuns {
            client,
            keys,
            script,
            ttl,
            mine,
        }
    }

    async fn call(&self, op: &str, claim: &RunClaim, max: usize) -> Result<i64, BrokerError> {
        let on = (&self.client, &self.script, &self.keys, self.ttl);
        call(on, op, claim, max).await
    }

    /// The claim on `owner`'s `thread_id`. One that does not parse (or is
    /// not for what was asked) still holds the thread for the script, so it
    /// is an error here, never "free".
    async fn read(&self, owner: &str, thread_id: &str) -> Result<Option<RunClaim>, BrokerError> {
        let json: Option<String> = within(self.client.get(self.keys.run(owner, thread_id))).await?;
        let Some(json) = json else {
            return Ok(None);
        };
        match serde_json::from_str::<RunClaim>(&json) {
            Ok(c) if c.owner == owner && c.thread_id == thread_id => Ok(Some(c)),
            _ => Err(BrokerError::Unavailable(
                "redis: a run claim that is not this version's".into(),
            )),
        }
    }
}

#[async_trait]
impl RunRegistry for RedisRuns {
    async fn claim(&self, claim: &RunClaim, max_per_user: usize) -> Result<Claimed, BrokerError> {
        let answer = self.call("claim", claim, max_per_user).await?;
        Ok(match answer {
            0 => {
                self.mine.insert(claim.claim.clone(), claim.clone());
                Claimed::Yes
            }
            1 => Claimed::ThreadBusy,
            _ => Claimed::UserAtCap,
        })
    }

    async fn update(&self, claim: &RunClaim) -> Result<(), BrokerError> {
        self.mine.insert(claim.claim.clone(), claim.clone());
        self.call("write", claim, 0).await?;
        Ok(())
    }

    async fn release(&self, claim: &RunClaim) -> Result<(), BrokerError> {
        self.mine.remove(&claim.claim);
        self.call("release", claim, 0).await?;
        Ok(())
    }

    async fn by_thread(
        &self,
        owner: &str,
        thread_id: &str,
    ) -> Result<Option<RunClaim>, BrokerError> {
        self.read(owner, thread_id).await
    }

    async fn by_run(&self, owner: &str, run_id: &str) -> Result<Option<RunClaim>, BrokerError> {
        let thread: Option<String> =
            within(self.client.get(self.keys.run_id(owner, run_id))).await?;
        let Some(thread) = thread else {
            return Ok(None);
        };
        let claim = self.by_thread(owner, &thread).await?;
        Ok(claim.filter(|c| c.run_id == run_id))
    }
}
