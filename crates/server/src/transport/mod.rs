//! The WebSocket transport: one task per connection that reads frames,
//! enforces frame size and heartbeats, feeds a [`ConnectionHandler`], and
//! writes the handler's outbound queue in batches.
//!
//! The loop is generic over the socket (any `Stream + Sink` of tungstenite
//! messages: [`codec::Frames`] in the server), so it is the same code for
//! `/ws` and for the Autobahn echo example.

pub mod codec;
pub mod http_io;
pub mod scheduler;
pub mod timers;
pub mod upgrade;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio::time::{Instant, Sleep};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, Utf8Bytes};
use tungstenite::{Error as WsError, Message};
use wsgate_core::connection::handler::{ConnectionHandler, Incoming};
use wsgate_core::connection::outbound::{OutFrame, Outbound};
use wsgate_core::limits::CLOSE_LINGER;
use wsgate_protocol::{CloseCode, Encoding};

use wsgate_deflate::Negotiated;

use self::codec::Frames;
use self::scheduler::WriteScheduler;
use self::timers::{Tick, Timers};

/// Limits the transport enforces on one connection.
#[derive(Debug, Clone, Copy)]
pub struct TransportLimits {
    pub max_message_bytes: usize,
    pub outbound_queue_bytes: usize,
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
    /// The longest a publication waits to share a write, on a connection
    /// receiving a burst (see [`scheduler`]); replies and calm streams are
    /// written at once.
    pub write_delay: Duration,
}

impl TransportLimits {
    /// The transport's part of `[limits]`, as durations, plus the write
    /// delay of `[transport]`: derived in this one place.
    pub fn new(limits: &wsgate_core::limits::Limits, write_delay: Duration) -> Self {
        TransportLimits {
            max_message_bytes: limits.max_message_bytes,
            outbound_queue_bytes: limits.outbound_queue_bytes,
            heartbeat: Duration::from_secs(limits.heartbeat_secs),
            heartbeat_timeout: Duration::from_secs(limits.heartbeat_timeout_secs),
            write_delay,
        }
    }
}

/// The frame layer over `io` with this server's limits (derived here, in
/// one place): messages up to `max_message_bytes`, refused from the frame
/// header; unwritten bytes bounded by the outbound queue plus one drained
/// batch and one frame (the outbound queue is the real bound on what waits
/// for a client). `already_read`: bytes read past the upgrade request;
/// `unsent`: the held 101 response, written with the first frames.
pub fn frames<T>(
    io: T,
    already_read: bytes::Bytes,
    unsent: bytes::Bytes,
    limits: &TransportLimits,
) -> Frames<T>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    const BATCH_BYTES: usize = 64 * 1024;
    Frames::new(
        io,
        already_read,
        unsent,
        limits.max_message_bytes,
        limits.outbound_queue_bytes + BATCH_BYTES + limits.max_message_bytes,
    )
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// We closed it with this code.
    Closed(CloseCode),
    /// We closed it for a WebSocket protocol violation (1002 / 1007).
    ProtocolError(u16),
    /// The client closed it, or the socket failed.
    ByPeer,
}

impl Ended {
    /// The close code we sent; `None` when the client closed or vanished.
    pub fn code(&self) -> Option<u16> {
        match self {
            Ended::Closed(c) => Some(c.code()),
            Ended::ProtocolError(c) => Some(*c),
            Ended::ByPeer => None,
        }
    }
}

enum ReadError {
    TooBig,
    Protocol(u16),
    Gone,
}

fn classify(err: WsError) -> ReadError {
    use tungstenite::error::{CapacityError, ProtocolError};
    match err {
        // The client dropped TCP without a close frame: it went away, it
        // did not break the protocol (no close frame can reach it anyway).
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadError::Gone,
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => ReadError::TooBig,
        WsError::Capacity(_) => ReadError::Protocol(1002),
        WsError::Utf8(_) => ReadError::Protocol(1007),
        WsError::Protocol(_) => ReadError::Protocol(1002),
        // A compressed frame that does not inflate (see `deflate`).
        WsError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => ReadError::Protocol(1007),
        _ => ReadError::Gone,
    }
}

