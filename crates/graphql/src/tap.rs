//! A GraphQL subscription's hold on a channel: one subscriber in the
//! channel index, like a `/ws` subscription's, that takes the publications
//! themselves ([`FrameFormat::Publication`]) into a bounded queue of its
//! own, read as a stream by the resolver. A reader that falls a whole
//! queue behind ends the stream as a slow consumer, as `/ws` would.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use wsgate_core::auth::Identity;
use wsgate_core::channels::fanout::{FrameFormat, Subscriber};
use wsgate_core::channels::publication::{Filter, Publication, StreamPosition};
use wsgate_core::channels::Channels;
use wsgate_core::connection::outbound::{OutFrame, Outbound};
use wsgate_core::error::CommandError;
use wsgate_protocol::{CloseCode, ErrorCode};

/// What the consumer of a subscription's responses learns from its tap,
/// outside the responses: the publish time of the publication just
/// resolved (for the publish → write latency) and why the stream ended.
#[derive(Default)]
pub(crate) struct TapCell {
    state: Mutex<TapState>,
}

#[derive(Default)]
struct TapState {
    published_at: Option<Instant>,
    ended: Option<CloseCode>,
}

impl TapCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, TapState> {
        // Single stores; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the publication behind the latest response was published.
    pub fn published_at(&self) -> Option<Instant> {
        self.lock().published_at
    }

    /// The close the tap's queue asked for (4009: the subscription could
    /// not keep up, or the broker lost publications), once it ended so.
    pub fn ended(&self) -> Option<CloseCode> {
        self.lock().ended
    }
}

pub(crate) struct Tap {
    channels: Arc<Channels>,
    channel: Arc<str>,
    subscriber: Arc<Subscriber>,
    outbound: Arc<Outbound>,
    queued: VecDeque<OutFrame>,
    cell: Arc<TapCell>,
}

type Ready = Arc<Mutex<Option<oneshot::Sender<Result<bool, CommandError>>>>>;

fn tell(ready: &Ready, result: Result<bool, CommandError>) {
    if let Some(tx) = ready.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = tx.send(result);
    }
}

impl Tap {
    /// Subscribes `identity` to `channel` (authorized as `/ws` does) and
    /// answers once the subscription has its position, with whether the
    /// publications after `since` could all be recovered. Those follow in
    /// the stream, paced to its reader, then the live ones.
    pub async fn open(
        channels: Arc<Channels>,
        identity: Identity,
        channel: String,
        filter: Option<Filter>,
        since: Option<StreamPosition>,
        queue_bytes: usize,
        cell: Arc<TapCell>,
    ) -> Result<(Tap, bool), CommandError> {
        let outbound = Arc::new(Outbound::new(queue_bytes));
        let subscriber = Subscriber::new(outbound.clone(), FrameFormat::Publication, filter);
        let channel: Arc<str> = channel.into();
        let (tx, rx) = oneshot::channel();
        let ready: Ready = Arc::new(Mutex::new(Some(tx)));
        let task = (channels.clone(), channel.clone(), subscriber.clone());
        // A task, as `/ws` subscribes: a recovered backlog is paced to the
        // stream's reader, which reads only once this has answered.
        channels.tasks.spawn(async move {
            let (channels, channel, subscriber) = task;
            let on_reply = ready.clone();
            let reply = move |_: &StreamPosition, recovered: bool| {
                tell(&on_reply, Ok(recovered));
                // Only a marker in the tap's own queue; never written.
                OutFrame::Text(Bytes::new())
            };
            let result = channels
                .subscribe(&identity, None, &channel, &subscriber, since, reply)
                .await;
            if let Err(e) = result {
                tell(&ready, Err(e));
            }
        });
        // Built before waiting, so a resolver dropped meanwhile leaves.
        let tap = Tap {
            channels,
            channel,
            subscriber,
            outbound,
            queued: VecDeque::new(),
            cell,
        };
        match rx.await {
            Ok(Ok(recovered)) => Ok((tap, recovered)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CommandError::new(
                ErrorCode::Unavailable,
                "the subscription ended before it started",
            )),
        }
    }

    /// The publications, until the tap's queue asks to close.
    pub fn into_stream(self) -> BoxStream<'static, Arc<Publication>> {
        stream::unfold(self, |mut tap| async move {
            loop {
                while let Some(frame) = tap.queued.pop_front() {
                    if let OutFrame::Publication(p) = frame {
                        tap.cell.lock().published_at = Some(p.published_at);
                        return Some((p, tap));
                    }
                }
                let (frames, close) = tap.outbound.take();
                if frames.is_empty() {
                    if let Some(code) = close {
                        tap.cell.lock().ended = Some(code);
                        return None;
                    }
                    tap.outbound.ready().await;
                }
                tap.queued = frames;
            }
        })
        .boxed()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Wakes a catch-up waiting for room in this queue, which nobody
        // reads any more, so it ends instead of waiting forever.
        self.outbound.close(CloseCode::GoingAway);
        self.channels.leave(&self.channel, &self.subscriber, None);
    }
}
