//! The `/ws` protocol state machine of one connection.
//!
//! Fed decoded client frames by the transport, it answers through the
//! connection's outbound queue and returns a close code when the connection
//! must end. Time enters only through [`tokio::time::Instant`] and the token's
//! `exp`, so tests drive it with paused time.

mod cmd;

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use wsgate_protocol::{ClientFrame, CloseCode, Command, Encoding, ErrorCode, ServerFrame};

use crate::auth::{expiry_instant, Identity, TokenVerifier};
use crate::channels::fanout::Subscriber;
use crate::channels::Channels;
use crate::connection::handler::{ConnectionHandler, Incoming};
use crate::connection::outbound::{OutFrame, Outbound};
use crate::error::CommandError;
use crate::limits::{Limits, MAX_DROPPED_IN_A_ROW, TOKEN_WARNING};
use crate::metrics::Metrics;
use crate::runs::Runs;
use crate::threads::Threads;

/// Who is on the connection and how to answer them: everything a session
/// needs from its surroundings, kept for its whole life (every byte here
/// is paid by each idle connection).
pub struct SessionContext {
    /// Shared with the hub's slot; logged on every connection line.
    pub connection_id: Arc<str>,
    pub identity: Identity,
    pub encoding: Encoding,
    pub outbound: Arc<Outbound>,
    pub shared: Arc<SessionShared>,
}

/// What every session of a server shares: one pointer per connection
/// instead of one per field.
pub struct SessionShared {
    pub verifier: Arc<dyn TokenVerifier>,
    pub metrics: Arc<Metrics>,
    pub channels: Arc<Channels>,
    pub threads: Arc<Threads>,
    pub runs: Arc<Runs>,
    pub limits: Limits,
}

/// One subscription of the session: the channel and its subscriber.
pub(crate) type Subscription = (Arc<str>, Arc<Subscriber>);

/// Subscriptions a background task made for the session (see
/// `Session::adopted`).
pub(crate) type Adopted = std::sync::Mutex<Vec<Subscription>>;

/// A per-connection token bucket. `MonotonicClock` is zero-sized and reads
/// `Instant::now()`; governor's default clock calibrates a TSC clock on
/// every construction, which cost a fifth of a handshake's CPU.
pub type MessageLimiter =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

/// A connection's message bucket: `limits.messages_per_minute`, bursts of
/// `limits.message_burst` (the GraphQL connection uses the same).
pub fn message_limiter(limits: &Limits) -> MessageLimiter {
    let per_minute = NonZeroU32::new(limits.messages_per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limits.message_burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(
        Quota::per_minute(per_minute).allow_burst(burst),
        MonotonicClock,
    )
}

/// How long until `limiter` lets a message through again.
pub fn retry_after(not_until: &governor::NotUntil<std::time::Instant>) -> std::time::Duration {
    not_until.wait_time_from(MonotonicClock.now())
}

pub struct Session {
    pub(crate) ctx: SessionContext,
    /// This connection's subscriptions. A list, not a map: at most
    /// `max_subscriptions` (128) entries, and an empty `Vec` is 24 bytes
    /// and allocates nothing, where an empty `HashMap` is 48.
    pub(crate) subscriptions: Vec<Subscription>,
    /// Subscriptions made by background tasks (a new thread's channel, which
    /// exists only once the task has created the thread), taken into
    /// `subscriptions` at the next command and undone at the end. Allocated
    /// on first use: an idle connection pays one pointer.
    pub(crate) adopted: Option<Arc<Adopted>>,
    /// The end of this connection's latest `publish`: each publish waits
    /// for the one before, so a connection's publications get offsets in
    /// the order it sent them (replies run on spawned tasks, which the
    /// runtime may start in another order). Resolves when the previous
    /// publish's task ends, however it ends.
    pub(crate) publish_tail: Option<tokio::sync::oneshot::Receiver<()>>,
    limiter: MessageLimiter,
    dropped_in_a_row: u32,
    /// Whether `token_expiring` went out for the current token (it is due
    /// [`TOKEN_WARNING`] before `expire_at`, or at once for a token with
    /// less left: derived, not stored).
    warned: bool,
    expire_at: Instant,
}

/// Encodes a server frame for a connection.
pub(crate) fn out_frame(
    encoding: Encoding,
    kind: &str,
    id: Option<&str>,
    payload: impl Serialize,
) -> OutFrame {
    let bytes = ServerFrame::new(kind, id, payload).encode(encoding);
    match encoding {
        Encoding::Json => OutFrame::Text(bytes),
        Encoding::Msgpack => OutFrame::Binary(bytes),
    }
}

/// The `error` frame of a refused command: the one place where a
/// [`CommandError`] becomes what a `/ws` client reads, and is counted.
pub(crate) fn error_frame(
    metrics: &Metrics,
    encoding: Encoding,
    id: Option<&str>,
    e: &CommandError,
) -> OutFrame {
    metrics.error(e.code.as_str());
    metrics.message_out("error");
    let mut payload = json!({ "code": e.code, "message": &e.message });
    if let Some(ms) = e.retry_after_ms {
        payload["retry_after_ms"] = json!(ms);
    }
    out_frame(encoding, "error", id, payload)
}

impl Session {
    /// When `token_expiring` is due: [`TOKEN_WARNING`] before the close (in
    /// the past for a token with less left, so it goes at once).
    fn warn_at(&self) -> Instant {
        self.expire_at
            .checked_sub(TOKEN_WARNING)
            .unwrap_or(self.expire_at)
    }

    /// Creates the session and queues the `connected` frame.
    pub fn start(ctx: SessionContext) -> Self {
        let limiter = message_limiter(&ctx.shared.limits);
        let expire_at = expiry_instant(ctx.identity.expires_at);
        let connected = json!({
            "connection_id": &*ctx.connection_id,
            "user": &*ctx.identity.user,
            "protocol": ctx.encoding.protocol_name(),
            "heartbeat_secs": ctx.shared.limits.heartbeat_secs,
            "max_message_bytes": ctx.shared.limits.max_message_bytes,
            "messages_per_minute": ctx.shared.limits.messages_per_minute,
            // With the rate, what a client needs to pace itself (the SDK
            // does, so a reconnect's resubscribes are not dropped).
            "message_burst": ctx.shared.limits.message_burst,
            "expires_at": ctx.identity.expires_at,
        });
        let session = Session {
            limiter,
            dropped_in_a_row: 0,
            warned: false,
            expire_at,
            ctx,
            subscriptions: Vec::new(),
            adopted: None,
            publish_tail: None,
        };
        session.send("connected", None, connected);
        session
    }

    pub(crate) fn send(&self, kind: &str, id: Option<&str>, payload: impl Serialize) {
        self.ctx.shared.metrics.message_out(kind);
        // On overflow the queue itself requests close 4009.
        self.ctx
            .outbound
            .push(out_frame(self.ctx.encoding, kind, id, payload));
    }

    /// Answers a refused command with its `error` frame.
    fn send_error(&self, id: Option<&str>, e: &CommandError) {
        let shared = &self.ctx.shared;
        self.ctx
            .outbound
            .push(error_frame(&shared.metrics, self.ctx.encoding, id, e));
    }

    /// Takes the subscriptions background tasks made into the session's
    /// own list.
    pub(crate) fn adopt(&mut self) {
        if let Some(adopted) = &self.adopted {
            let mut taken = adopted.lock().unwrap_or_else(|e| e.into_inner());
            self.subscriptions.append(&mut taken);
        }
    }

    fn dispatch(&mut self, frame: ClientFrame) {
        self.ctx.shared.metrics.message_in(&frame.kind);
        self.adopt();
        let id = match &frame.id {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                let e = CommandError::new(ErrorCode::InvalidMessage, "\"id\" must be a string");
                return self.send_error(None, &e);
            }
        };
        let result = Command::parse(&frame.kind, frame.payload.clone())
            .map_err(CommandError::from)
            .and_then(|command| self.run(id, command));
        if let Err(e) = result {
            self.send_error(id, &e);
        }
    }
}