/// The message for one outbound frame: compressed when deflate was agreed
/// and it pays off. A shared frame (a publication) is compressed once for
/// all its subscribers.
///
/// Frames go to tungstenite as raw `Frame`s, which it writes as given: text
/// frames hold JSON we encoded or text a client sent (checked when read), so
/// their UTF-8 is not checked again for every subscriber, and the RSV1 bit
/// of a compressed frame needs the raw form anyway.
fn to_message(frame: OutFrame, deflate: Option<&Negotiated>) -> Message {
    let (bytes, data) = match &frame {
        OutFrame::Text(b) => (b, Data::Text),
        OutFrame::Binary(b) => (b, Data::Binary),
        OutFrame::Shared(f) if f.is_binary() => (f.bytes(), Data::Binary),
        OutFrame::Shared(f) => (f.bytes(), Data::Text),
        // A bare publication goes out as its JSON `message` frame.
        OutFrame::Publication(p) => (p.frame(Encoding::Json).bytes(), Data::Text),
    };
    let compressed = deflate.and_then(|d| match &frame {
        OutFrame::Shared(f) => f.compressed(|b| d.compress(b)),
        OutFrame::Publication(p) => p.frame(Encoding::Json).compressed(|b| d.compress(b)),
        _ => d.compress(bytes),
    });
    let rsv1 = compressed.is_some();
    let mut out = Frame::message(
        compressed.unwrap_or_else(|| bytes.clone()),
        OpCode::Data(data),
        true,
    );
    out.header_mut().rsv1 = rsv1;
    Message::Frame(out)
}

/// What every connection of a server shares: one pointer per connection
/// instead of a copy of each field.
#[derive(Debug)]
pub struct Shared {
    pub limits: TransportLimits,
    /// Heartbeats, heartbeat timeouts and handler deadlines.
    pub timers: Arc<Timers>,
    /// `limits.heartbeat` and `limits.heartbeat_timeout` in timer ticks.
    heartbeat: Tick,
    heartbeat_timeout: Tick,
}

impl Shared {
    /// Starts the timers' ticker on the current runtime; it ends when the
    /// last connection and the server let go of this.
    pub fn start(limits: TransportLimits) -> Arc<Self> {
        Arc::new(Shared {
            limits,
            timers: Timers::start(),
            heartbeat: Timers::ticks(limits.heartbeat),
            heartbeat_timeout: Timers::ticks(limits.heartbeat_timeout),
        })
    }
}

/// What one connection task runs: see [`drive`].
pub struct Connection<S, H, F> {
    pub socket: S,
    pub handler: H,
    pub outbound: Arc<Outbound>,
    pub transport: Arc<Shared>,
    /// Set when permessage-deflate was agreed on this connection.
    pub deflate: Option<Negotiated>,
    pub on_end: F,
}

enum Event {
    /// Frames or a close request may be waiting in the outbound queue.
    Outbound,
    /// A pending flush finished (`false`: the socket failed).
    Flushed(bool),
    Read(Option<Result<Message, WsError>>),
    Timer,
}

/// Runs one connection until it ends. The handler's replies and any close
/// request (server API, shutdown, slow consumer) arrive through `outbound`.
///
/// One task serves both directions: reads, writes, the heartbeat and the
/// handler's deadline are polled together, so a client that does not read
/// cannot stop the server from reading, and its outbound queue overflows into
/// close 4009 instead of blocking anyone.
///
/// Everything the connection owns lives in this one future, because its size
/// is what an idle connection costs (a test in `handshake` keeps it in
/// check). The parts arrive in one box: an async fn keeps each by-value
/// argument twice (once as an argument, once as the local it is moved
/// into), which cost ~800 bytes per connection here. The box is freed as
/// soon as it is unpacked (see [`unbox`]). The connection's life and its
/// close handshake are two futures awaited one after the other over the
/// same [`Live`] state, so theirs share the same bytes.
/// `on_end` runs when the close handshake is over. Spawn it as a task of
/// its own (as `tokio::spawn(drive(..))`): the timer wheel keeps the waker
/// of the first poll that registers, which is the task's.
pub async fn drive<S, H, F>(parts: Box<Connection<S, H, F>>)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    H: ConnectionHandler,
    F: FnOnce(Ended),
{
    let Connection {
        socket,
        handler,
        outbound,
        transport,
        deflate,
        on_end,
    } = unbox(parts);
    let now = transport.timers.tick_at(Instant::now());
    let mut live = Live {
        socket,
        handler,
        outbound,
        last_seen: now,
        next_ping: now + transport.heartbeat,
        woken_at: 0,
        due: 0,
        writes: WriteScheduler::new(transport.limits.write_delay),
        window: None,
        transport,
        deflate,
    };
    // The socket may hold the 101 response (`http_io`): it goes out with
    // the handler's first frames (`connected`), in one write, or on its own
    // at once if the handler has nothing to say first. (Set on `live`: a
    // separate local would keep its bytes in the future.)
    if !live.outbound.has_frames() {
        live.writes.needs_flush();
    }
    let ended = live.serve().await;
    live.close(ended).await;
    on_end(ended);
}

