//! permessage-deflate (RFC 7692), added around tungstenite, which has no
//! compression and fails any frame with RSV1 set.
//!
//! - **Negotiation**: the first `permessage-deflate` offer we can honour is
//!   accepted, always answered with `server_no_context_takeover;
//!   client_no_context_takeover`. Every message is then compressed on its
//!   own, so no connection keeps a compression window (~300 KiB of state)
//!   between messages: compressors and decompressors come from small pools
//!   shared by the server, and an idle compressed connection costs 0.19 KiB
//!   more than an uncompressed one (docs/benchmarks.md). Offers that limit our window
//!   (`server_max_window_bits` below 15: the pure-Rust miniz_oxide backend
//!   always uses 32 KiB) or carry unknown or repeated parameters are
//!   declined; the connection then runs uncompressed.
//! - **Inbound**: [`Inflating`] sits between the socket and tungstenite. It
//!   parses frame headers, passes uncompressed frames through untouched,
//!   and replaces each compressed frame by its inflated payload as a frame
//!   without RSV1. tungstenite therefore checks the *decompressed* size
//!   against `max_message_bytes` (1009), and inflating stops one byte past
//!   that limit, so a small compressed bomb never expands in memory. Its
//!   client side ([`Inflating::client`]) serves `wsgate bench`.
//! - **Outbound**: [`Negotiated::compress`] makes the payload of a frame with
//!   RSV1 set, which tungstenite writes as given. Frames shorter than
//!   `min_bytes`, or that would not shrink, go out uncompressed (RFC 7692
//!   allows either per message).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::header::{self, HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a message compressed with a sync flush ends with; RFC 7692 §7.2.1
/// has the sender drop it and the receiver put it back.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Idle (de)compressors kept for reuse; more are made when needed and
/// dropped when this many are already waiting.
const POOL_SIZE: usize = 16;
/// Bytes read from the socket at a time on a compressed connection.
const READ_CHUNK: usize = 4096;
/// The extension as we accept it.
const RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A bounded stack of reusable codec states.
struct Pool<T>(Mutex<Vec<T>>);

impl<T> Pool<T> {
    fn new() -> Self {
        Pool(Mutex::new(Vec::new()))
    }

    fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Keeps `item` for reuse unless the pool is full (it is dropped then).
    fn put(&self, item: T) {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(item);
        }
    }
}

/// The server's permessage-deflate settings and codec pools; one per
/// server, shared by every compressed connection.
pub struct Deflate {
    level: Compression,
    min_bytes: usize,
    max_message_bytes: usize,
    compressors: Pool<Compress>,
    decompressors: Pool<Decompress>,
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate")
            .field("level", &self.level)
            .field("min_bytes", &self.min_bytes)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`Deflate::inflate`].
#[derive(Debug, PartialEq, Eq)]
enum Inflated {
    Within,
    OverLimit,
}

impl Deflate {
    /// `level` 0–9; frames under `min_bytes` are sent uncompressed;
    /// `max_message_bytes` bounds what one inbound frame may inflate to.
    pub fn new(level: u32, min_bytes: usize, max_message_bytes: usize) -> Arc<Self> {
        Arc::new(Deflate {
            level: Compression::new(level.min(9)),
            min_bytes,
            max_message_bytes,
            compressors: Pool::new(),
            decompressors: Pool::new(),
        })
    }

    /// Accepts the client's `Sec-WebSocket-Extensions` offer when one can be
    /// honoured; `None` runs the connection uncompressed.
    pub fn negotiate(self: &Arc<Self>, headers: &HeaderMap) -> Option<Negotiated> {
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(acceptable_offer)
            .then(|| Negotiated {
                codec: self.clone(),
            })
    }

    /// The payload of a compressed frame for `payload`, or `None` when it
    /// should go out uncompressed (short, or it would not shrink).
    fn compress(&self, payload: &[u8]) -> Option<Bytes> {
        if payload.len() < self.min_bytes {
            return None;
        }
        let mut c = self
            .compressors
            .take()
            .unwrap_or_else(|| Compress::new(self.level, false));
        // Room for incompressible input plus block headers and the sync
        // flush, so one call always finishes (a second sync flush would add
        // an empty block).
        let mut out = Vec::with_capacity(payload.len() + payload.len() / 1000 + 64);
        let done = c
            .compress_vec(payload, &mut out, FlushCompress::Sync)
            .is_ok_and(|s| s == Status::Ok)
            && c.total_in() == payload.len() as u64
            && out.len() < out.capacity();
        c.reset();
        self.compressors.put(c);
        if !done || !out.ends_with(&TRAILER) {
            return None;
        }
        out.truncate(out.len() - TRAILER.len());
        (out.len() < payload.len()).then(|| Bytes::from(out))
    }

