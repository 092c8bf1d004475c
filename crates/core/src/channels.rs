//! Channels as a service: the authorizer, the broker, presence and the
//! local fan-out index, shared by every session and the server API.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use wsgate_protocol::{Encoding, ServerFrame};

use crate::broker::{Broker, BrokerError, ClientInfo, HistoryPolicy, Presence};
use crate::channel::{Authorizer, Denied, NamespacePolicy};
use crate::fanout::ChannelIndex;
use crate::outbound::Outbound;
use crate::publication::{Publication, StreamPosition};

pub struct Channels {
    pub authorizer: Authorizer,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub index: Arc<ChannelIndex>,
}

/// Why a server-side publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("invalid channel name")]
    BadName,
    #[error("unknown namespace")]
    UnknownNamespace,
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<Denied> for PublishError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::BadName => PublishError::BadName,
            Denied::Forbidden => PublishError::UnknownNamespace,
        }
    }
}

/// Most publications one history answer carries.
pub const MAX_HISTORY_LIMIT: usize = 1000;

pub fn history_policy(policy: &NamespacePolicy) -> HistoryPolicy {
    HistoryPolicy {
        size: policy.history_size,
        ttl: policy.history_ttl,
    }
}

impl Channels {
    /// The server API's publish: any valid channel of a known namespace.
    /// `data` is the JSON text of `value`.
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        value: Value,
    ) -> Result<Arc<Publication>, PublishError> {
        let policy = self.authorizer.lookup(channel)?;
        let history = history_policy(policy);
        Ok(self.broker.publish(channel, data, value, history).await?)
    }

    /// The payload of a `history` reply and of the server API's history:
    /// publications after `since` (the newest ones without it), at most
    /// `limit`, which defaults to and is capped by the namespace's history
    /// size and [`MAX_HISTORY_LIMIT`].
    pub async fn history(
        &self,
        channel: &str,
        policy: &NamespacePolicy,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
    ) -> Result<Value, BrokerError> {
        let history = history_policy(policy);
        let limit = limit
            .unwrap_or(history.size)
            .min(history.size)
            .min(MAX_HISTORY_LIMIT);
        let page = self.broker.history(channel, since, limit, history).await?;
        let publications: Vec<Value> = page
            .publications
            .iter()
            .map(|p| json!({"offset": p.offset, "data": &p.value}))
            .collect();
        Ok(json!({
            "channel": channel,
            "epoch": &*page.position.epoch,
            "offset": page.position.offset,
            "publications": publications,
        }))
    }

    /// Sends `join` or `leave` to the channel's other subscribers on this
    /// node (`except`: the connection the news is about).
    pub fn announce(
        &self,
        kind: &'static str,
        channel: &str,
        client: &ClientInfo,
        except: Option<&Arc<Outbound>>,
    ) {
        let payload = json!({
            "channel": channel,
            "user": &*client.user,
            "connection_id": &*client.connection_id,
        });
        self.index
            .broadcast_control(channel, except, |enc: Encoding| {
                ServerFrame::new(kind, None, &payload).encode(enc)
            });
    }
}
