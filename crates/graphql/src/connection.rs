//! One `/graphql` WebSocket connection: the graphql-transport-ws state
//! machine. `connection_init` within `graphql.init_timeout` (else 4408),
//! carrying a valid token unless the upgrade had one (else 4403); no
//! `connection_ack` before both the token and the connection caps passed;
//! `subscribe` before the ack closes 4401, a second init 4429, an id in use
//! 4409, anything not of the protocol 4400; the token's `exp` closes 4001
//! as on `/ws`. Each operation runs in a task of its own, ended by the
//! client's `complete` or by the connection's end.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::StreamExt;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use wsgate_core::auth::{expiry_instant, Identity};
use wsgate_core::connection::handler::{ConnectionHandler, Incoming};
use wsgate_core::connection::outbound::{OutFrame, Outbound};
use wsgate_core::error::CommandError;
use wsgate_core::limits::MAX_DROPPED_IN_A_ROW;
use wsgate_core::session::{message_limiter, retry_after, MessageLimiter};
use wsgate_protocol::{CloseCode, ErrorCode};

use crate::error::{error_response, with_codes};
use crate::operation::{Operation, OperationKind};
use crate::protocol::{self, init_token, ClientMessage};
use crate::pump::{errors_json, Item, Pump, Recipient};
use crate::schema::{Graphql, Viewer};
use crate::subscription::{Mode, Probe};
use crate::tap::TapCell;

/// What the server checks when a token arrives in `connection_init`: the
/// per-user cap, on this node and across nodes; `Err` names the refusal
/// (an audit reason).
pub trait Gate: Send + Sync + 'static {
    fn admit<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send + 'a>>;
}

/// State the connection's tasks share with it.
struct Shared {
    gql: Arc<Graphql>,
    outbound: Arc<Outbound>,
    connection_id: Arc<str>,
    /// The caller and when their token expires: set once, from the
    /// upgrade's token or at the ack. Read on every frame (the transport
    /// asks for the deadline), so a lock-free cell, never a copy.
    viewer: OnceLock<(Identity, Instant)>,
    /// `connection_ack` sent: the viewer may be known before (a token on
    /// the upgrade), but operations wait for the ack.
    acked: AtomicBool,
    ops: Mutex<HashMap<String, Op>>,
    next_op: AtomicU64,
}

struct Op {
    seq: u64,
    /// A subscription's task, stopped by `complete` or the connection's
    /// end. Queries and mutations have none: they run to their end (a
    /// mutation half-done would leave, say, a stored message without its
    /// run), only their answer is dropped.
    abort: Option<AbortHandle>,
    /// Set by `complete`: nothing more is sent for this id.
    completed: Arc<AtomicBool>,
}

impl Op {
    fn stop(self) {
        self.completed.store(true, Ordering::Release);
        if let Some(task) = self.abort {
            task.abort();
        }
    }
}

impl Shared {
    fn ops(&self) -> std::sync::MutexGuard<'_, HashMap<String, Op>> {
        // Inserts and removals only.
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The viewer, once acknowledged.
    fn acked_viewer(&self) -> Option<&(Identity, Instant)> {
        self.viewer
            .get()
            .filter(|_| self.acked.load(Ordering::Acquire))
    }

    /// Names the viewer (a token from `connection_init`) and acknowledges.
    fn acknowledge(&self, identity: Identity) {
        let expires = expiry_instant(identity.expires_at);
        // Set at most once: a second init closes 4429 before it gets here.
        let _ = self.viewer.set((identity, expires));
        self.ack();
    }

    fn ack(&self) {
        self.acked.store(true, Ordering::Release);
        self.outbound.push(OutFrame::Text(protocol::ack()));
    }

    /// Forgets operation `id` if it is still the one numbered `seq` (the
    /// client may have reused the id after `complete`).
    fn finished(&self, id: &str, seq: u64) {
        let mut ops = self.ops();
        if ops.get(id).is_some_and(|op| op.seq == seq) {
            ops.remove(id);
        }
    }

