//! The run manager: one run per thread, at most `limits.max_runs_per_user`
//! per user, independent of the connection that asked, stopped on request
//! or after `agent.timeout_secs`, recorded in the store. Every event is a
//! publication in `thread:<id>` — what lets every tab see the run and a
//! reconnect recover what it missed — with `data` in the shape of a typed
//! frame: `{"type": "partial_result", "payload": {run_id, thread_id, delta}}`.
//!
//! With several nodes a [`RunRegistry`] holds the cluster's view: a run is
//! claimed there before it starts, so the one-per-thread and per-user rules
//! hold across nodes; a node asks it for runs executing elsewhere
//! (`switch_thread`, `stop_agent`), and a stop for a run on another node
//! goes there as a [`NodeCommand::StopRun`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wsgate_protocol::ErrorCode;

use super::registry::{Claimed, RunClaim, RunRegistry};
use super::{AgentBackend, AgentError, AgentEvent, AgentInput, AgentMessage};
use crate::auth::Identity;
use crate::broker::{BrokerError, NodeCommand};
use crate::channels::publication::{Publication, StreamPosition};
use crate::channels::{Caller, Channels};
use crate::error::CommandError;
use crate::limits::MAX_PAGE;
use crate::threads::{Message, Role, Run, RunStatus, StoreError, Thread, ThreadStore, Threads};

/// Characters of a first message that title the thread it creates.
const TITLE_FROM_CONTENT: usize = 60;
/// Events a backend may produce ahead of their publication.
const EVENT_QUEUE: usize = 64;
/// How often a node that sent a stop to another node looks whether the
/// run has ended, and for how long.
const STOP_POLL: Duration = Duration::from_millis(20);
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A run in progress.
struct Active {
    /// What the cluster's registry is told of the run, and this node's own
    /// record of it: its owner, its id once stored, and once
    /// `agent_started` is published, when it started and the channel
    /// position just before its first event, from which a connection that
    /// arrives mid-run replays it.
    claim: RunClaim,
    stop: CancellationToken,
    /// Cancelled once the run has ended and its last event is published.
    done: CancellationToken,
}

/// This node's hold on a thread from the moment a start reserves it. Its
/// drop — after the run's end, or on an error, a start whose caller went
/// away, or a panic — takes the run out of this node's map, releases its
/// claim in the cluster and wakes whoever waits for the stop, so none of
/// them outlives the run. On the normal paths `Runs::release` has done the
/// first two already (awaited, so a retry finds the thread free).
struct Held {
    runs: Arc<Runs>,
    thread: Arc<str>,
    done: CancellationToken,
    /// Whether the cluster's registry holds a claim of ours.
    claimed: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        let left = self.runs.lock().remove(&self.thread);
        if let (Some(active), Some(cluster), true) = (left, &self.runs.cluster, self.claimed) {
            let cluster = cluster.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = cluster.release(&active.claim).await {
                        tracing::warn!(error = %e, "an abandoned run's claim not released; it expires");
                    }
                });
            }
        }
        self.done.cancel();
    }
}

fn thread_busy() -> CommandError {
    CommandError::conflict("the thread has a run in progress")
}

/// A run in progress as `switch_thread` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRun {
    pub run_id: Arc<str>,
    pub started_at: i64,
    /// Recovering from here replays the run from its first event.
    pub replay_from: StreamPosition,
}

/// How long a run's end is retried while the store is unreachable.
const RECORD_END_FOR: Duration = Duration::from_secs(30);

pub struct Runs {
    pub store: Arc<dyn ThreadStore>,
    pub channels: Arc<Channels>,
    pub backend: Arc<dyn AgentBackend>,
    pub timeout: Duration,
    pub max_per_user: usize,
    /// The cluster's runs, with several nodes; `None` on one node, whose
    /// map below is then the whole picture.
    cluster: Option<Arc<dyn RunRegistry>>,
    /// By thread id: the runs this node executes. A std Mutex: each critical section is a map update or
    /// a scan of the runs in progress, never held across an await.
    active: Mutex<HashMap<Arc<str>, Active>>,
    /// Cancelled when the server shuts down: every run on this node ends
    /// as `failed` with `interrupted`, recorded and announced before the
    /// process exits (see [`Runs::interrupt_all`]).
    shutdown: CancellationToken,
}

/// How a run ended.
enum Outcome {
    Completed,
    Stopped,
    Failed(String),
}

