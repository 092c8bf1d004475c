//! The WebSocket transport: one task per connection that reads frames,
//! enforces frame size and heartbeats, feeds a [`ConnectionHandler`], and
//! writes the handler's outbound queue in batches.
//!
//! The loop is generic over the socket (any `Stream + Sink` of tungstenite
//! messages: [`codec::Frames`] in the server), so it is the same code for
//! `/ws` and for the Autobahn echo example.

pub mod codec;
pub mod scheduler;
pub mod upgrade;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio::time::Instant;
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
/// for a client). `already_read`: bytes read past the upgrade request.
pub fn frames<T>(io: T, already_read: bytes::Bytes, limits: &TransportLimits) -> Frames<T>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    const BATCH_BYTES: usize = 64 * 1024;
    Frames::new(
        io,
        already_read,
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

/// What one connection task runs: see [`drive`].
pub struct Connection<S, H, F> {
    pub socket: S,
    pub handler: H,
    pub outbound: Arc<Outbound>,
    /// Shared by every connection of a server (a pointer, not 56 bytes each).
    pub limits: Arc<TransportLimits>,
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
/// is what an idle connection costs. The parts arrive in one box: an async
/// fn keeps each by-value argument twice (once as an argument, once as the
/// local it is moved into), which cost ~800 bytes per connection here. The
/// box is freed as soon as it is unpacked (see [`unbox`]).
/// `on_end` runs when the close handshake is over.
pub async fn drive<S, H, F>(parts: Box<Connection<S, H, F>>)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    H: ConnectionHandler,
    F: FnOnce(Ended),
{
    let Connection {
        mut socket,
        mut handler,
        outbound,
        limits,
        deflate,
        on_end,
    } = unbox(parts);
    let deflate = deflate.as_ref();
    let mut last_seen = Instant::now();
    let mut next_ping = last_seen + limits.heartbeat;
    let mut writes = WriteScheduler::new(limits.write_delay);
    let timer = tokio::time::sleep_until(next_ping);
    tokio::pin!(timer);
    let notified = outbound.ready();
    tokio::pin!(notified);

    let ended = loop {
        let mut deadline = next_ping.min(last_seen + limits.heartbeat_timeout);
        if let Some(d) = handler.deadline() {
            deadline = deadline.min(d);
        }
        if let Some(d) = writes.deadline() {
            deadline = deadline.min(d);
        }
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }

        let event = std::future::poll_fn(|cx| {
            if notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Outbound);
            }
            if writes.is_flushing() {
                if let Poll::Ready(r) = Pin::new(&mut socket).poll_flush(cx) {
                    return Poll::Ready(Event::Flushed(r.is_ok()));
                }
            }
            if let Poll::Ready(m) = Pin::new(&mut socket).poll_next(cx) {
                return Poll::Ready(Event::Read(m));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await;

        match event {
            Event::Outbound => {
                notified.set(outbound.ready());
                if let Some(code) = outbound.close_requested() {
                    // Close requests are never delayed. Frames queued before
                    // it go out first, unless the socket is still busy.
                    if !writes.is_flushing()
                        && start_batch(&mut socket, &outbound, deflate).is_err()
                    {
                        break Ended::ByPeer;
                    }
                    break Ended::Closed(code);
                }
                if writes.is_flushing() {
                    // Written when the flush completes.
                    continue;
                }
                let now = Instant::now();
                if writes.on_queued(now, outbound.write_now()) {
                    if let Err(ended) = write_batch(&mut socket, &outbound, deflate, &mut writes) {
                        break ended;
                    }
                }
            }
            Event::Flushed(ok) => {
                if !ok {
                    break Ended::ByPeer;
                }
                let now = Instant::now();
                let waiting = outbound.has_frames();
                writes.on_flushed(now, waiting, waiting && outbound.write_now());
                // Due now: written here rather than on the next timer tick.
                if writes.on_timer(now) {
                    if let Err(ended) = write_batch(&mut socket, &outbound, deflate, &mut writes) {
                        break ended;
                    }
                }
            }
            Event::Read(msg) => {
                let msg = match msg {
                    None => break Ended::ByPeer,
                    Some(Err(e)) => match classify(e) {
                        ReadError::TooBig => break Ended::Closed(CloseCode::TooBig),
                        ReadError::Protocol(code) => break Ended::ProtocolError(code),
                        ReadError::Gone => break Ended::ByPeer,
                    },
                    Some(Ok(m)) => m,
                };
                last_seen = Instant::now();
                let result = match msg {
                    Message::Text(t) => handler.on_message(Incoming::Text(t.into())),
                    Message::Binary(b) => handler.on_message(Incoming::Binary(b)),
                    // tungstenite queues the pong (or the close reply)
                    // itself; flushing sends it now rather than with the
                    // next outbound frame.
                    Message::Ping(_) | Message::Close(_) => {
                        writes.needs_flush();
                        Ok(())
                    }
                    Message::Pong(_) | Message::Frame(_) => Ok(()),
                };
                if let Err(code) = result {
                    break Ended::Closed(code);
                }
            }
            Event::Timer => {
                let now = Instant::now();
                if writes.on_timer(now) {
                    if let Err(ended) = write_batch(&mut socket, &outbound, deflate, &mut writes) {
                        break ended;
                    }
                }
                if now >= last_seen + limits.heartbeat_timeout {
                    break Ended::Closed(CloseCode::HeartbeatTimeout);
                }
                if now >= next_ping {
                    next_ping = now + limits.heartbeat;
                    if Pin::new(&mut socket)
                        .start_send(Message::Ping(bytes::Bytes::new()))
                        .is_err()
                    {
                        break Ended::ByPeer;
                    }
                    writes.needs_flush();
                }
                if handler.deadline().is_some_and(|d| now >= d) {
                    if let Err(code) = handler.on_deadline(now) {
                        break Ended::Closed(code);
                    }
                }
            }
        }
    };

    let code = match ended {
        Ended::Closed(c) => Some((c.code(), c.reason())),
        Ended::ProtocolError(1007) => Some((1007, "invalid UTF-8")),
        Ended::ProtocolError(c) => Some((c, "protocol error")),
        Ended::ByPeer => None,
    };
    if let Some((code, reason)) = code {
        // Send our close frame, then wait for the client's (the close
        // handshake), bounded as a whole by CLOSE_LINGER: a client that
        // neither reads nor answers must not keep the task alive. The
        // heartbeat timer is reused for the deadline.
        timer.as_mut().reset(Instant::now() + CLOSE_LINGER);
        let frame = CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from_static(reason),
        };
        // Whatever the handler queued before deciding to close (error
        // frames, delayed replies) goes out before the close frame.
        let _ = start_batch(&mut socket, &outbound, deflate);
        if Pin::new(&mut socket)
            .start_send(Message::Close(Some(frame)))
            .is_ok()
        {
            // Nothing more is read until the close frame is out: a client
            // that floods without reading then blocks on its own sends
            // instead of having them discarded while its close frame waits.
            let mut sent = false;
            std::future::poll_fn(|cx| {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                if !sent {
                    match Pin::new(&mut socket).poll_flush(cx) {
                        Poll::Ready(Ok(())) => sent = true,
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                loop {
                    match Pin::new(&mut socket).poll_next(cx) {
                        Poll::Ready(Some(Ok(_))) => continue,
                        Poll::Ready(_) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
        }
    }
    on_end(ended);
}

/// Moves a value out of its box and frees the box now. `let x = *boxed;`
/// frees the allocation only when `boxed` goes out of scope, which for an
/// argument of `drive` is the connection's end: heaptrack found the parts'
/// box (~670 bytes) alive for every idle connection.
#[allow(clippy::boxed_local)] // the box is the point: it is freed here
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Writes what is queued and tells the scheduler; `Err` is how the
/// connection ends (a close request among the frames, or a failed socket).
fn write_batch<S>(
    socket: &mut S,
    outbound: &Outbound,
    deflate: Option<&Negotiated>,
    writes: &mut WriteScheduler,
) -> Result<(), Ended>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    match start_batch(socket, outbound, deflate) {
        Err(()) => Err(Ended::ByPeer),
        Ok((_, Some(code))) => Err(Ended::Closed(code)),
        Ok((sent, None)) => {
            writes.on_written(Instant::now(), sent);
            Ok(())
        }
    }
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