    /// An `error` frame for operation `id` with one error.
    fn refuse(&self, id: &str, e: CommandError) {
        let response = with_codes(error_response(e), self.gql.metrics());
        self.outbound
            .push(OutFrame::Text(protocol::error(id, &errors_json(&response))));
    }
}

pub struct GraphqlConnection {
    shared: Arc<Shared>,
    gate: Arc<dyn Gate>,
    init_deadline: Instant,
    init_received: bool,
    limiter: MessageLimiter,
    dropped_in_a_row: u32,
}

impl GraphqlConnection {
    /// `identity` is the upgrade's token's, when it had one (the caps were
    /// then checked before the upgrade).
    pub fn start(
        gql: Arc<Graphql>,
        outbound: Arc<Outbound>,
        connection_id: Arc<str>,
        identity: Option<Identity>,
        gate: Arc<dyn Gate>,
    ) -> Self {
        let init_deadline = Instant::now() + gql.settings.init_timeout;
        let limiter = message_limiter(&gql.services.limits);
        let viewer = OnceLock::new();
        if let Some(i) = identity {
            let expires = expiry_instant(i.expires_at);
            let _ = viewer.set((i, expires));
        }
        GraphqlConnection {
            shared: Arc::new(Shared {
                gql,
                outbound,
                connection_id,
                viewer,
                acked: AtomicBool::new(false),
                ops: Mutex::new(HashMap::new()),
                next_op: AtomicU64::new(1),
            }),
            gate,
            init_deadline,
            init_received: false,
            limiter,
            dropped_in_a_row: 0,
        }
    }

    fn on_init(&mut self, payload: Option<&serde_json::Value>) -> Result<(), CloseCode> {
        if std::mem::replace(&mut self.init_received, true) {
            return Err(CloseCode::GraphqlTooManyInit);
        }
        let shared = &self.shared;
        if shared.viewer.get().is_some() {
            shared.ack();
            return Ok(());
        }
        let services = &shared.gql.services;
        let identity = match init_token(payload)
            .ok_or(wsgate_core::auth::AuthError::Missing)
            .and_then(|t| services.verifier.verify(t))
        {
            Ok(identity) => identity,
            Err(e) => {
                refused(&services.metrics, e.reason());
                audit_init(&shared.connection_id, None, Err(e.reason()));
                return Err(CloseCode::GraphqlForbidden);
            }
        };
        let (shared, gate) = (self.shared.clone(), self.gate.clone());
        shared
            .gql
            .services
            .channels
            .tasks
            .clone()
            .spawn(async move {
                match gate.admit(&identity).await {
                    Ok(()) => {
                        audit_init(&shared.connection_id, Some(&identity), Ok(()));
                        shared.acknowledge(identity);
                    }
                    Err(reason) => {
                        refused(&shared.gql.services.metrics, reason);
                        audit_init(&shared.connection_id, Some(&identity), Err(reason));
                        shared.outbound.close(CloseCode::GraphqlForbidden);
                    }
                }
            });
        Ok(())
    }

