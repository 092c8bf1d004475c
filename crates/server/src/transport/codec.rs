//! A lean server-side WebSocket frame codec (RFC 6455): a `Stream` and
//! `Sink` of tungstenite messages over any byte stream, a drop-in for
//! `WebSocketStream` under [`super::drive`] that holds no heap buffer while
//! a connection is idle.
//!
//! tungstenite keeps, for every connection, a read buffer, a write buffer
//! that keeps the capacity of the largest frame it ever wrote, and two
//! waker-proxy `Arc`s. Here reads go into a buffer on the stack of
//! `poll_next`; only bytes that cannot be handed up yet (an incomplete frame,
//! frames after the message being returned) are kept on the heap, and each
//! heap buffer is released as soon as it is used. A frame is written as its
//! header (inline, at most 10 bytes) and its payload `Bytes` as given, not
//! copied, in one vectored write.
//!
//! permessage-deflate sits below this codec (`wsgate_deflate::Inflating`
//! inflates client frames at the byte level and clears RSV1), so a reserved
//! bit set here is always a protocol error.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::{Error, Message};

/// Bytes read at a time into a buffer on the stack. Client frames are
/// usually far smaller; a frame at least this large is read straight into a
/// buffer of its exact size instead, reserved once its header is known.
const READ_CHUNK: usize = 4096;
/// The most a control frame takes: its longest header (non-minimal length
/// encodings are legal) and its longest payload. Control frames are parsed
/// whole, so this is the most an incomplete frame leaves for the next read.
const MAX_CONTROL_FRAME: usize = 14 + 125;
/// Frames handed to one vectored write from slices on the stack (a header
/// and a payload slice each): replies and calm streams.
const WRITE_BATCH: usize = 32;
/// Frames handed to one vectored write in a fan-out burst, from slices on
/// the heap: 2 × 512 is Linux's `IOV_MAX`. With 32 a burst of small frames
/// took a `writev` per ~4 KiB, and cost ~5 % more CPU per delivery than
/// tungstenite's one 64 KiB write.
const WRITE_BATCH_MAX: usize = 512;

const OP_CONTINUE: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// FIN: the last frame of a message (every frame we send is one).
const FIN_BIT: u8 = 0x80;

// Bits of `Frames::flags`: the state fits one byte, and the struct's size
// is what every connection pays.
/// The message being received is text.
const TEXT: u8 = 1 << 0;
/// The message being received is binary.
const BINARY: u8 = 1 << 1;
/// The data frame being received is its message's last.
const FIN: u8 = 1 << 2;
/// The rest of the current frame is dropped: it was refused.
const DISCARD: u8 = 1 << 3;
/// Everything read is dropped: a refused frame was too long to skip.
const BROKEN: u8 = 1 << 4;
/// We queued a close frame (our own, or the reply to the peer's).
const SENT_CLOSE: u8 = 1 << 5;
/// The peer's close frame arrived: nothing more is read.
const RECV_CLOSE: u8 = 1 << 6;
/// The peer closed TCP.
const EOF: u8 = 1 << 7;

/// One WebSocket connection, server side: see the module docs.
pub struct Frames<T> {
    io: T,
    /// Bytes read but not parsed yet (frames after the message just
    /// returned, or a frame's incomplete start). Empty while idle.
    pending: Bytes,
    /// The data message being received, unmasked: all its fragments so far.
    message: Vec<u8>,
    /// Frames waiting to be written, oldest first. Replaced by an empty
    /// deque once written, so it keeps no capacity while idle.
    out: VecDeque<OutFrame>,
    /// Bytes of the front frame of `out` already written.
    written: u32,
    /// Bytes in `out` not written yet, held under `max_write`.
    queued: u32,
    max_message: u32,
    max_write: u32,
    /// Payload bytes of the current data (or refused) frame still to come;
    /// 0 between frames.
    left: u32,
    /// How much of `message` is known to be valid UTF-8 (whole characters).
    checked: u32,
    /// The current frame's mask, rotated so `mask[0]` is for its next byte.
    mask: [u8; 4],
    flags: u8,
}