impl Runs {
    pub fn new(
        store: Arc<dyn ThreadStore>,
        channels: Arc<Channels>,
        backend: Arc<dyn AgentBackend>,
        timeout: Duration,
        max_per_user: usize,
        cluster: Option<Arc<dyn RunRegistry>>,
    ) -> Arc<Self> {
        Arc::new(Runs {
            store,
            channels,
            backend,
            timeout,
            max_per_user,
            cluster,
            active: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        })
    }

    /// Ends every run of this node as `failed` / `interrupted`: the server
    /// is stopping. Each is recorded in the store and its thread told, as
    /// the run tasks end; the server waits for them (its grace period)
    /// before closing the store. Without this a run longer than the grace
    /// period was left `running` until the next start.
    pub fn interrupt_all(&self) {
        self.shutdown.cancel();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Active>> {
        // Critical sections are single inserts, removals and scans.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store_failed(&self, e: StoreError) -> CommandError {
        self.channels.metrics.storage_errors.inc();
        CommandError::new(ErrorCode::Unavailable, e.to_string())
    }

    fn cluster_failed(e: BrokerError) -> CommandError {
        CommandError::new(ErrorCode::Unavailable, e.to_string())
    }

    /// Starts a run on `thread_id` as it stands. `conflict` while the
    /// thread has a run or the user has `max_per_user` of them.
    pub async fn start(
        self: &Arc<Self>,
        identity: &Identity,
        thread_id: &str,
    ) -> Result<Run, CommandError> {
        let thread: Arc<str> = thread_id.into();
        let stop = CancellationToken::new();
        let claim = RunClaim {
            claim: uuid::Uuid::new_v4().to_string(),
            owner: identity.user.to_string(),
            thread_id: thread_id.to_owned(),
            run_id: String::new(),
            started: None,
            version: 0,
        };
        // Reserved here before any await, so two starts on this node cannot
        // both pass; then in the cluster, which another node's start may
        // hold.
        let mut held = {
            let mut active = self.lock();
            if active.contains_key(&thread) {
                return Err(thread_busy());
            }
            let mine = active
                .values()
                .filter(|a| a.claim.owner == *identity.user)
                .count();
            if mine >= self.max_per_user {
                return Err(self.user_at_cap());
            }
            let done = CancellationToken::new();
            active.insert(
                thread.clone(),
                Active {
                    claim: claim.clone(),
                    stop: stop.clone(),
                    done: done.clone(),
                },
            );
            Held {
                runs: self.clone(),
                thread: thread.clone(),
                done,
                claimed: false,
            }
        };
        if let Some(cluster) = &self.cluster {
            match cluster.claim(&claim, self.max_per_user).await {
                Ok(Claimed::Yes) => held.claimed = true,
                Ok(Claimed::ThreadBusy) => return Err(thread_busy()),
                Ok(Claimed::UserAtCap) => return Err(self.user_at_cap()),
                Err(e) => return Err(Self::cluster_failed(e)),
            }
        }
        let (run, input) = match self.prepare(identity, thread_id).await {
            Ok(x) => x,
            Err(e) => {
                // Released before answering: a retry finds the thread free.
                self.release(&thread).await;
                return Err(e);
            }
        };
        let recorded = self.lock().get_mut(&thread).map(|a| {
            a.claim.run_id = run.id.clone();
            a.claim.version += 1;
            a.claim.clone()
        });
        if let Some(claim) = recorded {
            self.update_claim(&claim).await;
        }
        let this = self.clone();
        let started = run.clone();
        self.channels.tasks.spawn(async move {
            this.drive(started, input, stop).await;
            this.release(&thread).await;
            // Also what a panic in `drive` drops on its way out.
            drop(held);
        });
        Ok(run)
    }

    fn user_at_cap(&self) -> CommandError {
        CommandError::conflict(format!(
            "at most {} runs at a time per user",
            self.max_per_user
        ))
    }

    /// The run's end, for the cluster (after its last event is out, so a
    /// node waiting for the stop sees everything first) and for this node.
    async fn release(&self, thread: &str) {
        let claim = self.lock().get(thread).map(|a| a.claim.clone());
        if let (Some(cluster), Some(claim)) = (&self.cluster, claim) {
            if let Err(e) = cluster.release(&claim).await {
                // The entry expires by itself once nobody keeps it alive.
                tracing::warn!(thread_id = thread, error = %e, "run end not shared with the cluster");
            }
        }
        self.lock().remove(thread);
    }

    /// Shares what the cluster should know of the run (its id, its start).
    /// Should this fail, the keep-alive writes the claim again.
    async fn update_claim(&self, claim: &RunClaim) {
        if let Some(cluster) = &self.cluster {
            if let Err(e) = cluster.update(claim).await {
                tracing::warn!(thread_id = %claim.thread_id, error = %e, "run not shared with the cluster yet");
            }
        }
    }

    /// A user's message that is to start a run, checked and stored, for
    /// every front end: content non-empty and at most `max_bytes`; the
    /// thread (a new one, titled with the content's start, when `thread_id`
    /// is `None`) must be the user's and have no run in progress — checked
    /// before anything is stored. The caller then calls [`Runs::start`].
    pub async fn accept_message(
        &self,
        threads: &Threads,
        identity: &Identity,
        thread_id: Option<&str>,
        content: &str,
        max_bytes: usize,
    ) -> Result<(Thread, Message), CommandError> {
        if content.trim().is_empty() {
            return Err(CommandError::bad_request(
                "payload.content must not be empty",
            ));
        }
        if content.len() > max_bytes {
            return Err(CommandError::bad_request(format!(
                "payload.content: at most {max_bytes} bytes"
            )));
        }
        let thread = match thread_id {
            Some(t) => threads.get(identity, t).await?,
            None => {
                let title: String = content.chars().take(TITLE_FROM_CONTENT).collect();
                threads.create(identity, Some(&title)).await?
            }
        };
        if self.is_running(&identity.user, &thread.id).await? {
            return Err(thread_busy());
        }
        let message = threads
            .add_message(identity, &thread.id, Role::User, content)
            .await?;
        Ok((thread, message))
    }

    /// Records the run and reads the conversation it starts from.
    async fn prepare(
        &self,
        identity: &Identity,
        thread_id: &str,
    ) -> Result<(Run, AgentInput), CommandError> {
        let messages = self
            .store
            .list_messages(&identity.user, thread_id, MAX_PAGE, None)
            .await
            .map_err(|e| self.store_failed(e))?
            .ok_or_else(|| CommandError::not_found("no such thread"))?;
        let run = self
            .store
            .create_run(&identity.user, thread_id)
            .await
            .map_err(|e| self.store_failed(e))?
            .ok_or_else(|| CommandError::not_found("no such thread"))?;
        let input = AgentInput {
            run_id: run.id.clone(),
            thread_id: thread_id.to_owned(),
            user: identity.user.to_string(),
            messages: messages
                .into_iter()
                .map(|m| AgentMessage {
                    role: m.role.as_str(),
                    content: m.content,
                })
                .collect(),
        };
        Ok((run, input))
    }

    /// Stops the owner's run `run_id` and waits until its last event is
    /// out, wherever it runs. Someone else's run is `not_found`, as a run
    /// that does not run.
    pub async fn stop(&self, identity: &Identity, run_id: &str) -> Result<(), CommandError> {
        let not_found = || CommandError::not_found("no such run in progress");
        if let Some(done) = self.stop_here(&identity.user, run_id) {
            done.cancelled().await;
            return Ok(());
        }
        // A run still starting has no id yet: "" names no run.
        if run_id.is_empty() {
            return Err(not_found());
        }
        let Some(cluster) = &self.cluster else {
            return Err(not_found());
        };
        let claim = cluster
            .by_run(&identity.user, run_id)
            .await
            .map_err(Self::cluster_failed)?
            .ok_or_else(not_found)?;
        let command = NodeCommand::StopRun {
            user: identity.user.to_string(),
            run_id: run_id.to_owned(),
        };
        self.channels
            .broker
            .to_all_nodes(&command)
            .await
            .map_err(Self::cluster_failed)?;
        // The executing node releases the claim once the run's last event
        // is out: that is the answer to wait for.
        let waited = tokio::time::timeout(STOP_WAIT, async {
            loop {
                match cluster.by_thread(&claim.owner, &claim.thread_id).await {
                    Ok(Some(c)) if c.claim == claim.claim => {}
                    Ok(_) => return,
                    Err(_) => {}
                }
                tokio::time::sleep(STOP_POLL).await;
            }
        })
        .await;
        let unconfirmed = || {
            CommandError::new(
                ErrorCode::Unavailable,
                "the node running the agent did not confirm the stop",
            )
        };
        waited.map_err(|_| unconfirmed())?;
        // The claim is gone: ended, or its node crashed and it expired. The
        // store tells which.
        let runs = self
            .store
            .list_runs(&claim.owner, &claim.thread_id)
            .await
            .map_err(|e| self.store_failed(e))?
            .unwrap_or_default();
        match runs.iter().find(|r| r.id == run_id) {
            Some(r) if r.status == RunStatus::Running => Err(unconfirmed()),
            _ => Ok(()),
        }
    }

    /// Stops `user`'s run `run_id` if this node executes it (the node
    /// command a stop on another node sends); what tells when it is over.
    pub fn stop_here(&self, user: &str, run_id: &str) -> Option<CancellationToken> {
        if run_id.is_empty() {
            return None;
        }
        let active = self.lock();
        let run = active
            .values()
            .find(|a| a.claim.run_id == run_id && a.claim.owner == user)?;
        run.stop.cancel();
        Some(run.done.clone())
    }

    /// Whether a run is in progress (or starting) on `owner`'s thread, on
    /// any node.
    pub async fn is_running(&self, owner: &str, thread_id: &str) -> Result<bool, CommandError> {
        if self.lock().contains_key(thread_id) {
            return Ok(true);
        }
        match &self.cluster {
            None => Ok(false),
            Some(c) => c
                .by_thread(owner, thread_id)
                .await
                .map(|c| c.is_some())
                .map_err(Self::cluster_failed),
        }
    }

    /// The run in progress on `owner`'s thread, on any node, once its
    /// first event is out.
    pub async fn active_run(
        &self,
        owner: &str,
        thread_id: &str,
    ) -> Result<Option<ActiveRun>, CommandError> {
        let here = self.lock().get(thread_id).map(|a| a.claim.clone());
        let claim = match (here, &self.cluster) {
            (Some(c), _) => Some(c),
            (None, None) => None,
            (None, Some(cluster)) => cluster
                .by_thread(owner, thread_id)
                .await
                .map_err(Self::cluster_failed)?,
        };
        Ok(claim.and_then(|c| {
            let (started_at, offset, epoch) = c.started?;
            Some(ActiveRun {
                run_id: c.run_id.into(),
                started_at,
                replay_from: StreamPosition {
                    offset,
                    epoch: epoch.into(),
                },
            })
        }))
    }

    /// With several nodes: runs the store has as `running` that no node
    /// holds in the cluster (their node crashed, its claim expired) are
    /// failed as `interrupted`, and their thread is told. One node marks
    /// such runs at start-up instead (`fail_interrupted_runs`). Returns how
    /// many.
    pub async fn fail_orphans(&self) -> Result<usize, CommandError> {
        let Some(cluster) = &self.cluster else {
            return Ok(0);
        };
        let running = self
            .store
            .running_runs()
            .await
            .map_err(|e| self.store_failed(e))?;
        let mut failed = 0;
        for run in running {
            if self.lock().contains_key(run.thread_id.as_str()) {
                continue;
            }
            let held = cluster
                .by_thread(&run.owner, &run.thread_id)
                .await
                .map_err(Self::cluster_failed)?;
            // Held by this run (or by a start on its way to recording it):
            // alive. A newer run's claim on the thread does not keep an
            // older run alive.
            if held.is_some_and(|c| c.run_id == run.id || c.run_id.is_empty()) {
                continue;
            }
            let ended = self
                .store
                .finish_run(&run.id, RunStatus::Failed, Some("interrupted"))
                .await
                .map_err(|e| self.store_failed(e))?;
            if ended {
                failed += 1;
                let payload = json!({ "status": RunStatus::Failed, "error": "interrupted" });
                self.publish(&run, "agent_completed", payload).await;
            }
        }
        Ok(failed)
    }

    /// Publishes one event of the run in `thread:<id>`; the publication,
    /// unless the broker failed.
    async fn publish(&self, run: &Run, kind: &str, mut payload: Value) -> Option<Arc<Publication>> {
        payload["run_id"] = json!(run.id);
        payload["thread_id"] = json!(run.thread_id);
        let data = json!({ "type": kind, "payload": payload });
        let bytes = Bytes::from(data.to_string());
        let channel = format!("thread:{}", run.thread_id);
        match self
            .channels
            .publish(Caller::Server, &channel, bytes, data)
            .await
        {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(run_id = %run.id, kind, error = %e, "run event not published");
                None
            }
        }
    }