impl Session {
    /// A frame's bytes and whether it came as binary.
    fn frame_bytes(msg: &Incoming) -> (&bytes::Bytes, bool) {
        match msg {
            Incoming::Text(b) => (b, false),
            Incoming::Binary(b) => (b, true),
        }
    }
}

impl ConnectionHandler for Session {
    fn on_message(&mut self, msg: Incoming) -> Result<(), CloseCode> {
        if let Err(not_until) = self.limiter.check() {
            self.dropped_in_a_row += 1;
            self.ctx.shared.metrics.violation("rate_limited");
            if self.dropped_in_a_row >= MAX_DROPPED_IN_A_ROW {
                return Err(CloseCode::Policy);
            }
            let wait = retry_after(&not_until);
            let e = CommandError {
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
                ..CommandError::new(
                    ErrorCode::RateLimited,
                    "too many messages; this one was dropped",
                )
            };
            // The dropped command's `id`, so the client's request fails at
            // once instead of waiting for a reply that will never come. The
            // frame is read for nothing else: a dropped frame that is not
            // an envelope is answered without an id.
            let (bytes, _) = Self::frame_bytes(&msg);
            let frame = ClientFrame::decode(self.ctx.encoding, bytes).ok();
            self.send_error(frame.as_ref().and_then(ClientFrame::id_str), &e);
            return Ok(());
        }
        self.dropped_in_a_row = 0;
        let (bytes, binary) = Self::frame_bytes(&msg);
        if binary != self.ctx.encoding.is_binary() {
            self.ctx.shared.metrics.violation("wrong_frame_kind");
            return Err(CloseCode::InvalidMessage);
        }
        match ClientFrame::decode(self.ctx.encoding, bytes) {
            Ok(frame) => {
                self.dispatch(frame);
                Ok(())
            }
            Err(_) => {
                self.ctx.shared.metrics.violation("invalid_frame");
                Err(CloseCode::InvalidMessage)
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(match self.warned {
            true => self.expire_at,
            false => self.warn_at(),
        })
    }

    fn on_deadline(&mut self, now: Instant) -> Result<(), CloseCode> {
        if now >= self.expire_at {
            return Err(CloseCode::TokenExpired);
        }
        if !self.warned && now >= self.warn_at() {
            self.warned = true;
            self.send(
                "token_expiring",
                None,
                json!({ "expires_at": self.ctx.identity.expires_at }),
            );
        }
        Ok(())
    }
}
