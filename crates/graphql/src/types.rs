//! The schema's object types: views of core's types, field names in
//! camelCase. Offsets and Unix-millisecond times are 64-bit numbers under
//! `Int` (GraphQL's `Int` is 32-bit on paper; async-graphql writes them as
//! plain JSON numbers, which every JSON client reads).

use std::sync::Arc;

use async_graphql::{InputObject, Json, Object, SimpleObject, ID};
use serde_json::Value;
use wsgate_core::auth::Identity;
use wsgate_core::broker::{ClientInfo as CoreClient, HistoryPage as CorePage};
use wsgate_core::channels::publication::{
    Publication as CorePublication, StreamPosition as CorePosition,
};
use wsgate_core::threads::{Message as CoreMessage, Run as CoreRun, Thread as CoreThread};

/// Who the token says the caller is.
#[derive(SimpleObject)]
pub struct Me {
    pub user: String,
    pub roles: Vec<String>,
    pub name: Option<String>,
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
}

impl From<&Identity> for Me {
    fn from(i: &Identity) -> Self {
        Me {
            user: i.user.to_string(),
            roles: i.roles().to_vec(),
            name: i.name().map(str::to_owned),
            expires_at: i.expires_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct Thread {
    pub id: ID,
    pub title: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds: creation, a rename or the latest message.
    pub updated_at: i64,
}

impl From<CoreThread> for Thread {
    fn from(t: CoreThread) -> Self {
        Thread {
            id: ID(t.id),
            title: t.title,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct Message {
    pub id: ID,
    pub thread_id: ID,
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    pub created_at: i64,
}

impl From<CoreMessage> for Message {
    fn from(m: CoreMessage) -> Self {
        Message {
            id: ID(m.id),
            thread_id: ID(m.thread_id),
            role: m.role.as_str().to_owned(),
            content: m.content,
            created_at: m.created_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct Run {
    pub id: ID,
    pub thread_id: ID,
    /// `running`, `completed`, `stopped` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

impl From<CoreRun> for Run {
    fn from(r: CoreRun) -> Self {
        Run {
            id: ID(r.id),
            thread_id: ID(r.thread_id),
            status: r.status.as_str().to_owned(),
            error: r.error,
            started_at: r.started_at,
            ended_at: r.ended_at,
        }
    }
}

/// Where a channel's stream stands.
#[derive(SimpleObject)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

impl From<&CorePosition> for StreamPosition {
    fn from(p: &CorePosition) -> Self {
        StreamPosition {
            offset: p.offset,
            epoch: p.epoch.to_string(),
        }
    }
}

/// A position to read on from (history, recovery).
#[derive(InputObject)]
pub struct StreamPositionInput {
    pub offset: u64,
    pub epoch: String,
}

impl From<StreamPositionInput> for CorePosition {
    fn from(p: StreamPositionInput) -> Self {
        CorePosition {
            offset: p.offset,
            epoch: p.epoch.into(),
        }
    }
}

/// One message of a channel. Resolved from the publication as the broker
/// made it: nothing here depends on who reads it, which is what lets
/// identical subscriptions share one resolution.
pub struct Publication(pub Arc<CorePublication>);

#[Object]
impl Publication {
    async fn channel(&self) -> &str {
        &self.0.channel
    }

    async fn offset(&self) -> u64 {
        self.0.offset
    }

    async fn epoch(&self) -> &str {
        &self.0.epoch
    }

    /// The published JSON, as published.
    async fn data(&self) -> Json<&Value> {
        Json(&self.0.value)
    }
}

/// One event of a thread's runs (SPEC §6): `agent_started`,
/// `agent_thinking`, `tool_executing`, `tool_result`, `partial_result`,
/// `final_report`, `agent_completed`, and thread news.
pub struct ThreadEvent(pub Arc<CorePublication>);

#[Object]
impl ThreadEvent {
    /// The event's offset in `thread:<id>`: resume after it with `since`.
    async fn offset(&self) -> u64 {
        self.0.offset
    }

    async fn epoch(&self) -> &str {
        &self.0.epoch
    }

    #[graphql(name = "type")]
    async fn kind(&self) -> Option<&str> {
        self.0.value.get("type").and_then(Value::as_str)
    }

    async fn run_id(&self) -> Option<&str> {
        self.payload_field("run_id")
    }

    async fn thread_id(&self) -> Option<&str> {
        self.payload_field("thread_id")
    }

    /// The event's fields (`delta`, `text`, `tool`, `status`, …).
    async fn payload(&self) -> Json<&Value> {
        Json(self.0.value.get("payload").unwrap_or(&Value::Null))
    }
}

impl ThreadEvent {
    fn payload_field(&self, name: &str) -> Option<&str> {
        self.0.value.get("payload")?.get(name)?.as_str()
    }
}

/// A page of a channel's history.
#[derive(SimpleObject)]
pub struct HistoryPage {
    pub publications: Vec<Publication>,
    /// The stream's position when the page was read.
    pub position: StreamPosition,
    /// False when publications after `since` have left history.
    pub complete: bool,
}

impl From<CorePage> for HistoryPage {
    fn from(p: CorePage) -> Self {
        HistoryPage {
            position: StreamPosition::from(&p.position),
            complete: p.complete,
            publications: p.publications.into_iter().map(Publication).collect(),
        }
    }
}

/// One connection in a channel's presence.
#[derive(SimpleObject)]
pub struct ClientInfo {
    pub user: String,
    pub connection_id: String,
}

impl From<CoreClient> for ClientInfo {
    fn from(c: CoreClient) -> Self {
        ClientInfo {
            user: c.user.to_string(),
            connection_id: c.connection_id.to_string(),
        }
    }
}

/// What `sendMessage` did: the stored message and the run it started.
#[derive(SimpleObject)]
pub struct SentMessage {
    pub message: Message,
    pub thread: Thread,
    /// Its events stream on `threadEvents(threadId)`.
    pub run_id: ID,
}