    fn on_subscribe(&mut self, id: String, op: Operation) -> Result<(), CloseCode> {
        let shared = self.shared.clone();
        let Some((identity, _)) = shared.acked_viewer() else {
            return Err(CloseCode::GraphqlUnauthorized);
        };
        let identity = identity.clone();
        if shared.ops().contains_key(&id) {
            return Err(CloseCode::GraphqlDuplicateId);
        }
        let limits = &shared.gql.services.limits;
        if let Err(e) = op
            .check_size(limits.max_message_bytes)
            .and_then(|()| op.check_maps())
        {
            shared.refuse(&id, e);
            return Ok(());
        }
        let shape = op.shape();
        let kind = shape.map(|(kind, _)| kind);
        let subscription = kind == Some(OperationKind::Subscription);
        // Each root field of a mutation is a command, as on /ws.
        let commands = match shape {
            Some((OperationKind::Mutation, fields)) => fields.max(1),
            _ => 1,
        };
        if let Err(e) = self.admit_rate(commands) {
            self.dropped_in_a_row += 1;
            shared.gql.services.metrics.violation("rate_limited");
            if self.dropped_in_a_row >= MAX_DROPPED_IN_A_ROW {
                return Err(CloseCode::Policy);
            }
            shared.refuse(&id, e);
            return Ok(());
        }
        self.dropped_in_a_row = 0;
        if let Some((OperationKind::Subscription, fields)) = shape {
            if fields != 1 {
                shared.refuse(
                    &id,
                    CommandError::bad_request(
                        "a subscription selects exactly one root field; subscribe once per stream",
                    ),
                );
                return Ok(());
            }
        }
        let mut ops = shared.ops();
        let running = ops
            .values()
            .filter(|o| o.abort.is_some() == subscription)
            .count();
        if running >= limits.max_subscriptions {
            drop(ops);
            let what = if subscription {
                "subscriptions"
            } else {
                "operations in flight"
            };
            shared.refuse(
                &id,
                CommandError::bad_request(format!(
                    "{what} limit reached (limits.max_subscriptions = {}): complete one first",
                    limits.max_subscriptions
                )),
            );
            return Ok(());
        }
        if let Some(kind) = kind {
            shared.gql.count(kind);
        }
        let seq = shared.next_op.fetch_add(1, Ordering::Relaxed);
        let completed = Arc::new(AtomicBool::new(false));
        let recipient = Recipient::new(id.clone(), shared.outbound.clone(), completed.clone());
        let run = run(
            shared.clone(),
            identity,
            id.clone(),
            op,
            subscription,
            recipient,
            seq,
        );
        let abort = if subscription {
            Some(tokio::spawn(run).abort_handle())
        } else {
            // Tracked, so shutdown waits for a mutation in flight.
            shared.gql.services.channels.tasks.spawn(run);
            None
        };
        ops.insert(
            id,
            Op {
                seq,
                abort,
                completed,
            },
        );
        Ok(())
    }

    /// Takes `n` messages' worth from the connection's bucket, or says
    /// when to try again.
    fn admit_rate(&self, n: usize) -> Result<(), CommandError> {
        let burst = self.shared.gql.services.limits.message_burst;
        let too_many = || {
            CommandError::bad_request(format!(
                "an operation may hold at most limits.message_burst ({burst}) mutations"
            ))
        };
        let n = u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(too_many)?;
        match self.limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(CommandError {
                retry_after_ms: Some(retry_after(&not_until).as_millis().max(1) as u64),
                ..CommandError::new(
                    ErrorCode::RateLimited,
                    "too many operations; this one was dropped",
                )
            }),
            Err(_) => Err(too_many()),
        }
    }
}

/// A refused `connection_init`, counted with the refused handshakes by
/// reason (the upgrade itself was counted accepted).
fn refused(metrics: &wsgate_core::metrics::Metrics, reason: &'static str) {
    wsgate_core::metrics::Metrics::count(&metrics.handshake_rejections, "reason", reason);
}

fn audit_init(connection_id: &str, identity: Option<&Identity>, result: Result<(), &'static str>) {
    let user = identity.map(|i| &*i.user);
    match result {
        Ok(()) => tracing::info!(
            target: "wsgate::audit",
            event = "graphql_init",
            result = "accepted",
            connection_id,
            user,
        ),
        Err(reason) => tracing::info!(
            target: "wsgate::audit",
            event = "graphql_init",
            result = "rejected",
            reason,
            connection_id,
            user,
        ),
    }
}

/// Runs one operation to its end.
async fn run(
    shared: Arc<Shared>,
    identity: Identity,
    id: String,
    op: Operation,
    subscription: bool,
    recipient: Recipient,
    seq: u64,
) {
    let gql = shared.gql.clone();
    if subscription {
        subscribe(&gql, identity, &op, recipient).await;
    } else {
        let responses = gql
            .schema
            .execute_stream(op.request().data(Viewer(identity)));
        own_execution(&gql, responses, &TapCell::default(), &recipient).await;
    }
    shared.finished(&id, seq);
}

