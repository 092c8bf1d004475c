//! The bounded outbound queue of one connection.
//!
//! Producers (the session's replies, channel fan-out) push encoded frames
//! without ever waiting. When the queued bytes would exceed the limit, the
//! frame is dropped and the connection is marked for close 4009: a slow
//! reader is disconnected instead of slowing publishers or growing memory,
//! and it recovers missed publications on reconnect. The transport drains the
//! queue and writes everything that is queued with one flush.
//!
//! Bulk answers of one connection's own asking (a recovered backlog, history
//! pages) are different: they may be far larger than the queue, and the
//! client is not slow for asking. Those producers wait for room instead
//! ([`Outbound::push_paced`]), so the connection reads them at its own pace.
//!
//! An idle queue holds no buffer: `VecDeque::new` does not allocate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use wsgate_protocol::CloseCode;

use crate::channels::publication::Publication;
use crate::metrics::Metrics;

/// One frame to send, already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// A text frame; the bytes are valid UTF-8 (they come from a JSON
    /// encoder or from a text frame the client sent).
    Text(Bytes),
    Binary(Bytes),
    /// The same frame queued for many connections (a publication).
    Shared(Arc<SharedFrame>),
    /// A publication itself, for a consumer inside the server that turns it
    /// into frames of its own (a GraphQL subscription resolves it first). A
    /// transport that meets one writes its JSON `message` frame.
    Publication(Arc<Publication>),
}

/// A frame written to many connections: a publication's bytes, plus their
/// compressed form, made by the first connection that needs it and reused
/// by the others. (permessage-deflate without context takeover turns the
/// same bytes into the same output, so a publication is compressed once,
/// not once per subscriber.)
#[derive(Debug)]
pub struct SharedFrame {
    bytes: Bytes,
    binary: bool,
    compressed: OnceLock<Option<Bytes>>,
}

impl SharedFrame {
    /// A text frame; `bytes` must be UTF-8.
    pub fn text(bytes: Bytes) -> Arc<Self> {
        Arc::new(SharedFrame {
            bytes,
            binary: false,
            compressed: OnceLock::new(),
        })
    }

    pub fn binary(bytes: Bytes) -> Arc<Self> {
        Arc::new(SharedFrame {
            bytes,
            binary: true,
            compressed: OnceLock::new(),
        })
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The compressed form: `compress` runs for the first caller only, and
    /// its answer (`None`: send uncompressed) is what every caller gets.
    pub fn compressed(&self, compress: impl FnOnce(&[u8]) -> Option<Bytes>) -> Option<Bytes> {
        self.compressed
            .get_or_init(|| compress(&self.bytes))
            .clone()
    }
}

impl PartialEq for SharedFrame {
    fn eq(&self, other: &Self) -> bool {
        self.binary == other.binary && self.bytes == other.bytes
    }
}

impl Eq for SharedFrame {}

impl OutFrame {
    pub fn len(&self) -> usize {
        match self {
            OutFrame::Text(b) | OutFrame::Binary(b) => b.len(),
            OutFrame::Shared(f) => f.bytes.len(),
            OutFrame::Publication(p) => p.data.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full: the frame was dropped and close 4009 requested.
    Overflow,
    /// The connection is closing; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<OutFrame>,
    /// Queued bytes; at most `limit`. (Counters are u32, as is the
    /// limit: the queue is in every connection, and 4 GiB is beyond any
    /// sane outbound limit.)
    bytes: u32,
    close: Option<CloseCode>,
    /// Publish time of the oldest queued publication: one latency sample per
    /// batch instead of one per frame keeps the histogram off the hot path.
    oldest_published: Option<Instant>,
    /// A paced producer waits for the next drain. Read under the lock
    /// `take` holds anyway, so a drain nobody waits for costs nothing more.
    room_wanted: bool,
    /// Something other than a publication is queued (a reply, an error, a
    /// history page): the transport writes it at once instead of waiting
    /// to batch it with publications.
    urgent: bool,
}

pub struct Outbound {
    // A std Mutex: every critical section is a few pointer moves and never
    // awaits, so an async mutex would only add cost.
    state: Mutex<State>,
    /// The one task that drains the queue (the transport), woken when
    /// frames or a close request arrive. A waker here rather than a
    /// `Notify`: the writer then polls [`Outbound::poll_ready`] instead of
    /// keeping a 64-byte `Notified` future in every connection.
    writer: AtomicWaker,
    /// Set by a wake, cleared by the `poll_ready` that sees it.
    signaled: AtomicBool,
    /// Wakes paced producers ([`Outbound::push_paced`]) after a drain or a
    /// close request.
    room: Notify,
    limit: u32,
    /// Queued bytes that make a batch worth writing without waiting for the
    /// transport's write delay: frames held back to be batched must never
    /// be what fills the queue of a client that reads fine.
    batch_bytes: u32,
    latency: Option<Arc<Metrics>>,
}

/// Upper bound of `batch_bytes` (one tungstenite write buffer).
const MAX_BATCH_BYTES: usize = 64 * 1024;

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("limit", &self.limit)
            .finish()
    }
}

impl Outbound {
    pub fn new(limit_bytes: usize) -> Self {
        Outbound {
            state: Mutex::new(State::default()),
            writer: AtomicWaker::new(),
            signaled: AtomicBool::new(false),
            room: Notify::new(),
            limit: u32::try_from(limit_bytes).unwrap_or(u32::MAX),
            batch_bytes: (limit_bytes / 4).clamp(1, MAX_BATCH_BYTES) as u32,
            latency: None,
        }
    }

