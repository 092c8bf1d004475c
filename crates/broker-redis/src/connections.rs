//! [`RedisConnections`]: every user's connections on every node, for the
//! per-user cap across nodes. An entry lives [`CONNECTION_TTL`] unless its
//! node writes it again ([`KeptAlive`]), so a crashed node's connections
//! stop counting within the TTL.

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::types::scripts::Script;
use fred::types::Value as RedisValue;
use wsgate_core::broker::{BrokerError, UserConnections};

use crate::kept_alive::KeptAlive;
use crate::keys::Keys;
use crate::within;

const CONNECTIONS: &str = include_str!("lua/connections.lua");

/// How long a connection counts without its node writing it again.
pub const CONNECTION_TTL: Duration = Duration::from_secs(60);

pub struct RedisConnections {
    client: Client,
    keys: Keys,
    script: Script,
    /// This node's counted connections: connection id → user.
    mine: KeptAlive<String, String>,
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

impl RedisConnections {
    pub fn new(client: Client, keys: Keys) -> Self {
        let script = Script::from_lua(CONNECTIONS);
        let (c, k, s) = (client.clone(), keys.clone(), script.clone());
        // Keeping an entry alive never refuses it: it is there.
        let mine = KeptAlive::new(CONNECTION_TTL, move |id: String, user: String| {
            let (c, k, s) = (c.clone(), k.clone(), s.clone());
            async move {
                call(&c, &s, &k, &user, admit_args(&id, usize::MAX))
                    .await
                    .map(drop)
            }
        });
        RedisConnections {
            client,
            keys,
            script,
            mine,
        }
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
        let args = admit_args(connection_id, max);
        let counted = call(&self.client, &self.script, &self.keys, user, args).await? == 1;
        if counted {
            self.mine.insert(connection_id.to_owned(), user.to_owned());
        }
        Ok(counted)
    }

    async fn release(&self, user: &str, connection_id: &str) -> Result<(), BrokerError> {
        self.mine.remove(&connection_id.to_owned());
        let args = vec!["release".into(), connection_id.into()];
        call(&self.client, &self.script, &self.keys, user, args).await?;
        Ok(())
    }
}