/// A subscription: authorized for this subscriber, then joined to the
/// identical ones' execution (or run on its own).
async fn subscribe(gql: &Arc<Graphql>, identity: Identity, op: &Operation, recipient: Recipient) {
    let probe = Arc::new(Probe::default());
    let mut check = gql.schema.execute_stream(
        op.request()
            .data(Viewer(identity.clone()))
            .data(Mode::Probe(probe.clone())),
    );
    if let Some(response) = check.next().await {
        let response = with_codes(response, gql.metrics());
        if !response.errors.is_empty() {
            recipient.error(&errors_json(&response));
            return;
        }
    }
    drop(check);
    let live = || {
        let cell = Arc::new(TapCell::default());
        let responses = gql.schema.execute_stream(
            op.request()
                .data(Viewer(identity.clone()))
                .data(Mode::Live(cell.clone())),
        );
        (responses, cell)
    };
    if gql.settings.shared_resolution && !probe.own_stream.load(Ordering::Relaxed) {
        let membership = gql.groups.join(op.share_key(), recipient, live);
        membership.ended().await;
    } else {
        let (responses, cell) = live();
        own_execution(gql, responses, &cell, &recipient).await;
    }
}

/// An execution with one subscriber, who takes its results at its pace.
async fn own_execution(
    gql: &Graphql,
    responses: futures_util::stream::BoxStream<'static, async_graphql::Response>,
    cell: &TapCell,
    recipient: &Recipient,
) {
    let metrics = gql.metrics();
    let mut pump = Pump::new(responses);
    while let Some(item) = pump.next(cell, metrics).await {
        if let Item::Error(_) = item {
            recipient.send_paced(&item).await;
            return;
        }
        if !recipient.send_paced(&item).await {
            return;
        }
        metrics.deliveries.inc();
    }
    recipient.end(cell.ended());
}

impl ConnectionHandler for GraphqlConnection {
    fn on_message(&mut self, msg: Incoming) -> Result<(), CloseCode> {
        let Incoming::Text(text) = msg else {
            self.shared
                .gql
                .services
                .metrics
                .violation("wrong_frame_kind");
            return Err(CloseCode::GraphqlBadMessage);
        };
        let msg = match ClientMessage::parse(&text) {
            Ok(msg) => msg,
            Err(_) => {
                self.shared.gql.services.metrics.violation("invalid_frame");
                return Err(CloseCode::GraphqlBadMessage);
            }
        };
        match msg {
            ClientMessage::ConnectionInit { payload } => self.on_init(payload.as_ref()),
            ClientMessage::Ping { payload } => {
                self.shared
                    .outbound
                    .push(OutFrame::Text(protocol::pong(payload)));
                Ok(())
            }
            ClientMessage::Pong { .. } => Ok(()),
            ClientMessage::Subscribe { id, payload } => self.on_subscribe(id, payload),
            ClientMessage::Complete { id } => {
                if let Some(op) = self.shared.ops().remove(&id) {
                    op.stop();
                }
                Ok(())
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.shared.acked_viewer() {
            Some((_, expires)) => Some(*expires),
            None => Some(self.init_deadline),
        }
    }

    fn on_deadline(&mut self, now: Instant) -> Result<(), CloseCode> {
        if let Some((_, expires)) = self.shared.acked_viewer() {
            if now >= *expires {
                return Err(CloseCode::TokenExpired);
            }
            return Ok(());
        }
        if now < self.init_deadline {
            return Ok(());
        }
        if self.init_received {
            // The token was good; the caps are being asked (the broker's
            // answer is bounded): look again shortly.
            self.init_deadline = now + std::time::Duration::from_secs(1);
            return Ok(());
        }
        self.shared
            .gql
            .services
            .metrics
            .violation("graphql_init_timeout");
        Err(CloseCode::GraphqlInitTimeout)
    }
}

impl Drop for GraphqlConnection {
    fn drop(&mut self) {
        for (_, op) in self.shared.ops().drain() {
            op.stop();
        }
    }
}
