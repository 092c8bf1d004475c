//! [`RedisConnections`]: every user's connections on every node, for the
//! per-user cap across nodes. An entry lives [`CONNECTION_TTL`] unless its
//! node writes it again (every third of that), so a crashed node's
//! connections stop counting within the TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::types::scripts::Script;
use fred::types::Value as RedisValue;
use tokio::task::JoinHandle;
use wsgate_core::broker::{BrokerError, UserConnections};

use crate::keys::Keys;
use crate::within;

const CONNECTIONS: &str = include_str!("lua/connections.lua");

/// How long a connection counts without its node writing it again.
pub const CONNECTION_TTL: Duration = Duration::from_secs(60);

/// This node's counted connections: connection id → user.
type Local = Mutex<HashMap<String, String>>;

pub struct RedisConnections {
    client: Client,
    keys: Keys,
    script: Script,
    local: Arc<Local>,
    refresher: JoinHandle<()>,
}

impl Drop for RedisConnections {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

async fn call(
    client: &Client,
    script: &Script,
    keys: &Keys,
    user: &str,
    args: Vec<RedisValue>,
) -> Result<i64, BrokerError> {
    within(script.evalsha_with_reload(client, vec![keys.connections(user)], args)).await
}

fn admit_args(connection_id: &str, max: usize) -> Vec<RedisValue> {
    vec![
        "admit".into(),
        connection_id.into(),
        (max.min(i64::MAX as usize) as i64).into(),
        (CONNECTION_TTL.as_millis() as i64).into(),
    ]
}

/// Writes this node's connections again every third of the TTL, until
/// the counter is dropped.
async fn refresh(client: Client, keys: Keys, local: Weak<Local>) {
    let script = Script::from_lua(CONNECTIONS);
    let mut tick = tokio::time::interval(CONNECTION_TTL / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(local) = local.upgrade() else { return };
        let entries: Vec<(String, String)> = local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, user)| (id.clone(), user.clone()))
            .collect();
        drop(local);
        for (id, user) in entries {
            // Keeping an entry alive never refuses it (it is there).
            if let Err(e) = call(&client, &script, &keys, &user, admit_args(&id, usize::MAX)).await
            {
                tracing::debug!(error = %e, "connection count refresh failed");
                break;
            }
        }
    }
}

impl RedisConnections {
    pub fn new(client: Client, keys: Keys) -> Self {
        let local: Arc<Local> = Arc::default();
        let refresher = tokio::spawn(refresh(
            client.clone(),
            keys.clone(),
            Arc::downgrade(&local),
        ));
        RedisConnections {
            client,
            keys,
            script: Script::from_lua(CONNECTIONS),
            local,
            refresher,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // Single inserts and removals: consistent even after a panic.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl UserConnections for RedisConnections {
    async fn admit(
        &self,
        user: &str,
        connection_id: &str,
        max: usize,
    ) -> Result<bool, BrokerError> {
        let counted = call(
            &self.client,
            &self.script,
            &self.keys,
            user,
            admit_args(connection_id, max),
        )
        .await?
            == 1;
        if counted {
            self.lock()
                .insert(connection_id.to_owned(), user.to_owned());
        }
        Ok(counted)
    }

    async fn release(&self, user: &str, connection_id: &str) -> Result<(), BrokerError> {
        self.lock().remove(connection_id);
        let args = vec!["release".into(), connection_id.into()];
        call(&self.client, &self.script, &self.keys, user, args).await?;
        Ok(())
    }
}