    /// A queue that samples publish → write latency into `metrics`.
    pub fn with_latency(limit_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Outbound {
            latency: Some(metrics),
            ..Self::new(limit_bytes)
        }
    }

    /// Pushes a publication's frame, remembering when it was published.
    pub fn push_published(&self, frame: OutFrame, published_at: Instant) -> Pushed {
        self.push_inner(frame, Some(published_at))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent (pushes
        // and drains are single moves), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, frame: OutFrame) -> Pushed {
        self.push_inner(frame, None)
    }

    fn push_inner(&self, frame: OutFrame, published_at: Option<Instant>) -> Pushed {
        let state = self.lock();
        if state.close.is_some() {
            return Pushed::Closed;
        }
        self.push_locked(state, frame, published_at)
    }

    /// Queues `frame` on a queue that is not closing, or overflows.
    /// Always inlined: it is the fan-out's per-delivery path, and as a call
    /// it cost ~19 more instructions per delivery (callgrind).
    #[inline(always)]
    fn push_locked(
        &self,
        mut state: std::sync::MutexGuard<'_, State>,
        frame: OutFrame,
        published_at: Option<Instant>,
    ) -> Pushed {
        let len = frame.len();
        // `bytes` never exceeds `limit`: the room left cannot underflow.
        if len > (self.limit - state.bytes) as usize {
            state.close = Some(CloseCode::SlowConsumer);
            state.frames.clear();
            state.bytes = 0;
            drop(state);
            self.wake_writer();
            self.room.notify_waiters();
            return Pushed::Overflow;
        }
        let before = state.bytes;
        // Fits in u32: at most `limit` after the check above.
        state.bytes += len as u32;
        state.frames.push_back(frame);
        let batch_full = before < self.batch_bytes && state.bytes >= self.batch_bytes;
        let now_urgent = match published_at {
            Some(at) => {
                if self.latency.is_some() {
                    state.oldest_published.get_or_insert(at);
                }
                false
            }
            None => !std::mem::replace(&mut state.urgent, true),
        };
        let first = state.frames.len() == 1;
        drop(state);
        // Only the first frame of a batch needs to wake the writer, and the
        // one that makes the batch full or urgent (the writer may be
        // waiting to batch publications); the others are picked up by the
        // same drain.
        if first || batch_full || now_urgent {
            self.wake_writer();
        }
        Pushed::Queued
    }

    /// The bytes a paced producer lets queue up before it waits: half the
    /// limit, so publications of the connection's other subscriptions, which
    /// never wait, still find room behind a backlog.
    pub fn paced_budget(&self) -> usize {
        (self.limit as usize / 2).max(1)
    }

    /// The most bytes this queue holds.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Pushes `frame` once the queued bytes plus the frame fit within
    /// `budget`, or the queue is empty (a frame bigger than the budget still
    /// goes, alone). Checking and queueing happen under one lock, so paced
    /// producers of one connection never overshoot the budget together.
    /// Returns [`Pushed::Closed`] as soon as the connection is closing.
    ///
    /// Waits as long as the transport does not drain: a client that stops
    /// reading holds this producer until its heartbeat times out and the
    /// session's end closes the queue.
    pub async fn push_paced(&self, frame: OutFrame, budget: usize) -> Pushed {
        loop {
            // Registered before the check, so a drain between the check and
            // the await still wakes this producer.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.lock();
                if state.close.is_some() {
                    return Pushed::Closed;
                }
                if state.frames.is_empty() || state.bytes as usize + frame.len() <= budget {
                    return self.push_locked(state, frame, None);
                }
                state.room_wanted = true;
            }
            room.await;
        }
    }