/// A connection being served: what it owns and the transport's state.
struct Live<S, H> {
    socket: S,
    handler: H,
    outbound: Arc<Outbound>,
    transport: Arc<Shared>,
    deflate: Option<Negotiated>,
    /// Heartbeat bookkeeping in timer ticks. `last_seen` is the tick after
    /// the instant a frame was read (rounded up: the timeout is never early;
    /// the wheel's own clock, one atomic load, could lag by a tick, so a
    /// clock call per read buys the exactness).
    last_seen: Tick,
    next_ping: Tick,
    /// The tick the wheel wakes this task at (one registration at a time:
    /// a deadline that moved later is asked for after the early wake).
    woken_at: Tick,
    /// The next coarse deadline (heartbeat, heartbeat timeout, the
    /// handler's), as of the latest event.
    due: Tick,
    writes: WriteScheduler,
    /// A burst's write window needs milliseconds, so it has a tokio timer,
    /// made at the first burst and dropped at a heartbeat with no window
    /// open: an idle connection holds none.
    window: Option<Pin<Box<Sleep>>>,
}

impl<S, H> Live<S, H>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    H: ConnectionHandler,
{
    /// The connection's life, until it is to end.
    async fn serve(&mut self) -> Ended {
        let ended = loop {
            self.arm_timers();
            let event = std::future::poll_fn(|cx| self.poll_event(cx)).await;
            if let Err(ended) = self.on_event(event) {
                break ended;
            }
        };
        // Wakers keep the task's memory alive: the wheel's and the queue's
        // go now, not when their tick fires (up to ~100 s of churn later)
        // or the queue's last holder lets go.
        std::future::poll_fn(|cx| {
            if self.woken_at > self.transport.timers.now() {
                self.transport.timers.cancel(self.woken_at, cx.waker());
            }
            Poll::Ready(())
        })
        .await;
        self.outbound.detach_writer();
        ended
    }

    /// Sets the tick of the next coarse deadline and the burst window's
    /// timer.
    fn arm_timers(&mut self) {
        let timers = &self.transport.timers;
        let mut due = self
            .next_ping
            .min(self.last_seen + self.transport.heartbeat_timeout);
        if let Some(d) = self.handler.deadline() {
            due = due.min(timers.tick_at(d));
        }
        if let Some(d) = self.writes.deadline() {
            match &mut self.window {
                Some(t) if t.deadline() == d => {}
                Some(t) => t.as_mut().reset(d),
                None => self.window = Some(Box::pin(tokio::time::sleep_until(d))),
            }
        }
        self.due = due;
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let due = self.due;
        if self.outbound.poll_ready(cx).is_ready() {
            return Poll::Ready(Event::Outbound);
        }
        if self.writes.is_flushing() {
            if let Poll::Ready(r) = Pin::new(&mut self.socket).poll_flush(cx) {
                return Poll::Ready(Event::Flushed(r.is_ok()));
            }
        }
        if let Poll::Ready(m) = Pin::new(&mut self.socket).poll_next(cx) {
            return Poll::Ready(Event::Read(m));
        }
        // Not while flushing: the due batch waits for the flush anyway, and
        // a completed timer would make every poll an event until then.
        if self.writes.deadline().is_some() && !self.writes.is_flushing() {
            if let Some(t) = &mut self.window {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
            }
        }
        let timers = &self.transport.timers;
        let now = timers.now();
        if now >= due {
            return Poll::Ready(Event::Timer);
        }
        let registered = now < self.woken_at;
        if !registered || due < self.woken_at {
            if registered {
                // Earlier than asked (a shorter token after a refresh): the
                // later registration goes, so one is kept at a time. Nothing
                // is registered until `wake_at` says so: if `due` fires
                // meanwhile, the next poll must register afresh.
                timers.cancel(self.woken_at, cx.waker());
                self.woken_at = 0;
            }
            match timers.wake_at(due, cx.waker()) {
                Some(at) => self.woken_at = at,
                None => return Poll::Ready(Event::Timer),
            }
        }
        Poll::Pending
    }