    /// Runs the backend to its end, publishing every event in order.
    async fn drive(&self, run: Run, input: AgentInput, stop: CancellationToken) {
        let backend = self.backend.name();
        let began = tokio::time::Instant::now();
        let first = self
            .publish(
                &run,
                "agent_started",
                json!({ "started_at": run.started_at }),
            )
            .await;
        if let Some(p) = first {
            let before = StreamPosition {
                offset: p.offset.saturating_sub(1),
                epoch: p.epoch.clone(),
            };
            let claim = self.lock().get_mut(run.thread_id.as_str()).map(|a| {
                a.claim.started = Some((run.started_at, before.offset, before.epoch.to_string()));
                a.claim.version += 1;
                a.claim.clone()
            });
            if let Some(claim) = claim {
                self.update_claim(&claim).await;
            }
        }
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut reported = false;
        let mut heard = false;
        let outcome = {
            let agent = self.backend.run(input, tx);
            tokio::pin!(agent);
            let mut finished: Option<Result<String, AgentError>> = None;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break Outcome::Stopped,
                    _ = self.shutdown.cancelled() => break Outcome::Failed("interrupted".into()),
                    _ = tokio::time::sleep_until(deadline) => break Outcome::Failed(format!(
                        "timed out after {} s", self.timeout.as_secs()
                    )),
                    event = rx.recv() => match event {
                        Some(event) => {
                            if !heard {
                                heard = true;
                                self.channels
                                    .metrics
                                    .agent_first_event
                                    .observe(began.elapsed().as_secs_f64());
                            }
                            if let Err(e) = self.forward(&run, event, &mut reported).await {
                                break Outcome::Failed(e);
                            }
                        }
                        // Every event is out once the backend dropped its
                        // sender: the run's end follows them.
                        None => break match finished.take() {
                            Some(Ok(_)) if reported => Outcome::Completed,
                            Some(Ok(_)) => Outcome::Failed("the agent sent no final report".into()),
                            Some(Err(e)) => Outcome::Failed(e.to_string()),
                            None => Outcome::Failed("the agent ended without an answer".into()),
                        },
                    },
                    result = &mut agent, if finished.is_none() => finished = Some(result),
                }
            }
            // Leaving this block drops the backend's future: a stopped or
            // timed-out run's upstream request goes at once.
        };
        let (status, error) = match &outcome {
            Outcome::Completed => (RunStatus::Completed, None),
            Outcome::Stopped => (RunStatus::Stopped, None),
            Outcome::Failed(e) => (RunStatus::Failed, Some(e.as_str())),
        };
        self.record_end(&run.id, status, error).await;
        let mut completed = json!({ "status": status });
        if let Some(e) = error {
            completed["error"] = json!(e);
        }
        self.channels
            .metrics
            .run_ended(backend, status.as_str(), began.elapsed().as_secs_f64());
        tracing::info!(run_id = %run.id, backend, status = ?status, "run ended");
        self.publish(&run, "agent_completed", completed).await;
    }

    /// Records how a run ended, retrying while the store fails: a run left
    /// `running` stays so for every reader until the next start (the
    /// chaos test cut PostgreSQL under load and found runs stuck). Gives
    /// up after [`RECORD_END_FOR`]; the next start, or another node's
    /// orphan check, then marks it `interrupted`.
    async fn record_end(&self, run_id: &str, status: RunStatus, error: Option<&str>) {
        let give_up = tokio::time::Instant::now() + RECORD_END_FOR;
        let mut wait = Duration::from_millis(50);
        loop {
            let Err(e) = self.store.finish_run(run_id, status, error).await else {
                return;
            };
            self.channels.metrics.storage_errors.inc();
            if tokio::time::Instant::now() + wait > give_up {
                tracing::warn!(run_id, error = %e, "run end not recorded; the next start marks it");
                return;
            }
            tracing::debug!(run_id, error = %e, "run end not recorded yet; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    /// Publishes one backend event; the final report is stored as the
    /// assistant message first, so `final_report` carries its id.
    async fn forward(
        &self,
        run: &Run,
        event: AgentEvent,
        reported: &mut bool,
    ) -> Result<(), String> {
        let kind = event.kind();
        let mut payload = serde_json::to_value(&event)
            .map(|mut v| v["payload"].take())
            .unwrap_or(Value::Null);
        if let AgentEvent::FinalReport { content } = &event {
            let message = self
                .store
                .add_message(&run.owner, &run.thread_id, Role::Assistant, content)
                .await
                .map_err(|e| {
                    self.channels.metrics.storage_errors.inc();
                    e.to_string()
                })?
                .ok_or("the thread was deleted during the run")?;
            payload["message_id"] = json!(message.id);
            *reported = true;
        }
        self.publish(run, kind, payload).await;
        Ok(())
    }
}