impl<T> Frames<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// `already_read` is what the HTTP server read past the upgrade request
    /// (usually nothing); `unsent`, bytes to write before the first frame
    /// (the 101 response, held back to share a write with the first
    /// frames: `transport::http_io`). Messages over `max_message_bytes` are
    /// refused from their frame header; `start_send` refuses a frame that
    /// would take the unwritten bytes over `max_write_buffer`.
    pub fn new(
        io: T,
        already_read: Bytes,
        unsent: Bytes,
        max_message_bytes: usize,
        max_write_buffer: usize,
    ) -> Self {
        // Counters are u32 to keep the struct small; half the range leaves
        // room for a header and a close frame over a limit without overflow.
        let limit = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).min(u32::MAX / 2);
        let mut frames = Frames {
            io,
            pending: already_read,
            message: Vec::new(),
            out: VecDeque::new(),
            written: 0,
            queued: 0,
            max_message: limit(max_message_bytes),
            max_write: limit(max_write_buffer),
            left: 0,
            checked: 0,
            mask: [0; 4],
            flags: 0,
        };
        if !unsent.is_empty() {
            frames.push(OutFrame::raw(unsent));
        }
        frames
    }

    /// Heap bytes the codec holds for its own buffers (not the payloads of
    /// queued frames, which are the caller's): 0 on an idle connection.
    /// Only the tests ask.
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.pending.len()
            + self.message.capacity()
            + self.out.capacity() * std::mem::size_of::<OutFrame>()
    }

    // ---- reading ----

    /// Parses frames from `input`: how many bytes were used, and the first
    /// message (or error) they complete. What is left is more frames after
    /// that message, or, with no message, at most an incomplete header or
    /// control frame (data payloads are always taken).
    fn feed(&mut self, input: &[u8]) -> (usize, Option<Result<Message, Error>>) {
        let mut pos = 0;
        while pos < input.len() {
            if self.flags & BROKEN != 0 {
                return (input.len(), None);
            }
            if self.left > 0 {
                let n = (self.left as usize).min(input.len() - pos);
                let chunk = &input[pos..pos + n];
                pos += n;
                if self.flags & DISCARD != 0 {
                    self.left -= n as u32;
                    if self.left == 0 {
                        self.flags &= !DISCARD;
                    }
                    continue;
                }
                let start = self.message.len();
                self.message.extend_from_slice(chunk);
                if let Some(event) = self.payload_added(start) {
                    return (pos, Some(event));
                }
                continue;
            }
            let Some((size, head)) = parse_head(&input[pos..]) else {
                break;
            };
            if let Err(e) = self.check_head(&head) {
                pos += size;
                self.refuse(head.len);
                return (pos, Some(Err(e)));
            }
            if head.opcode() >= OP_CLOSE {
                // Handled whole: one that is incomplete waits for the next
                // read (at most MAX_CONTROL_FRAME bytes).
                let end = size + head.len as usize;
                let Some(payload) = input[pos..].get(size..end) else {
                    break;
                };
                let mut payload = payload.to_vec();
                unmask(&mut payload, &mut head.mask.clone());
                pos += end;
                return (pos, Some(self.on_control(head.opcode(), payload)));
            }
            pos += size;
            self.start_data(&head);
            if head.len == 0 {
                if let Some(event) = self.frame_done() {
                    return (pos, Some(event));
                }
            }
        }
        (pos, None)
    }

    /// The frame-level rules of RFC 6455 §5, checked from the header alone,
    /// before any of the payload is read (so an oversized message costs
    /// nothing).
    fn check_head(&self, head: &Head) -> Result<(), Error> {
        let opcode = head.opcode();
        // Deflate was undone below us, RSV1 included: no extension is left
        // to give a reserved bit a meaning.
        if head.first & 0x70 != 0 {
            return Err(ProtocolError::NonZeroReservedBits.into());
        }
        match opcode {
            3..=7 => return Err(ProtocolError::UnknownDataFrameType(opcode).into()),
            0xB..=0xF => return Err(ProtocolError::UnknownControlFrameType(opcode).into()),
            _ => {}
        }
        if !head.masked {
            return Err(ProtocolError::UnmaskedFrameFromClient.into());
        }
        if opcode >= OP_CLOSE {
            if !head.fin() {
                return Err(ProtocolError::FragmentedControlFrame.into());
            }
            if head.len > 125 {
                return Err(ProtocolError::ControlFrameTooBig.into());
            }
            return Ok(());
        }
        // §5.2: the most significant bit of a 64-bit length must be 0. No
        // error variant names it; it is a reserved bit.
        if head.len >> 63 != 0 {
            return Err(ProtocolError::NonZeroReservedBits.into());
        }
        let receiving = self.flags & (TEXT | BINARY) != 0;
        match opcode {
            OP_CONTINUE if !receiving => return Err(ProtocolError::UnexpectedContinueFrame.into()),
            OP_TEXT if receiving => return Err(ProtocolError::ExpectedFragment(Data::Text).into()),
            OP_BINARY if receiving => {
                return Err(ProtocolError::ExpectedFragment(Data::Binary).into())
            }
            _ => {}
        }
        let size = self.message.len() as u64 + head.len;
        if size > u64::from(self.max_message) {
            return Err(Error::Capacity(CapacityError::MessageTooLong {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                max_size: self.max_message as usize,
            }));
        }
        Ok(())
    }

    /// A checked data frame header: its payload goes to `message`.
    fn start_data(&mut self, head: &Head) {
        // At most `max_message` (checked), so it fits.
        let len = head.len as usize;
        match head.opcode() {
            OP_TEXT => self.flags |= TEXT,
            OP_BINARY => self.flags |= BINARY,
            _ => {}
        }
        if head.fin() {
            self.flags |= FIN;
        } else {
            self.flags &= !FIN;
        }
        self.left = len as u32;
        self.mask = head.mask;
        let need = self.message.len() + len;
        let capacity = self.message.capacity();
        if need > capacity {
            // The first frame gets exactly its size. Later fragments grow
            // the buffer geometrically, as `Vec` does (growing it to each
            // fragment's size would copy the message once per fragment),
            // but never past the message limit.
            let target = need.max(capacity * 2).min(self.max_message as usize);
            self.message.reserve_exact(target - self.message.len());
        }
    }

    /// Unmasks payload bytes just appended to `message` at `start`; the
    /// message when they complete it.
    fn payload_added(&mut self, start: usize) -> Option<Result<Message, Error>> {
        let added = &mut self.message[start..];
        unmask(added, &mut self.mask);
        self.left -= added.len() as u32;
        let frame_done = self.left == 0;
        // Text is checked as it arrives, so invalid UTF-8 fails the
        // connection at once rather than after the rest of the message
        // (Autobahn 6.x counts late failure as non-strict). Bytes that end
        // the message are checked with it as a whole, below.
        if self.flags & TEXT != 0 && !(frame_done && self.flags & FIN != 0) {
            if let Err(e) = self.check_utf8() {
                self.refuse(u64::from(self.left));
                return Some(Err(e));
            }
        }
        if frame_done {
            self.frame_done()
        } else {
            None
        }
    }

    /// Advances `checked` over the whole characters of `message`; an error
    /// only for bytes that no continuation could make valid.
    fn check_utf8(&mut self) -> Result<(), Error> {
        match std::str::from_utf8(&self.message[self.checked as usize..]) {
            Ok(_) => self.checked = self.message.len() as u32,
            // A character cut at the end: the next bytes may complete it.
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to() as u32,
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// A data frame's payload is complete; the message if it was the last.
    fn frame_done(&mut self) -> Option<Result<Message, Error>> {
        if self.flags & FIN == 0 {
            return None;
        }
        let text = self.flags & TEXT != 0;
        self.flags &= !(TEXT | BINARY | FIN);
        self.checked = 0;
        // No copy: `Bytes` takes the vector's allocation.
        let payload = Bytes::from(std::mem::take(&mut self.message));
        Some(if text {
            Utf8Bytes::try_from(payload)
                .map(Message::Text)
                .map_err(Error::from)
        } else {
            Ok(Message::Binary(payload))
        })
    }

    /// After an error: drops the message in progress and the rest of the
    /// refused frame (`rest` bytes), so the frames after it are still
    /// parsed. The client's close then completes the handshake cleanly.
    fn refuse(&mut self, rest: u64) {
        self.message = Vec::new();
        self.checked = 0;
        self.flags &= !(TEXT | BINARY | FIN | DISCARD);
        match u32::try_from(rest) {
            Ok(0) => self.left = 0,
            Ok(n) => {
                self.left = n;
                self.flags |= DISCARD;
            }
            Err(_) => {
                self.left = 0;
                self.flags |= BROKEN;
            }
        }
    }

    fn on_control(&mut self, opcode: u8, payload: Vec<u8>) -> Result<Message, Error> {
        let payload = Bytes::from(payload);
        match opcode {
            OP_PING => {
                // No pong after our close frame: nothing may follow it.
                if self.flags & SENT_CLOSE == 0 {
                    self.queue_pong(payload.clone());
                }
                Ok(Message::Ping(payload))
            }
            OP_PONG => Ok(Message::Pong(payload)),
            _ => self.on_close(payload),
        }
    }

    /// The peer's close frame. A valid one is answered with its code (unless
    /// we sent ours already); either way nothing more is read.
    fn on_close(&mut self, payload: Bytes) -> Result<Message, Error> {
        self.flags |= RECV_CLOSE;
        self.message = Vec::new();
        let close = match payload.len() {
            0 => None,
            1 => return Err(ProtocolError::InvalidCloseSequence.into()),
            _ => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if !close_code_allowed(code) {
                    return Err(ProtocolError::InvalidCloseSequence.into());
                }
                let reason = Utf8Bytes::try_from(payload.slice(2..))?;
                Some(CloseFrame {
                    code: code.into(),
                    reason,
                })
            }
        };
        if self.flags & SENT_CLOSE == 0 {
            self.flags |= SENT_CLOSE;
            self.push(OutFrame::new(
                FIN_BIT | OP_CLOSE,
                payload.slice(..2.min(payload.len())),
            ));
        }
        Ok(Message::Close(close))
    }

    /// The peer closed TCP (a clean end is seen before: `RECV_CLOSE`).
    fn eof(&mut self) -> Result<Message, Error> {
        self.flags |= EOF;
        self.pending = Bytes::new();
        self.message = Vec::new();
        Err(ProtocolError::ResetWithoutClosingHandshake.into())
    }

    // ---- writing ----

    fn push(&mut self, frame: OutFrame) {
        self.queued = self.queued.saturating_add(frame.len() as u32);
        self.out.push_back(frame);
    }

    /// Queues the answer to a ping. Like tungstenite, at most one unsent
    /// pong waits, answering the latest ping: a client that pings without
    /// reading cannot grow the queue. The pong goes ahead of queued data,
    /// at the next frame boundary (every data frame we send is a whole
    /// message, so a control frame may go between any two), so the waiting
    /// one is found in O(1) however long the queue of a stalled client is
    /// (a scan from the back cost a pass over thousands of frames per ping).
    fn queue_pong(&mut self, payload: Bytes) {
        // The front frame is partly written, or it is the 101 response: the
        // pong goes after it.
        let after_front = self.written > 0 || self.out.front().is_some_and(OutFrame::is_raw);
        let at = usize::from(after_front).min(self.out.len());
        let pong = OutFrame::new(FIN_BIT | OP_PONG, payload);
        match self.out.get_mut(at) {
            Some(waiting) if waiting.opcode() == OP_PONG => {
                self.queued = self.queued - waiting.len() as u32 + pong.len() as u32;
                *waiting = pong;
            }
            _ => {
                self.queued = self.queued.saturating_add(pong.len() as u32);
                self.out.insert(at, pong);
            }
        }
    }

    /// Writes every queued frame (without flushing `io`).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut stack = [IoSlice::new(&[]); 2 * WRITE_BATCH];
            let mut heap;
            let slices: &mut [IoSlice<'_>] = if self.out.len() <= WRITE_BATCH {
                &mut stack
            } else {
                heap = vec![IoSlice::new(&[]); 2 * self.out.len().min(WRITE_BATCH_MAX)];
                &mut heap
            };
            let mut count = 0;
            let mut skip = self.written as usize;
            for frame in self.out.iter().take(slices.len() / 2) {
                for part in [frame.head(), &frame.payload[..]] {
                    // Written already (or an empty payload).
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[count] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    count += 1;
                }
            }
            let n = if count > 1 && !self.io.is_write_vectored() && slices[0].len() < READ_CHUNK {
                // One write for several small parts rather than one per
                // header and payload (a TLS stream would make each a record).
                let mut joined = [0u8; READ_CHUNK];
                let mut len = 0;
                for slice in &slices[..count] {
                    let take = slice.len().min(joined.len() - len);
                    joined[len..len + take].copy_from_slice(&slice[..take]);
                    len += take;
                }
                ready!(Pin::new(&mut self.io).poll_write(cx, &joined[..len]))?
            } else {
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        self.out = VecDeque::new();
        Poll::Ready(Ok(()))
    }

    /// `n` more bytes were written: drops the frames they finish.
    fn advance(&mut self, n: usize) {
        self.queued = self.queued.saturating_sub(n as u32);
        let mut n = n + self.written as usize;
        while let Some(front) = self.out.front() {
            if n < front.len() {
                break;
            }
            n -= front.len();
            self.out.pop_front();
        }
        self.written = n as u32;
    }

    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_flush(cx).map_err(Error::Io)
    }
}