    /// Handles one event; `Err` is how the connection ends.
    fn on_event(&mut self, event: Event) -> Result<(), Ended> {
        let deflate = self.deflate.as_ref();
        match event {
            Event::Outbound => {
                if let Some(code) = self.outbound.close_requested() {
                    // Close requests are never delayed. Frames queued before
                    // it go out first, unless the socket is still busy.
                    if !self.writes.is_flushing()
                        && start_batch(&mut self.socket, &self.outbound, deflate).is_err()
                    {
                        return Err(Ended::ByPeer);
                    }
                    return Err(Ended::Closed(code));
                }
                if self.writes.is_flushing() {
                    // Written when the flush completes.
                    return Ok(());
                }
                if self
                    .writes
                    .on_queued(Instant::now(), self.outbound.write_now())
                {
                    self.write_batch()?;
                }
            }
            Event::Flushed(ok) => {
                if !ok {
                    return Err(Ended::ByPeer);
                }
                let now = Instant::now();
                let waiting = self.outbound.has_frames();
                self.writes
                    .on_flushed(now, waiting, waiting && self.outbound.write_now());
                // Due now: written here rather than on the next timer tick.
                if self.writes.on_timer(now) {
                    self.write_batch()?;
                }
            }
            Event::Read(msg) => {
                let msg = match msg {
                    None => return Err(Ended::ByPeer),
                    Some(Err(e)) => {
                        return Err(match classify(e) {
                            ReadError::TooBig => Ended::Closed(CloseCode::TooBig),
                            ReadError::Protocol(code) => Ended::ProtocolError(code),
                            ReadError::Gone => Ended::ByPeer,
                        })
                    }
                    Some(Ok(m)) => m,
                };
                self.last_seen = self.transport.timers.tick_at(Instant::now());
                let result = match msg {
                    Message::Text(t) => self.handler.on_message(Incoming::Text(t.into())),
                    Message::Binary(b) => self.handler.on_message(Incoming::Binary(b)),
                    // The codec queues the pong (or the close reply)
                    // itself; flushing sends it now rather than with the
                    // next outbound frame.
                    Message::Ping(_) | Message::Close(_) => {
                        self.writes.needs_flush();
                        Ok(())
                    }
                    Message::Pong(_) | Message::Frame(_) => Ok(()),
                };
                result.map_err(Ended::Closed)?;
            }
            Event::Timer => {
                let now = Instant::now();
                if self.writes.on_timer(now) {
                    self.write_batch()?;
                }
                let tick = self.transport.timers.now();
                if tick >= self.last_seen + self.transport.heartbeat_timeout {
                    return Err(Ended::Closed(CloseCode::HeartbeatTimeout));
                }
                if tick >= self.next_ping {
                    self.next_ping = tick + self.transport.heartbeat;
                    Pin::new(&mut self.socket)
                        .start_send(Message::Ping(bytes::Bytes::new()))
                        .map_err(|_| Ended::ByPeer)?;
                    self.writes.needs_flush();
                    if self.writes.deadline().is_none() {
                        self.window = None;
                    }
                }
                if self.handler.deadline().is_some_and(|d| now >= d) {
                    self.handler.on_deadline(now).map_err(Ended::Closed)?;
                }
            }
        }
        Ok(())
    }

    /// Writes what is queued and tells the scheduler; `Err` is how the
    /// connection ends (a close request among the frames, or a failed
    /// socket).
    fn write_batch(&mut self) -> Result<(), Ended> {
        match start_batch(&mut self.socket, &self.outbound, self.deflate.as_ref()) {
            Err(()) => Err(Ended::ByPeer),
            Ok((_, Some(code))) => Err(Ended::Closed(code)),
            Ok((sent, None)) => {
                self.writes.on_written(Instant::now(), sent);
                Ok(())
            }
        }
    }