    /// Asks the connection to close with `code`. The first request wins;
    /// frames already queued are still written before the close frame.
    pub fn close(&self, code: CloseCode) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(code);
        }
        drop(state);
        self.wake_writer();
        self.room.notify_waiters();
    }

    /// Takes every queued frame, and the close request if any. The queue's
    /// allocation leaves with the frames, so an idle connection keeps no
    /// buffer on either side.
    pub fn take(&self) -> (VecDeque<OutFrame>, Option<CloseCode>) {
        let mut state = self.lock();
        state.bytes = 0;
        state.urgent = false;
        if let (Some(at), Some(m)) = (state.oldest_published.take(), &self.latency) {
            m.observe_publish_latency(at.elapsed().as_secs_f64());
        }
        let taken = (std::mem::take(&mut state.frames), state.close);
        let wake = std::mem::take(&mut state.room_wanted);
        drop(state);
        if wake {
            self.room.notify_waiters();
        }
        taken
    }

    fn wake_writer(&self) {
        self.signaled.store(true, Ordering::Release);
        self.writer.wake();
    }

    /// Ready when frames or a close request may be waiting (once per
    /// wake). One task at a time may wait: the queue's writer.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Checked before and after registering: a wake in between is
        // either seen here or wakes the waker just registered.
        if self.signaled.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.writer.register(cx.waker());
        if self.signaled.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Lets go of the writer's waker (the writer is gone): a waker keeps
    /// its task's memory alive as long as anyone holds it.
    pub fn detach_writer(&self) {
        drop(self.writer.take());
    }

    /// Completes when frames or a close request may be waiting.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Whether frames are waiting.
    pub fn has_frames(&self) -> bool {
        !self.lock().frames.is_empty()
    }

    /// Whether what is queued is to be written without waiting to batch
    /// more: a full batch, or anything but publications (a reply).
    pub fn write_now(&self) -> bool {
        let state = self.lock();
        state.urgent || state.bytes >= self.batch_bytes
    }

    /// The close request, if any, without draining.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.lock().close
    }

    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        self.lock().bytes as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_frame_is_compressed_once() {
        let frame = SharedFrame::text(Bytes::from_static(b"{\"type\":\"message\"}"));
        let calls = std::cell::Cell::new(0);
        let compress = |b: &[u8]| {
            calls.set(calls.get() + 1);
            Some(Bytes::copy_from_slice(&b[..4]))
        };
        let first = frame.compressed(compress);
        let second = frame.compressed(|_| panic!("made once"));
        assert_eq!(first, second);
        assert_eq!(first.as_deref(), Some(&b"{\"ty"[..]));
        assert_eq!(calls.get(), 1);
        // "Not worth compressing" is remembered too.
        let plain = SharedFrame::binary(Bytes::from_static(b"x"));
        assert_eq!(plain.compressed(|_| None), None);
        assert_eq!(plain.compressed(|_| panic!("made once")), None);
    }

    fn text(n: usize) -> OutFrame {
        OutFrame::Text(Bytes::from(vec![b'a'; n]))
    }

    #[test]
    fn overflow_drops_and_requests_slow_consumer_close() {
        let q = Outbound::new(100);
        assert_eq!(q.push(text(60)), Pushed::Queued);
        assert_eq!(q.push(text(60)), Pushed::Overflow);
        assert_eq!(q.push(text(1)), Pushed::Closed);
        let (out, close) = q.take();
        assert_eq!(close, Some(CloseCode::SlowConsumer));
        assert!(out.is_empty());
    }

    #[test]
    fn drain_frees_the_budget() {
        let q = Outbound::new(100);
        for _ in 0..2 {
            assert_eq!(q.push(text(60)), Pushed::Queued);
            let (out, close) = q.take();
            assert_eq!(close, None);
            assert_eq!(out.len(), 1);
            assert_eq!(q.queued_bytes(), 0);
        }
    }

    #[test]
    fn first_close_wins_and_queued_frames_survive() {
        let q = Outbound::new(100);
        q.push(text(5));
        q.close(CloseCode::Disconnected);
        q.close(CloseCode::GoingAway);
        let (out, close) = q.take();
        assert_eq!(close, Some(CloseCode::Disconnected));
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn paced_push_waits_for_a_drain() {
        let q = Arc::new(Outbound::new(100));
        let budget = q.paced_budget();
        assert_eq!(budget, 50);
        // An empty queue takes a frame bigger than the budget.
        assert_eq!(q.push_paced(text(60), budget).await, Pushed::Queued);
        let q2 = q.clone();
        let paced = tokio::spawn(async move { q2.push_paced(text(30), budget).await });
        tokio::task::yield_now().await;
        assert!(!paced.is_finished(), "60 + 30 queued would exceed 50");
        // Frames that never wait still fit beside the waiting one.
        assert_eq!(q.push(text(10)), Pushed::Queued);
        assert_eq!(q.take().0.len(), 2);
        assert_eq!(paced.await.unwrap(), Pushed::Queued);
        assert_eq!(q.queued_bytes(), 30);
        // Within the budget, no waiting.
        assert_eq!(q.push_paced(text(20), budget).await, Pushed::Queued);
    }

    #[tokio::test]
    async fn paced_push_ends_when_the_connection_closes() {
        let q = Arc::new(Outbound::new(100));
        q.push(text(50));
        let q2 = q.clone();
        let paced = tokio::spawn(async move { q2.push_paced(text(50), 50).await });
        tokio::task::yield_now().await;
        assert!(!paced.is_finished());
        q.close(CloseCode::GoingAway);
        assert_eq!(paced.await.unwrap(), Pushed::Closed);
        let (out, close) = q.take();
        assert_eq!((out.len(), close), (1, Some(CloseCode::GoingAway)));
    }

    #[tokio::test]
    async fn push_wakes_the_writer() {
        let q = std::sync::Arc::new(Outbound::new(100));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.ready().await });
        q.push(text(1));
        waiter.await.unwrap();
    }
}