impl<T> Stream for Frames<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.flags & RECV_CLOSE != 0 {
            // The handshake is over once our close frame (the reply, or our
            // own) is out. Like tungstenite, the server then ends rather than
            // wait for the client to drop TCP: the server closes TCP first
            // (§7.1.1). Whatever the client sends after its close is ignored.
            this.pending = Bytes::new();
            return this.poll_flush_all(cx).map(|_| None);
        }
        if this.flags & EOF != 0 {
            return Poll::Ready(None);
        }
        // Left uninitialized: zeroing 4 KiB on every wake-up would cost more
        // than most reads bring.
        let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut buf);
        if !this.pending.is_empty() {
            let input = std::mem::take(&mut this.pending);
            let (used, event) = this.feed(&input);
            if let Some(event) = event {
                this.pending = input.slice(used..);
                return Poll::Ready(Some(event));
            }
            // An incomplete header or control frame: read the rest after it.
            debug_assert!(input.len() - used <= MAX_CONTROL_FRAME);
            read.put_slice(&input[used..]);
        }
        loop {
            if read.filled().is_empty()
                && this.left as usize >= READ_CHUNK
                && this.flags & (DISCARD | BROKEN) == 0
            {
                // A large payload is read straight into the message, whose
                // room was reserved from the header: no copy per chunk.
                // Limited to this frame, so what follows it is not mixed in.
                let start = this.message.len();
                let polled = {
                    let mut room = (&mut this.message).limit(this.left as usize);
                    pin!(this.io.read_buf(&mut room)).poll(cx)
                };
                match polled {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(Error::Io(e)))),
                    Poll::Ready(Ok(0)) => return Poll::Ready(Some(this.eof())),
                    Poll::Ready(Ok(_)) => {
                        if let Some(event) = this.payload_added(start) {
                            return Poll::Ready(Some(event));
                        }
                    }
                }
                continue;
            }
            let before = read.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {}
                other => {
                    // Kept until the next poll: the only heap use while a
                    // connection waits, and only mid-frame.
                    if before > 0 {
                        this.pending = Bytes::copy_from_slice(read.filled());
                    }
                    return match other {
                        Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Error::Io(e)))),
                        _ => Poll::Pending,
                    };
                }
            }
            if read.filled().len() == before {
                return Poll::Ready(Some(this.eof()));
            }
            let (used, event) = this.feed(read.filled());
            let rest = &read.filled()[used..];
            if let Some(event) = event {
                if !rest.is_empty() && this.flags & RECV_CLOSE == 0 {
                    this.pending = Bytes::copy_from_slice(rest);
                }
                return Poll::Ready(Some(event));
            }
            // What is left (an incomplete header or control frame) moves to
            // the front, and the next read goes after it.
            let mut head = [0u8; MAX_CONTROL_FRAME];
            let head = &mut head[..rest.len()];
            head.copy_from_slice(rest);
            read.clear();
            read.put_slice(head);
        }
    }
}

