//! [`RedisPresence`]: who is in a channel, shared by every node. Each
//! entry expires [`PRESENCE_TTL`] after it was last written, and the node
//! that added it writes it again every third of that: so a node that
//! crashes takes its clients out of presence within the TTL, without
//! anyone cleaning up after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::types::scripts::Script;
use fred::types::Value as RedisValue;
use tokio::task::JoinHandle;
use wsgate_core::broker::{BrokerError, ClientInfo, Presence};

use crate::keys::Keys;
use crate::within;

const PRESENCE: &str = include_str!("lua/presence.lua");

/// How long a presence entry lives without being written again.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// What this node added, by channel and connection, as stored.
type Local = Mutex<HashMap<(String, String), String>>;

pub struct RedisPresence {
    client: Client,
    keys: Keys,
    script: Script,
    local: Arc<Local>,
    refresher: JoinHandle<()>,
}

impl Drop for RedisPresence {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl RedisPresence {
    pub fn new(client: Client, keys: Keys) -> Self {
        let local: Arc<Local> = Arc::default();
        let refresher = tokio::spawn(refresh(
            client.clone(),
            keys.clone(),
            Arc::downgrade(&local),
        ));
        RedisPresence {
            client,
            keys,
            script: Script::from_lua(PRESENCE),
            local,
            refresher,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        // Single inserts and removals: consistent even after a panic.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn call(&self, channel: &str, args: Vec<RedisValue>) -> Result<Vec<String>, BrokerError> {
        call(&self.client, &self.script, &self.keys, channel, args).await
    }
}

async fn call(
    client: &Client,
    script: &Script,
    keys: &Keys,
    channel: &str,
    args: Vec<RedisValue>,
) -> Result<Vec<String>, BrokerError> {
    let k = vec![keys.presence(channel), keys.presence_expiry(channel)];
    within(script.evalsha_with_reload(client, k, args)).await
}

fn add_args(connection_id: &str, info: &str) -> Vec<RedisValue> {
    vec![
        "add".into(),
        connection_id.into(),
        info.into(),
        (PRESENCE_TTL.as_millis() as i64).into(),
    ]
}

/// Writes this node's entries again every third of the TTL, until the
/// presence is dropped.
async fn refresh(client: Client, keys: Keys, local: Weak<Local>) {
    let script = Script::from_lua(PRESENCE);
    let mut tick = tokio::time::interval(PRESENCE_TTL / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(local) = local.upgrade() else { return };
        let entries: Vec<_> = local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((ch, conn), info)| (ch.clone(), conn.clone(), info.clone()))
            .collect();
        drop(local);
        for (channel, conn, info) in entries {
            if let Err(e) = call(&client, &script, &keys, &channel, add_args(&conn, &info)).await {
                // Redis is away: the next round writes them again.
                tracing::debug!(error = %e, "presence refresh failed");
                break;
            }
        }
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        let info = serde_json::to_string(&client).expect("strings serialize");
        self.call(channel, add_args(&client.connection_id, &info))
            .await?;
        self.lock()
            .insert((channel.to_owned(), client.connection_id.to_string()), info);
        Ok(())
    }

    async fn remove(&self, channel: &str, connection_id: &str) -> Result<(), BrokerError> {
        self.lock()
            .remove(&(channel.to_owned(), connection_id.to_owned()));
        self.call(channel, vec!["remove".into(), connection_id.into()])
            .await?;
        Ok(())
    }

    async fn clients(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        #[derive(serde::Deserialize)]
        struct Info {
            user: String,
            connection_id: String,
        }
        let infos = self.call(channel, vec!["list".into()]).await?;
        Ok(infos
            .iter()
            .filter_map(|s| serde_json::from_str::<Info>(s).ok())
            .map(|i| ClientInfo {
                user: i.user.into(),
                connection_id: i.connection_id.into(),
            })
            .collect())
    }
}