    /// The close handshake: sends our close frame, then waits for the
    /// client's, bounded as a whole by `CLOSE_LINGER`: a client that
    /// neither reads nor answers must not keep the task alive. (The linger
    /// timer is boxed: inline, its 112 bytes would count in every idle
    /// connection's future, which holds room for this one's state.)
    async fn close(&mut self, ended: Ended) {
        let (code, reason) = match ended {
            Ended::Closed(c) => (c.code(), c.reason()),
            Ended::ProtocolError(1007) => (1007, "invalid UTF-8"),
            Ended::ProtocolError(c) => (c, "protocol error"),
            Ended::ByPeer => return,
        };
        let mut linger = Box::pin(tokio::time::sleep(CLOSE_LINGER));
        let frame = CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from_static(reason),
        };
        // Whatever the handler queued before deciding to close (error
        // frames, delayed replies) goes out before the close frame.
        let socket = &mut self.socket;
        let _ = start_batch(socket, &self.outbound, self.deflate.as_ref());
        if Pin::new(&mut *socket)
            .start_send(Message::Close(Some(frame)))
            .is_err()
        {
            return;
        }
        // Nothing more is read until the close frame is out: a client that
        // floods without reading then blocks on its own sends instead of
        // having them discarded while its close frame waits.
        let sent = std::future::poll_fn(|cx| {
            if linger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Pin::new(&mut *socket).poll_flush(cx).map(|r| r.is_ok())
        })
        .await;
        if !sent {
            return;
        }
        std::future::poll_fn(|cx| {
            if linger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            loop {
                match Pin::new(&mut *socket).poll_next(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
    }
}

/// Moves a value out of its box and frees the box now. `let x = *boxed;`
/// frees the allocation only when `boxed` goes out of scope, which for an
/// argument of `drive` is the connection's end: heaptrack found the parts'
/// box (~670 bytes) alive for every idle connection.
#[allow(clippy::boxed_local)] // the box is the point: it is freed here
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Hands every queued frame to the socket's write buffer without waiting;
/// returns how many were written (a flush is then due if any) and the
/// close request, if any.
fn start_batch<S>(
    socket: &mut S,
    outbound: &Outbound,
    deflate: Option<&Negotiated>,
) -> Result<(usize, Option<CloseCode>), ()>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let (frames, close) = outbound.take();
    let sent = frames.len();
    for frame in frames {
        // tokio-tungstenite accepts frames into its buffer even while a
        // previous write would block; `max_write_buffer_size` bounds it.
        Pin::new(&mut *socket)
            .start_send(to_message(frame, deflate))
            .map_err(|_| ())?;
    }
    Ok((sent, close))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::sync::oneshot;
    use wsgate_core::connection::handler::Echo;

    use super::*;

    fn limits(heartbeat_secs: u64, timeout_secs: u64) -> TransportLimits {
        TransportLimits {
            max_message_bytes: 1 << 16,
            outbound_queue_bytes: 1 << 20,
            heartbeat: Duration::from_secs(heartbeat_secs),
            heartbeat_timeout: Duration::from_secs(timeout_secs),
            write_delay: Duration::ZERO,
        }
    }

    /// An echo connection over an in-memory pipe: the client's end, the
    /// transport it shares, and how it ended.
    fn connect(limits: TransportLimits) -> (DuplexStream, Arc<Shared>, oneshot::Receiver<Ended>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let transport = Shared::start(limits);
        let outbound = Arc::new(Outbound::new(limits.outbound_queue_bytes));
        let (tx, rx) = oneshot::channel();
        tokio::spawn(drive(Box::new(Connection {
            socket: frames(server, Bytes::new(), Bytes::new(), &limits),
            handler: Echo::new(outbound.clone()),
            outbound,
            transport: transport.clone(),
            deflate: None,
            on_end: move |ended| {
                let _ = tx.send(ended);
            },
        })));
        (client, transport, rx)
    }

    /// A heartbeat longer than the timer wheel's ~102 s ring: the
    /// connection is woken at the ring's end and must ask again.
    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_beyond_the_wheel_pings_and_times_out() {
        let (mut client, transport, ended) = connect(limits(120, 300));
        let mut ping = [0u8; 2];
        let early = tokio::time::timeout(Duration::from_secs(119), client.read_exact(&mut ping));
        assert!(early.await.is_err(), "no ping before the heartbeat");
        tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut ping))
            .await
            .expect("a ping at the heartbeat")
            .unwrap();
        assert_eq!(ping, [0x89, 0x00]);
        // The client never answers: 4002 once 300 s pass in silence.
        let started = Instant::now();
        let ended = ended.await.unwrap();
        assert_eq!(ended, Ended::Closed(CloseCode::HeartbeatTimeout));
        // 300 s from the start, 179 of them after the ping, plus the 2 s
        // the close handshake waits for the silent client.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(180) && waited <= Duration::from_secs(182));
        assert_eq!(transport.timers.registered(), 0, "the waker was let go");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_leaves_no_waker_in_the_wheel() {
        let (client, transport, ended) = connect(limits(30, 75));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(transport.timers.registered(), 1, "its heartbeat");
        drop(client);
        assert_eq!(ended.await.unwrap(), Ended::ByPeer);
        assert_eq!(transport.timers.registered(), 0);
    }
}