impl<T> Sink<Message> for Frames<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        // `start_send` accepts frames up to `max_write`; at that point only
        // writing makes room.
        if this.queued >= this.max_write {
            ready!(this.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), Error> {
        let this = self.get_mut();
        let is_close = match &msg {
            Message::Close(_) => true,
            Message::Frame(f) => f.header().opcode == OpCode::Control(Control::Close),
            _ => false,
        };
        if this.flags & SENT_CLOSE != 0 {
            // A second close is a no-op, as in tungstenite; nothing else may
            // follow a close frame.
            return if is_close {
                Ok(())
            } else {
                Err(ProtocolError::SendAfterClosing.into())
            };
        }
        let payload_len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
            Message::Close(c) => c.as_ref().map_or(0, |c| 2 + c.reason.len()),
            Message::Frame(f) => f.payload().len(),
        };
        // A close frame is always taken: it is small, sent once, and it is
        // how a client whose buffer is full (a slow consumer) learns why.
        let len = frame_len(payload_len);
        if !is_close && (this.queued as usize).saturating_add(len) > this.max_write as usize {
            return Err(Error::WriteBufferFull(Box::new(msg)));
        }
        let frame = match msg {
            Message::Text(t) => OutFrame::new(FIN_BIT | OP_TEXT, t.into()),
            Message::Binary(b) => OutFrame::new(FIN_BIT | OP_BINARY, b),
            Message::Ping(b) => OutFrame::new(FIN_BIT | OP_PING, b),
            Message::Pong(b) => OutFrame::new(FIN_BIT | OP_PONG, b),
            Message::Close(c) => OutFrame::new(FIN_BIT | OP_CLOSE, close_payload(c)),
            // Written as given: RSV1 marks a frame compressed upstream. A
            // mask is ignored (a server never masks).
            Message::Frame(f) => {
                let h = f.header();
                let first = u8::from(h.opcode)
                    | u8::from(h.is_final) << 7
                    | u8::from(h.rsv1) << 6
                    | u8::from(h.rsv2) << 5
                    | u8::from(h.rsv3) << 4;
                OutFrame::new(first, f.into_payload())
            }
        };
        if is_close {
            this.flags |= SENT_CLOSE;
        }
        this.push(frame);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_all(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        ready!(this.poll_flush_all(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx).map_err(Error::Io)
    }
}

/// A client frame's header.
struct Head {
    first: u8,
    masked: bool,
    mask: [u8; 4],
    len: u64,
}

impl Head {
    fn opcode(&self) -> u8 {
        self.first & 0x0F
    }

    fn fin(&self) -> bool {
        self.first & FIN_BIT != 0
    }
}

/// The header at the start of `buf` and its size; `None` while incomplete.
fn parse_head(buf: &[u8]) -> Option<(usize, Head)> {
    let (&first, rest) = buf.split_first()?;
    let &second = rest.first()?;
    let masked = second & 0x80 != 0;
    let extra = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let size = 2 + extra + if masked { 4 } else { 0 };
    let head = buf.get(..size)?;
    let len = match extra {
        0 => u64::from(second & 0x7F),
        2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        _ => u64::from_be_bytes(head[2..10].try_into().ok()?),
    };
    let mut mask = [0; 4];
    if masked {
        mask.copy_from_slice(&head[2 + extra..]);
    }
    Some((
        size,
        Head {
            first,
            masked,
            mask,
            len,
        },
    ))
}

/// Unmasks `buf` in place, eight bytes at a time, and rotates `mask` so it
/// lines up with the byte after `buf`.
fn unmask(buf: &mut [u8], mask: &mut [u8; 4]) {
    let [a, b, c, d] = *mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        // `chunks_exact_mut(8)` yields exactly 8 bytes.
        let bytes: [u8; 8] = (&*word).try_into().unwrap_or_default();
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    for (byte, m) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
    mask.rotate_left(buf.len() % 4);
}

/// Close codes a peer may send (§7.4 and the IANA registry, as tungstenite
/// allows them): 1004–1006 and 1015 are never sent in a close frame,
/// 1016–2999 are reserved, below 1000 and from 5000 are unassigned.
/// 1012–1014 (service restart, try again later, bad gateway) are
/// registered and some clients send them.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn close_payload(close: Option<CloseFrame>) -> Bytes {
    let Some(close) = close else {
        return Bytes::new();
    };
    let mut payload = Vec::with_capacity(2 + close.reason.len());
    payload.extend_from_slice(&u16::from(close.code).to_be_bytes());
    payload.extend_from_slice(close.reason.as_bytes());
    payload.into()
}

/// The size on the wire of an unmasked frame with this payload.
fn frame_len(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        }
}

/// A frame waiting to be written: its header inline, its payload as given.
struct OutFrame {
    head: [u8; 10],
    head_len: u8,
    payload: Bytes,
}

impl OutFrame {
    fn new(first: u8, payload: Bytes) -> Self {
        let len = payload.len();
        let mut head = [0; 10];
        head[0] = first;
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        OutFrame {
            head,
            head_len,
            payload,
        }
    }

    /// Bytes written as they are, not a frame (the held 101 response).
    fn raw(bytes: Bytes) -> Self {
        OutFrame {
            head: [0; 10],
            head_len: 0,
            payload: bytes,
        }
    }

    fn is_raw(&self) -> bool {
        self.head_len == 0
    }

    fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    fn len(&self) -> usize {
        usize::from(self.head_len) + self.payload.len()
    }

    fn opcode(&self) -> u8 {
        self.head[0] & 0x0F
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::net::{TcpListener, TcpStream};
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::protocol::frame::Frame;

    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const MAX: usize = 1 << 20;

    /// Fails a test that hangs (a codec waiting for bytes that never come).
    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("timed out")
    }

    /// A codec over an in-memory pipe of `capacity` bytes, and the client end.
    fn pair(capacity: usize, max_message: usize) -> (Frames<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(capacity);
        (
            Frames::new(server, Bytes::new(), Bytes::new(), max_message, MAX),
            client,
        )
    }

