//! [`RedisPresence`]: who is in a channel, shared by every node. Each
//! entry expires [`PRESENCE_TTL`] after it was last written and is kept
//! alive by the node that added it ([`KeptAlive`]), so a node that
//! crashes takes its clients out of presence within the TTL, without
//! anyone cleaning up after it.

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::types::scripts::Script;
use fred::types::Value as RedisValue;
use wsgate_core::broker::{BrokerError, ClientInfo, Presence};

use crate::kept_alive::KeptAlive;
use crate::keys::Keys;
use crate::within;

const PRESENCE: &str = include_str!("lua/presence.lua");

/// How long a presence entry lives without being written again.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);

pub struct RedisPresence {
    client: Client,
    keys: Keys,
    script: Script,
    /// What this node added: (channel, connection id) → stored info.
    mine: KeptAlive<(String, String), String>,
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

impl RedisPresence {
    pub fn new(client: Client, keys: Keys) -> Self {
        let script = Script::from_lua(PRESENCE);
        let (c, k, s) = (client.clone(), keys.clone(), script.clone());
        let mine = KeptAlive::new(
            PRESENCE_TTL,
            move |(channel, conn): (String, String), info: String| {
                let (c, k, s) = (c.clone(), k.clone(), s.clone());
                async move {
                    call(&c, &s, &k, &channel, add_args(&conn, &info))
                        .await
                        .map(drop)
                }
            },
        );
        RedisPresence {
            client,
            keys,
            script,
            mine,
        }
    }

    async fn call(&self, channel: &str, args: Vec<RedisValue>) -> Result<Vec<String>, BrokerError> {
        call(&self.client, &self.script, &self.keys, channel, args).await
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        let info = serde_json::to_string(&client).expect("strings serialize");
        self.call(channel, add_args(&client.connection_id, &info))
            .await?;
        self.mine
            .insert((channel.to_owned(), client.connection_id.to_string()), info);
        Ok(())
    }

    async fn remove(&self, channel: &str, connection_id: &str) -> Result<(), BrokerError> {
        self.mine
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