    fn decompressor(&self) -> Decompress {
        self.decompressors
            .take()
            .unwrap_or_else(|| Decompress::new(false))
    }

    fn release(&self, mut d: Decompress) {
        d.reset(false);
        self.decompressors.put(d);
    }

    /// Inflates `input` onto `out`, stopping once `out` is longer than
    /// `limit`.
    fn inflate(
        d: &mut Decompress,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> io::Result<Inflated> {
        let mut consumed = 0;
        loop {
            if out.len() > limit {
                return Ok(Inflated::OverLimit);
            }
            if out.len() == out.capacity() {
                let room = (limit + 1 - out.len()).clamp(256, 16 * 1024);
                out.reserve(room);
            }
            let (in_before, out_before) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            consumed += (d.total_in() - in_before) as usize;
            let progressed = d.total_in() != in_before || out.len() != out_before;
            let drained = consumed == input.len() && out.len() < out.capacity();
            if drained || status == Status::StreamEnd || !progressed {
                return Ok(if out.len() > limit {
                    Inflated::OverLimit
                } else {
                    Inflated::Within
                });
            }
        }
    }
}

/// Whether one offer (`permessage-deflate; param; param=value`) is one we
/// accept with [`RESPONSE`].
fn acceptable_offer(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if parts.next() != Some("permessage-deflate") {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        let window_bits = |v: Option<&str>| {
            v.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        let ok = match name {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // We inflate with the largest window, which reads any smaller one.
            "client_max_window_bits" => value.is_none() || window_bits(value).is_some(),
            // Our compressor always uses a 32 KiB window.
            "server_max_window_bits" => window_bits(value) == Some(15),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A connection on which permessage-deflate was agreed.
#[derive(Debug, Clone)]
pub struct Negotiated {
    codec: Arc<Deflate>,
}

impl Negotiated {
    /// `Sec-WebSocket-Extensions` of the 101 response.
    pub fn response_header(&self) -> HeaderValue {
        HeaderValue::from_static(RESPONSE)
    }

    /// The payload of a compressed frame for `payload`, or `None` when it
    /// should go out uncompressed (short, or it would not shrink).
    pub fn compress(&self, payload: &[u8]) -> Option<Bytes> {
        self.codec.compress(payload)
    }
}

/// The socket under tungstenite: a pass-through unless deflate was
/// negotiated, then an inflater of compressed frames (see the module doc).
pub struct Inflating<T> {
    io: T,
    state: Option<Box<InflateState>>,
}

impl<T> Inflating<T> {
    /// The server side: client frames are masked.
    pub fn new(io: T, deflate: Option<Negotiated>) -> Self {
        Inflating {
            io,
            state: deflate.map(|n| InflateState::new(n.codec, true, &[])),
        }
    }

    /// The server side with bytes already read past the upgrade request
    /// (a client frame sent in the same packet), inflated like the rest.
    pub fn server(io: T, deflate: Negotiated, already_read: &[u8]) -> Self {
        Inflating {
            io,
            state: Some(InflateState::new(deflate.codec, true, already_read)),
        }
    }

    /// The client side (`wsgate bench`): server frames are unmasked.
    /// `already_read` holds bytes that came after the handshake response.
    pub fn client(io: T, codec: Arc<Deflate>, already_read: &[u8]) -> Self {
        Inflating {
            io,
            state: Some(InflateState::new(codec, false, already_read)),
        }
    }
}

enum FrameState {
    /// Waiting for the next frame header.
    Header,
    /// Passing this many more payload bytes through unchanged.
    Copy(u64),
    /// Collecting a compressed frame's payload.
    Collect {
        /// FIN and opcode, RSV bits cleared.
        first_byte: u8,
        mask: [u8; 4],
        remaining: usize,
        payload: Vec<u8>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MessageState {
    None,
    Plain,
    Compressed,
}

struct InflateState {
    codec: Arc<Deflate>,
    /// Whether the peer's frames are masked (it is a client).
    masked: bool,
    /// Bytes read from the socket, not yet looked at.
    raw: BytesMut,
    /// Rewritten bytes waiting for tungstenite.
    out: BytesMut,
    frame: FrameState,
    /// The data message in progress (it may span frames).
    message: MessageState,
    /// Held from the first to the last frame of a compressed message.
    decompress: Option<Decompress>,
}

/// A client frame header: FIN/RSV/opcode byte, MASK/length byte, extended
/// length, masking key.
struct Header {
    first_byte: u8,
    masked: bool,
    len: u64,
    mask: [u8; 4],
    size: usize,
}

fn parse_header(buf: &[u8]) -> Option<Header> {
    let (&b0, rest) = buf.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    let (len, ext) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            2,
        ),
        127 => (u64::from_be_bytes(rest.get(..8)?.try_into().ok()?), 8),
        n => (u64::from(n), 0),
    };
    let masked = b1 & 0x80 != 0;
    let mut mask = [0; 4];
    if masked {
        mask.copy_from_slice(rest.get(ext..ext + 4)?);
    }
    Some(Header {
        first_byte: b0,
        masked,
        len,
        mask,
        size: 2 + ext + if masked { 4 } else { 0 },
    })
}

/// Writes a frame header for `len` bytes; a masked one gets an all-zero
/// key, which leaves the payload as it is.
fn put_header(out: &mut BytesMut, first_byte: u8, len: usize, masked: bool) {
    let mask_bit = if masked { 0x80 } else { 0 };
    out.put_u8(first_byte);
    if len < 126 {
        out.put_u8(mask_bit | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(mask_bit | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
    if masked {
        out.put_slice(&[0; 4]);
    }
}

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV23: u8 = 0x30;

impl InflateState {
    fn new(codec: Arc<Deflate>, masked: bool, already_read: &[u8]) -> Box<Self> {
        Box::new(InflateState {
            codec,
            masked,
            raw: BytesMut::from(already_read),
            out: BytesMut::new(),
            frame: FrameState::Header,
            message: MessageState::None,
            decompress: None,
        })
    }

    /// Moves what can be moved from `raw` to `out`; whether anything
    /// changed.
    fn process(&mut self) -> io::Result<bool> {
        match &mut self.frame {
            FrameState::Header => {
                let Some(h) = parse_header(&self.raw) else {
                    return Ok(false);
                };
                let opcode = h.first_byte & 0x0f;
                let rsv1 = h.first_byte & RSV1 != 0;
                let data = opcode < 8;
                if data && opcode != 0 {
                    self.message = if rsv1 {
                        MessageState::Compressed
                    } else {
                        MessageState::Plain
                    };
                }
                let compressed = data
                    && h.masked == self.masked
                    && h.first_byte & RSV23 == 0
                    && match opcode {
                        1 | 2 => rsv1,
                        0 => !rsv1 && self.message == MessageState::Compressed,
                        _ => false,
                    };
                let fin = h.first_byte & FIN != 0;
                if !compressed {
                    // Anything else tungstenite judges as it is: control
                    // frames, plain data, and the violations (RSV1 on a
                    // control or continuation frame, unmasked frames).
                    self.out.put_slice(&self.raw[..h.size]);
                    self.raw.advance(h.size);
                    self.frame = FrameState::Copy(h.len);
                    if data && fin {
                        self.message = MessageState::None;
                    }
                    return Ok(true);
                }
                let first_byte = h.first_byte & !(RSV1 | RSV23);
                if h.len > self.codec.max_message_bytes as u64 {
                    // Already too big compressed: the header alone, RSV1
                    // cleared, makes tungstenite close with 1009.
                    let mut header = BytesMut::from(&self.raw[..h.size]);
                    header[0] = first_byte;
                    self.out.put(header);
                    self.raw.advance(h.size);
                    self.frame = FrameState::Copy(h.len);
                    return Ok(true);
                }
                self.raw.advance(h.size);
                if self.decompress.is_none() {
                    self.decompress = Some(self.codec.decompressor());
                }
                self.frame = FrameState::Collect {
                    first_byte,
                    mask: h.mask,
                    remaining: h.len as usize,
                    payload: Vec::with_capacity(h.len as usize),
                };
                Ok(true)
            }
            FrameState::Copy(remaining) => {
                if *remaining == 0 {
                    self.frame = FrameState::Header;
                    return Ok(true);
                }
                if self.raw.is_empty() {
                    return Ok(false);
                }
                let n = (*remaining).min(self.raw.len() as u64) as usize;
                self.out.put(self.raw.split_to(n));
                *remaining -= n as u64;
                Ok(true)
            }
            FrameState::Collect {
                first_byte,
                mask,
                remaining,
                payload,
            } => {
                if *remaining > 0 {
                    if self.raw.is_empty() {
                        return Ok(false);
                    }
                    let n = (*remaining).min(self.raw.len());
                    payload.extend_from_slice(&self.raw[..n]);
                    self.raw.advance(n);
                    *remaining -= n;
                    if *remaining > 0 {
                        return Ok(true);
                    }
                }
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i & 3];
                }
                let first_byte = *first_byte;
                let payload = std::mem::take(payload);
                self.frame = FrameState::Header;
                self.inflate_frame(first_byte, &payload)?;
                Ok(true)
            }
        }
    }

    /// Writes the inflated form of one compressed frame to `out`.
    fn inflate_frame(&mut self, first_byte: u8, payload: &[u8]) -> io::Result<()> {
        let limit = self.codec.max_message_bytes;
        let fin = first_byte & FIN != 0;
        let d = self
            .decompress
            .as_mut()
            .expect("a decompressor is taken when a compressed frame starts");
        let mut inflated = Vec::new();
        let mut result = Deflate::inflate(d, payload, &mut inflated, limit)?;
        if fin && result == Inflated::Within {
            result = Deflate::inflate(d, &TRAILER, &mut inflated, limit)?;
        }
        if fin {
            self.message = MessageState::None;
            if let Some(d) = self.decompress.take() {
                self.codec.release(d);
            }
        }
        match result {
            // A header announcing one byte over the limit: tungstenite
            // refuses it with 1009 before reading any payload.
            Inflated::OverLimit => put_header(&mut self.out, first_byte, limit + 1, self.masked),
            Inflated::Within => {
                put_header(&mut self.out, first_byte, inflated.len(), self.masked);
                self.out.put_slice(&inflated);
            }
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Inflating<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(state) = this.state.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        loop {
            if !state.out.is_empty() {
                let n = state.out.len().min(buf.remaining());
                buf.put_slice(&state.out[..n]);
                state.out.advance(n);
                // Nothing is held between messages.
                if state.out.is_empty() {
                    state.out = BytesMut::new();
                }
                if state.raw.is_empty() {
                    state.raw = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if state.process()? {
                continue;
            }
            // Read through a stack buffer so that an idle connection holds
            // no read buffer of its own.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut chunk = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                // End of stream; tungstenite judges a cut-off frame.
                return Poll::Ready(Ok(()));
            }
            state.raw.extend_from_slice(chunk.filled());
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Inflating<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn headers(offer: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, offer.parse().unwrap());
        h
    }

    #[test]
    fn offers_we_accept_and_decline() {
        let d = Deflate::new(1, 0, 1024);
        for ok in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=15",
            "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
        ] {
            assert!(d.negotiate(&headers(ok)).is_some(), "{ok}");
        }
        for declined in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; mystery",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        ] {
            assert!(d.negotiate(&headers(declined)).is_none(), "{declined}");
        }
        assert!(d.negotiate(&HeaderMap::new()).is_none());
        let n = d.negotiate(&headers("permessage-deflate")).unwrap();
        assert_eq!(n.response_header(), RESPONSE);
    }

    fn inflate_all(d: &Deflate, compressed: &[u8]) -> Vec<u8> {
        let mut dec = d.decompressor();
        let mut out = Vec::new();
        let input = [compressed, &TRAILER].concat();
        Deflate::inflate(&mut dec, &input, &mut out, usize::MAX - 1).unwrap();
        d.release(dec);
        out
    }

    #[test]
    fn compress_round_trips_and_skips_what_does_not_shrink() {
        let d = Deflate::new(1, 16, 1 << 20);
        let text = "the quick brown fox jumps over the lazy dog ".repeat(100);
        let c = d
            .compress(text.as_bytes())
            .expect("repetitive text shrinks");
        assert!(c.len() < text.len() / 5, "{} bytes", c.len());
        assert_eq!(inflate_all(&d, &c), text.as_bytes());
        // A pooled compressor starts fresh: the same input, the same bytes.
        assert_eq!(d.compress(text.as_bytes()).unwrap(), c);
        assert!(d.compress(b"short").is_none());
        // xorshift64: bytes deflate cannot shrink.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(d.compress(&noise).is_none());
    }

    /// A masked client frame with `payload`.
    fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![first_byte];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    async fn rewrite(d: &Arc<Deflate>, input: Vec<u8>) -> io::Result<Vec<u8>> {
        let negotiated = d.negotiate(&headers("permessage-deflate")).unwrap();
        let mut io = Inflating::new(std::io::Cursor::new(input), Some(negotiated));
        let mut out = Vec::new();
        io.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn compressed_frames_become_plain_frames() {
        let d = Deflate::new(1, 0, 1 << 20);
        let text = "hello hello hello hello hello hello";
        let c = d.compress(text.as_bytes()).unwrap();
        let mut input = client_frame(FIN | RSV1 | 1, &c);
        // A ping and a plain frame pass through unchanged.
        let ping = client_frame(FIN | 9, b"p");
        let plain = client_frame(FIN | 2, b"raw");
        input.extend_from_slice(&ping);
        input.extend_from_slice(&plain);
        let out = rewrite(&d, input).await.unwrap();
        let h = parse_header(&out).unwrap();
        assert_eq!(h.first_byte, FIN | 1, "RSV1 cleared");
        assert_eq!(h.len as usize, text.len());
        assert_eq!(&out[h.size..h.size + text.len()], text.as_bytes());
        assert_eq!(&out[h.size + text.len()..], [ping, plain].concat());
    }

    #[tokio::test]
    async fn fragmented_compressed_message() {
        let d = Deflate::new(1, 0, 1 << 20);
        let text = "abcabcabcabcabcabcabcabcabcabcabcabc".repeat(10);
        let c = d.compress(text.as_bytes()).unwrap();
        let (a, b) = c.split_at(c.len() / 2);
        let mut input = client_frame(RSV1 | 1, a);
        input.extend(client_frame(FIN, b));
        let out = rewrite(&d, input).await.unwrap();
        let h1 = parse_header(&out).unwrap();
        assert_eq!(h1.first_byte, 1);
        let rest = &out[h1.size + h1.len as usize..];
        let h2 = parse_header(rest).unwrap();
        assert_eq!(h2.first_byte, FIN);
        let mut joined = out[h1.size..h1.size + h1.len as usize].to_vec();
        joined.extend_from_slice(&rest[h2.size..]);
        assert_eq!(joined, text.as_bytes());
    }

    #[tokio::test]
    async fn a_bomb_stops_one_byte_past_the_limit() {
        let d = Deflate::new(1, 0, 1000);
        let big = Deflate::new(1, 0, 1 << 20);
        let zeros = vec![0u8; 1 << 16];
        let c = big.compress(&zeros).unwrap();
        assert!(c.len() < 1000, "{} bytes", c.len());
        let out = rewrite(&d, client_frame(FIN | RSV1 | 2, &c)).await.unwrap();
        let h = parse_header(&out).unwrap();
        assert_eq!(h.len, 1001);
        assert_eq!(out.len(), h.size, "no payload is produced");
    }

    #[tokio::test]
    async fn garbage_is_invalid_data() {
        let d = Deflate::new(1, 0, 1000);
        let err = rewrite(&d, client_frame(FIN | RSV1 | 1, &[0xff; 20]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// Pooled compressors are reset and reused; many messages of mixed
    /// sizes and content must still each inflate to their input. (zlib-rs
    /// 0.6.8 at level 1 panicked here on the second use of a reset
    /// compressor, which is why the backend is miniz_oxide.)
    #[test]
    fn reused_compressors_round_trip_every_message() {
        for level in [1, 6, 9] {
            let d = Deflate::new(level, 0, 1 << 20);
            let mut x = 0x9e37_79b9_7f4a_7c15_u64;
            for i in 0..300usize {
                let len = 200 + (i * 37) % 5000;
                let data: Vec<u8> = (0..len)
                    .map(|j| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Every third message is text-like, the rest noise.
                        if i % 3 == 0 {
                            b"abcdefgh"[(j % 8) ^ (x as usize & 1)]
                        } else {
                            x as u8
                        }
                    })
                    .collect();
                if let Some(c) = d.compress(&data) {
                    assert_eq!(inflate_all(&d, &c), data, "level {level}, message {i}");
                }
            }
        }
    }
}