    /// A masked client frame, minimal length encoding.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        let mut body = payload.to_vec();
        unmask(&mut body, &mut MASK.clone());
        out.extend_from_slice(&body);
        out
    }

    fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        client_frame(0x88, &payload)
    }

    /// Reads one (unmasked) server frame: its first byte and payload.
    async fn read_frame(io: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7F {
            126 => u64::from(io.read_u16().await.unwrap()),
            127 => io.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0; len as usize];
        io.read_exact(&mut payload).await.unwrap();
        (head[0], payload)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn text(len: usize) -> String {
        "añ€𝄞".chars().cycle().take(len).collect()
    }

    async fn next(frames: &mut Frames<DuplexStream>) -> Option<Result<Message, Error>> {
        within(frames.next()).await
    }

    /// The error the codec gives for these client bytes.
    async fn error_for(bytes: &[u8]) -> Error {
        let (mut frames, mut client) = pair(1 << 16, 1000);
        client.write_all(bytes).await.unwrap();
        match next(&mut frames).await {
            Some(Err(e)) => e,
            other => panic!("expected an error for {bytes:02x?}, got {other:?}"),
        }
    }

    fn is_protocol(e: &Error) -> bool {
        matches!(e, Error::Protocol(_))
    }

    /// A loopback TCP connection upgraded by hand: the codec on the server
    /// side, tokio-tungstenite's client on the other.
    async fn tcp_pair() -> (
        Frames<TcpStream>,
        tokio_tungstenite::WebSocketStream<TcpStream>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
                .await
                .unwrap()
                .0
        });
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            request.extend_from_slice(&chunk[..n]);
        }
        let request = String::from_utf8(request).unwrap();
        let key = request
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-key"))
            .map(|(_, v)| v.trim())
            .unwrap();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        tcp.write_all(response.as_bytes()).await.unwrap();
        let frames = Frames::new(tcp, Bytes::new(), Bytes::new(), MAX, MAX);
        (frames, client.await.unwrap())
    }

    #[test]
    fn struct_is_small() {
        let total = std::mem::size_of::<Frames<TcpStream>>();
        let own = total - std::mem::size_of::<TcpStream>();
        println!("size_of Frames<TcpStream> = {total} ({own} + TcpStream)");
        assert!(own <= 128, "{own} bytes besides the socket");
    }

    #[tokio::test]
    async fn round_trips_with_a_tungstenite_client() {
        let (mut server, mut client) = within(tcp_pair()).await;
        let echo = tokio::spawn(async move {
            let mut closed = None;
            while let Some(msg) = server.next().await {
                match msg.unwrap() {
                    m @ (Message::Text(_) | Message::Binary(_)) => server.send(m).await.unwrap(),
                    Message::Ping(_) => server.flush().await.unwrap(),
                    Message::Close(c) => closed = c,
                    other => panic!("unexpected {other:?}"),
                }
            }
            (closed, server.buffered_capacity())
        });
        for len in [0, 1, 125, 126, 127, 65535, 65536, 300_000] {
            let t = text(len);
            client.send(Message::text(t.clone())).await.unwrap();
            assert_eq!(
                within(client.next()).await.unwrap().unwrap(),
                Message::text(t)
            );
            let b = Bytes::from(payload(len));
            client.send(Message::Binary(b.clone())).await.unwrap();
            assert_eq!(
                within(client.next()).await.unwrap().unwrap(),
                Message::Binary(b)
            );
        }
        client
            .send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        assert_eq!(
            within(client.next()).await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"hi"))
        );
        client
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            })))
            .await
            .unwrap();
        // The reply echoes the code; then the server ends and drops TCP,
        // which ends the client's stream.
        match within(client.next()).await {
            Some(Ok(Message::Close(Some(c)))) => assert_eq!(c.code, CloseCode::Normal),
            other => panic!("expected the close reply, got {other:?}"),
        }
        let (closed, capacity) = within(echo).await.unwrap();
        assert_eq!(closed.unwrap().reason.as_str(), "done");
        assert_eq!(capacity, 0);
        assert!(within(client.next()).await.is_none());
    }

    #[tokio::test]
    async fn frames_split_into_single_bytes() {
        // A one-byte pipe: every read the codec makes gets one byte, across
        // headers, masks, payloads, and the direct read of large frames.
        let (mut frames, mut client) = pair(1, MAX);
        let sizes = [0, 125, 126, 65535, 65536];
        let writer = tokio::spawn(async move {
            for len in sizes {
                client
                    .write_all(&client_frame(0x82, &payload(len)))
                    .await
                    .unwrap();
                client
                    .write_all(&client_frame(0x81, text(len).as_bytes()))
                    .await
                    .unwrap();
            }
            client
        });
        for len in sizes {
            assert_eq!(
                next(&mut frames).await.unwrap().unwrap(),
                Message::Binary(payload(len).into())
            );
            assert_eq!(
                next(&mut frames).await.unwrap().unwrap(),
                Message::text(text(len))
            );
        }
        within(writer).await.unwrap();
        assert_eq!(frames.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn many_frames_in_one_read() {
        let (mut frames, mut client) = pair(1 << 20, MAX);
        let mut bytes = Vec::new();
        for len in [3, 0, 200, 5000, 1] {
            bytes.extend(client_frame(0x82, &payload(len)));
        }
        // The last frame is cut short: its start waits for the rest.
        let last = client_frame(0x81, b"tail");
        bytes.extend_from_slice(&last[..3]);
        client.write_all(&bytes).await.unwrap();
        for len in [3, 0, 200, 5000, 1] {
            assert_eq!(
                next(&mut frames).await.unwrap().unwrap(),
                Message::Binary(payload(len).into())
            );
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(50), frames.next())
                .await
                .is_err()
        );
        assert_eq!(frames.buffered_capacity(), 3, "only the cut header is kept");
        client.write_all(&last[3..]).await.unwrap();
        assert_eq!(
            next(&mut frames).await.unwrap().unwrap(),
            Message::text("tail")
        );
        assert_eq!(frames.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn bytes_read_before_the_codec_come_first() {
        let (server, mut client) = duplex(1024);
        let mut early = client_frame(0x81, b"early");
        early.extend_from_slice(&client_frame(0x81, b"second")[..4]);
        let mut frames = Frames::new(server, Bytes::from(early), Bytes::new(), MAX, MAX);
        assert_eq!(
            next(&mut frames).await.unwrap().unwrap(),
            Message::text("early")
        );
        client
            .write_all(&client_frame(0x81, b"second")[4..])
            .await
            .unwrap();
        assert_eq!(
            next(&mut frames).await.unwrap().unwrap(),
            Message::text("second")
        );
    }

    #[tokio::test]
    async fn fragments_with_a_ping_between() {
        let (mut frames, mut client) = pair(1 << 16, MAX);
        let whole = text(300);
        let (a, rest) = whole.as_bytes().split_at(101); // mid-character
        let (b, c) = rest.split_at(7);
        let mut bytes = client_frame(0x01, a);
        bytes.extend(client_frame(0x89, b"ping!"));
        bytes.extend(client_frame(0x00, b));
        bytes.extend(client_frame(0x80, c));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(
            next(&mut frames).await.unwrap().unwrap(),
            Message::Ping(Bytes::from_static(b"ping!"))
        );
        within(frames.flush()).await.unwrap();
        assert_eq!(
            within(read_frame(&mut client)).await,
            (0x8A, b"ping!".to_vec())
        );
        assert_eq!(
            next(&mut frames).await.unwrap().unwrap(),
            Message::text(whole)
        );
        assert_eq!(frames.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn fragmented_binary_grows_within_the_limit() {
        let (mut frames, mut client) = pair(1 << 16, 1000);
        let mut bytes = Vec::new();
        for i in 0..100 {
            let first = if i == 0 { 0x02 } else { 0x00 } | if i == 99 { 0x80 } else { 0 };
            bytes.extend(client_frame(first, &[i as u8; 10]));
        }
        let last = bytes.split_off(bytes.len() - 16);
        client.write_all(&bytes).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), frames.next())
                .await
                .is_err()
        );
        // Grown geometrically, but capped at the limit.
        let held = frames.buffered_capacity();
        assert!((990..=1000).contains(&held), "{held}");
        client.write_all(&last).await.unwrap();
        let Some(Ok(Message::Binary(b))) = next(&mut frames).await else {
            panic!("expected the message");
        };
        assert_eq!(b.len(), 1000);
        assert!(b.chunks(10).enumerate().all(|(i, c)| c == [i as u8; 10]));
    }

    #[tokio::test]
    async fn protocol_violations() {
        let unmasked = [0x81, 0x02, b'h', b'i'];
        assert!(matches!(
            error_for(&unmasked).await,
            Error::Protocol(ProtocolError::UnmaskedFrameFromClient)
        ));
        for rsv in [0x40, 0x20, 0x10] {
            assert!(matches!(
                error_for(&client_frame(0x81 | rsv, b"x")).await,
                Error::Protocol(ProtocolError::NonZeroReservedBits)
            ));
        }
        for opcode in [3, 7, 0xB, 0xF] {
            let e = error_for(&client_frame(0x80 | opcode, b"")).await;
            assert!(is_protocol(&e), "opcode {opcode}: {e:?}");
        }
        assert!(matches!(
            error_for(&client_frame(0x89, &[0; 126])).await,
            Error::Protocol(ProtocolError::ControlFrameTooBig)
        ));
        assert!(matches!(
            error_for(&client_frame(0x09, b"")).await,
            Error::Protocol(ProtocolError::FragmentedControlFrame)
        ));
        assert!(matches!(
            error_for(&client_frame(0x80, b"x")).await,
            Error::Protocol(ProtocolError::UnexpectedContinueFrame)
        ));
        let mut two_starts = client_frame(0x01, b"a");
        two_starts.extend(client_frame(0x82, b"b"));
        assert!(matches!(
            error_for(&two_starts).await,
            Error::Protocol(ProtocolError::ExpectedFragment(Data::Binary))
        ));
        // The most significant bit of a 64-bit length.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert!(is_protocol(&error_for(&huge).await));
        // Close payloads: one byte, codes no one may send, bad UTF-8.
        assert!(is_protocol(&error_for(&client_frame(0x88, &[3])).await));
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            let e = error_for(&close_frame(code, b"")).await;
            assert!(is_protocol(&e), "close code {code}: {e:?}");
        }
        assert!(matches!(
            error_for(&close_frame(1000, b"\xff")).await,
            Error::Utf8(_)
        ));
        // A single invalid text frame.
        assert!(matches!(
            error_for(&client_frame(0x81, b"ok\xc0\xafok")).await,
            Error::Utf8(_)
        ));
        // A message that ends mid-character.
        let mut cut = client_frame(0x01, b"ab\xe2\x82");
        cut.extend(client_frame(0x80, b""));
        assert!(matches!(error_for(&cut).await, Error::Utf8(_)));
    }

    #[tokio::test]
    async fn valid_close_codes_are_accepted() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            let (mut frames, mut client) = pair(1024, MAX);
            client.write_all(&close_frame(code, b"r")).await.unwrap();
            match next(&mut frames).await {
                Some(Ok(Message::Close(Some(c)))) => assert_eq!(u16::from(c.code), code),
                other => panic!("close code {code}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn oversized_messages_are_refused_from_the_header() {
        // Only the header is sent: the refusal cannot wait for the payload.
        let (mut frames, mut client) = pair(1024, 1000);
        client
            .write_all(&client_frame(0x82, &[0; 1001])[..8])
            .await
            .unwrap();
        assert!(matches!(
            next(&mut frames).await,
            Some(Err(Error::Capacity(CapacityError::MessageTooLong {
                size: 1001,
                max_size: 1000
            })))
        ));
        // Fragments that only add up to too much.
        let (mut frames, mut client) = pair(1 << 16, 1000);
        client
            .write_all(&client_frame(0x02, &[0; 600]))
            .await
            .unwrap();
        client
            .write_all(&client_frame(0x80, &[0; 401])[..8])
            .await
            .unwrap();
        assert!(matches!(
            next(&mut frames).await,
            Some(Err(Error::Capacity(CapacityError::MessageTooLong {
                size: 1001,
                ..
            })))
        ));
        assert_eq!(frames.buffered_capacity(), 0);
        // Exactly the limit is fine.
        let (mut frames, mut client) = pair(1 << 16, 1000);
        client
            .write_all(&client_frame(0x82, &[1; 1000]))
            .await
            .unwrap();
        assert!(matches!(next(&mut frames).await, Some(Ok(Message::Binary(b))) if b.len() == 1000));
    }

    #[tokio::test]
    async fn invalid_utf8_fails_fast() {
        // A valid first fragment, then one that makes it invalid: refused
        // without waiting for the rest of the message.
        let (mut frames, mut client) = pair(1 << 16, MAX);
        client
            .write_all(&client_frame(0x01, "κόσμε".as_bytes()))
            .await
            .unwrap();
        client
            .write_all(&client_frame(0x00, b"\xce\xbc\xed\xa0\x80"))
            .await
            .unwrap();
        assert!(matches!(next(&mut frames).await, Some(Err(Error::Utf8(_)))));
        // Within one frame whose end has not arrived.
        let (mut frames, mut client) = pair(1 << 16, MAX);
        let frame = client_frame(0x81, b"hello\xf4\x90\x80\x80world");
        client.write_all(&frame[..frame.len() - 4]).await.unwrap();
        assert!(matches!(next(&mut frames).await, Some(Err(Error::Utf8(_)))));
        // A character split across fragments is fine.
        let (mut frames, mut client) = pair(1 << 16, MAX);
        client
            .write_all(&client_frame(0x01, b"\xf0\x9d"))
            .await
            .unwrap();
        client
            .write_all(&client_frame(0x00, b"\x84"))
            .await
            .unwrap();
        client
            .write_all(&client_frame(0x80, b"\x9e!"))
            .await
            .unwrap();
        assert_eq!(
            next(&mut frames).await.unwrap().unwrap(),
            Message::text("𝄞!")
        );
    }

    #[tokio::test]
    async fn after_an_error_the_clients_close_ends_the_stream() {
        let (mut frames, mut client) = pair(1 << 16, MAX);
        // A refused frame whose payload follows, then the client's close.
        let mut bytes = client_frame(0x83, b"junk that must be skipped");
        bytes.extend(close_frame(1002, b""));
        client.write_all(&bytes).await.unwrap();
        assert!(next(&mut frames).await.unwrap().is_err());
        frames
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Protocol,
                reason: "protocol error".into(),
            })))
            .await
            .unwrap();
        let (first, payload) = within(read_frame(&mut client)).await;
        assert_eq!((first, &payload[..2]), (0x88, &1002u16.to_be_bytes()[..]));
        assert!(matches!(
            next(&mut frames).await,
            Some(Ok(Message::Close(_)))
        ));
        assert!(next(&mut frames).await.is_none());
        // Only our one close frame was written: no reply to the client's.
        drop(frames);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn close_started_by_the_client() {
        let (mut frames, mut client) = pair(1024, MAX);
        let mut bytes = close_frame(1001, b"bye");
        // Ignored: nothing is read after a close frame.
        bytes.extend(client_frame(0x81, b"late"));
        client.write_all(&bytes).await.unwrap();
        let Some(Ok(Message::Close(Some(close)))) = next(&mut frames).await else {
            panic!("expected the close");
        };
        assert_eq!(
            (close.code, close.reason.as_str()),
            (CloseCode::Away, "bye")
        );
        assert!(matches!(
            frames.send(Message::text("no")).await,
            Err(Error::Protocol(ProtocolError::SendAfterClosing))
        ));
        // The reply is written on the way to the end of the stream.
        assert!(next(&mut frames).await.is_none());
        assert!(next(&mut frames).await.is_none());
        assert_eq!(
            within(read_frame(&mut client)).await,
            (0x88, 1001u16.to_be_bytes().to_vec())
        );
        assert_eq!(frames.buffered_capacity(), 0);
        // An empty close is answered with an empty close.
        let (mut frames, mut client) = pair(1024, MAX);
        client.write_all(&client_frame(0x88, b"")).await.unwrap();
        assert!(matches!(
            next(&mut frames).await,
            Some(Ok(Message::Close(None)))
        ));
        assert!(next(&mut frames).await.is_none());
        assert_eq!(within(read_frame(&mut client)).await, (0x88, vec![]));
    }

    #[tokio::test]
    async fn close_started_by_us() {
        let (mut frames, mut client) = pair(1024, MAX);
        let ours = CloseFrame {
            code: CloseCode::Library(4009),
            reason: "slow".into(),
        };
        frames.send(Message::Close(Some(ours))).await.unwrap();
        let (first, payload) = within(read_frame(&mut client)).await;
        assert_eq!(first, 0x88);
        assert_eq!(payload, b"\x0f\xa9slow");
        assert!(matches!(
            frames.start_send_unpin(Message::Binary(Bytes::new())),
            Err(Error::Protocol(ProtocolError::SendAfterClosing))
        ));
        // A second close is a no-op.
        frames.send(Message::Close(None)).await.unwrap();
        // Messages still arrive until the client's close; a ping gets no
        // pong after our close frame.
        let mut bytes = client_frame(0x81, b"in flight");
        bytes.extend(client_frame(0x89, b""));
        bytes.extend(close_frame(1000, b""));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(
            next(&mut frames).await.unwrap().unwrap(),
            Message::text("in flight")
        );
        assert!(matches!(
            next(&mut frames).await,
            Some(Ok(Message::Ping(_)))
        ));
        assert!(matches!(
            next(&mut frames).await,
            Some(Ok(Message::Close(Some(_))))
        ));
        assert!(next(&mut frames).await.is_none());
        within(frames.close()).await.unwrap();
        let mut rest = Vec::new();
        within(client.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty(), "nothing after our close frame: {rest:?}");
    }

    #[tokio::test]
    async fn eof_without_a_close_frame() {
        let (mut frames, mut client) = pair(1024, MAX);
        client
            .write_all(&client_frame(0x82, b"half")[..4])
            .await
            .unwrap();
        drop(client);
        assert!(matches!(
            next(&mut frames).await,
            Some(Err(Error::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )))
        ));
        assert!(next(&mut frames).await.is_none());
        assert_eq!(frames.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn partial_writes_keep_everything_in_order() {
        // A 7-byte pipe: every write is cut, mid-header and mid-payload.
        let (mut frames, mut client) = pair(7, MAX);
        let sizes = [0, 1, 125, 126, 300, 65535, 65536, 70_000];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..sizes.len() + 2 {
                got.push(read_frame(&mut client).await);
            }
            got
        });
        for len in sizes {
            frames
                .start_send_unpin(Message::Binary(payload(len).into()))
                .unwrap();
        }
        let mut compressed =
            Frame::message(Bytes::from_static(b"zz"), OpCode::Data(Data::Text), true);
        compressed.header_mut().rsv1 = true;
        frames.start_send_unpin(Message::Frame(compressed)).unwrap();
        frames
            .start_send_unpin(Message::Ping(Bytes::from_static(b"p")))
            .unwrap();
        within(frames.flush()).await.unwrap();
        assert_eq!(frames.buffered_capacity(), 0);
        let got = within(reader).await.unwrap();
        for (len, (first, body)) in sizes.iter().zip(&got) {
            assert_eq!((*first, body.len()), (0x82, *len));
            assert_eq!(*body, payload(*len));
        }
        assert_eq!(got[sizes.len()], (0xC1, b"zz".to_vec()), "RSV1 kept");
        assert_eq!(got[sizes.len() + 1], (0x89, b"p".to_vec()));
    }

    #[tokio::test]
    async fn the_write_buffer_is_bounded_but_close_gets_through() {
        let (server, mut client) = duplex(16);
        let mut frames = Frames::new(server, Bytes::new(), Bytes::new(), MAX, 100);
        frames
            .start_send_unpin(Message::Binary(Bytes::from(vec![1; 60])))
            .unwrap();
        let refused = frames.start_send_unpin(Message::Binary(Bytes::from(vec![2; 60])));
        assert!(
            matches!(refused, Err(Error::WriteBufferFull(m)) if matches!(*m, Message::Binary(_)))
        );
        frames.start_send_unpin(Message::Close(None)).unwrap();
        let reader =
            tokio::spawn(
                async move { (read_frame(&mut client).await, read_frame(&mut client).await) },
            );
        within(frames.flush()).await.unwrap();
        let (a, b) = within(reader).await.unwrap();
        assert_eq!((a.0, a.1.len()), (0x82, 60));
        assert_eq!(b, (0x88, vec![]));
    }

    #[tokio::test]
    async fn pings_before_a_flush_get_one_pong() {
        let (mut frames, mut client) = pair(1 << 16, MAX);
        let mut bytes = Vec::new();
        for p in [&b"one"[..], b"two", b"three"] {
            bytes.extend(client_frame(0x89, p));
        }
        bytes.extend(client_frame(0x81, b"after"));
        client.write_all(&bytes).await.unwrap();
        for _ in 0..3 {
            assert!(matches!(
                next(&mut frames).await,
                Some(Ok(Message::Ping(_)))
            ));
        }
        assert_eq!(
            next(&mut frames).await.unwrap().unwrap(),
            Message::text("after")
        );
        frames.send(Message::text("reply")).await.unwrap();
        assert_eq!(
            within(read_frame(&mut client)).await,
            (0x8A, b"three".to_vec())
        );
        assert_eq!(
            within(read_frame(&mut client)).await,
            (0x81, b"reply".to_vec())
        );
    }

    /// The held 101 response goes out first, with the first frames, and
    /// a pong never goes ahead of it (a client may ping before it has read
    /// the 101).
    #[tokio::test]
    async fn unsent_bytes_go_first_even_before_a_pong() {
        let (server, mut client) = duplex(1 << 16);
        let head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        let mut frames = Frames::new(server, Bytes::new(), Bytes::from_static(head), MAX, MAX);
        SinkExt::feed(&mut frames, Message::text("connected"))
            .await
            .unwrap();
        client.write_all(&client_frame(0x89, b"p")).await.unwrap();
        assert!(matches!(
            next(&mut frames).await,
            Some(Ok(Message::Ping(_)))
        ));
        within(frames.flush()).await.unwrap();
        let mut got = vec![0u8; head.len()];
        within(client.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got[..], head);
        assert_eq!(within(read_frame(&mut client)).await, (0x8A, b"p".to_vec()));
        assert_eq!(
            within(read_frame(&mut client)).await,
            (0x81, b"connected".to_vec())
        );
    }

    #[tokio::test]
    async fn a_pong_goes_ahead_of_queued_data() {
        let (mut frames, mut client) = pair(1 << 16, MAX);
        for text in ["a", "b"] {
            SinkExt::feed(&mut frames, Message::text(text))
                .await
                .unwrap();
        }
        client.write_all(&client_frame(0x89, b"p1")).await.unwrap();
        assert!(matches!(
            next(&mut frames).await,
            Some(Ok(Message::Ping(_)))
        ));
        SinkExt::feed(&mut frames, Message::text("c"))
            .await
            .unwrap();
        // A second ping replaces the waiting pong rather than adding one.
        client.write_all(&client_frame(0x89, b"p2")).await.unwrap();
        assert!(matches!(
            next(&mut frames).await,
            Some(Ok(Message::Ping(_)))
        ));
        within(frames.flush()).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(within(read_frame(&mut client)).await);
        }
        assert_eq!(
            got,
            vec![
                (0x8A, b"p2".to_vec()),
                (0x81, b"a".to_vec()),
                (0x81, b"b".to_vec()),
                (0x81, b"c".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (mut frames, mut client) = pair(1 << 16, MAX);
        assert_eq!(frames.buffered_capacity(), 0);
        // A large frame being received holds exactly its size...
        let big = client_frame(0x82, &payload(100_000));
        client.write_all(&big[..50_000]).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), frames.next())
                .await
                .is_err()
        );
        assert_eq!(frames.buffered_capacity(), 100_000);
        // ...which leaves with the message.
        client.write_all(&big[50_000..]).await.unwrap();
        let msg = next(&mut frames).await.unwrap().unwrap();
        assert_eq!(msg.len(), 100_000);
        assert_eq!(frames.buffered_capacity(), 0);
        // Writing a large frame keeps nothing once flushed.
        let reader = tokio::spawn(async move {
            let frame = read_frame(&mut client).await;
            (frame, client)
        });
        frames.send(msg).await.unwrap();
        let ((_, body), _client) = within(reader).await.unwrap();
        assert_eq!(body.len(), 100_000);
        assert_eq!(frames.buffered_capacity(), 0);
    }

    #[test]
    fn unmask_matches_a_byte_loop() {
        let mask = [1u8, 2, 4, 8];
        for len in 0..40 {
            for split in 0..=len {
                let data: Vec<u8> = (0..len as u8).collect();
                let mut fast = data.clone();
                let mut m = mask;
                let (x, y) = fast.split_at_mut(split);
                unmask(x, &mut m);
                unmask(y, &mut m);
                let slow: Vec<u8> = data
                    .iter()
                    .zip(mask.iter().cycle())
                    .map(|(v, m)| v ^ m)
                    .collect();
                assert_eq!(fast, slow, "len {len} split {split}");
            }
        }
    }

    /// A stream without vectored writes (as some TLS streams are).
    struct Plain(DuplexStream);

    impl AsyncRead for Plain {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Plain {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn writes_without_vectored_io() {
        let (server, mut client) = duplex(100);
        let mut frames = Frames::new(Plain(server), Bytes::new(), Bytes::new(), MAX, MAX);
        let sizes = [0, 3, 125, 5000, 4096, 10];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in sizes {
                got.push(read_frame(&mut client).await);
            }
            got
        });
        for len in sizes {
            frames
                .start_send_unpin(Message::Binary(payload(len).into()))
                .unwrap();
        }
        within(frames.flush()).await.unwrap();
        let got = within(reader).await.unwrap();
        for (len, (first, body)) in sizes.iter().zip(got) {
            assert_eq!((first, body), (0x82, payload(*len)));
        }
        assert_eq!(frames.buffered_capacity(), 0);
    }
}
