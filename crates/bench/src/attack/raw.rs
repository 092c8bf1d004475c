//! Raw sockets for what a WebSocket library would not send: bound source
//! addresses and small receive windows, hand-written upgrade requests,
//! masked frames with any header bits, and the server's answers read as
//! bytes; plus the labels every scenario tallies endings under.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};

use anyhow::Context;

use super::report::Tally;
use super::Target;

/// Source address `i` of a scenario: 127.0.`net`.1 … 127.0.`net`.`count`,
/// round robin.
pub(crate) fn source(net: u8, i: usize, count: u8) -> IpAddr {
    let host = 1 + (i % count.max(1) as usize) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

/// A TCP connection from `source`; `recv_buffer` (bytes) is set before the
/// connection exists, so the window the server sees is small from the start.
pub(crate) async fn connect_from(
    source: IpAddr,
    target: SocketAddr,
    recv_buffer: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// A WebSocket upgrade request for the target's path; `extra` holds more
/// header lines, each ending in `\r\n`.
pub(crate) fn upgrade_request(target: &Target, extra: &str) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
        target.path, target.addr
    )
}

/// Reads an HTTP response head into `buf`; returns its status and where the
/// head ends (what follows stays in `buf`), or `None` when the server
/// closed first.
pub(crate) async fn read_status(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<Option<(u16, usize)>> {
    loop {
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response")
                })?;
            return Ok(Some((status, end + 4)));
        }
        // An answer head is a few hundred bytes: anything far larger is not
        // one, and must not grow our buffer without end.
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head over 64 KiB",
            ));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// A client frame: `first` is the first header byte (FIN, RSV1–3, opcode),
/// the payload masked as RFC 6455 requires of clients.
pub(crate) fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(first);
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= 0xffff {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    // A fixed key is as valid as a random one; the server must unmask
    // either way.
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A frame from the server: its opcode and (unmasked) payload.
#[derive(Debug)]
pub(crate) struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub(crate) const OP_CLOSE: u8 = 0x8;

/// Reads one frame, `buf` holding bytes already read (what follows the
/// frame stays there). `None`: the server closed the connection first.
/// Frames over `max` bytes are an error rather than a buffer that grows.
pub(crate) async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<Frame>> {
    loop {
        if let Some((frame, used)) = parse_frame(buf, max)? {
            buf.drain(..used);
            return Ok(Some(frame));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn parse_frame(buf: &[u8], max: usize) -> io::Result<Option<(Frame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        126 | 127 => return Ok(None),
        n => (n as u64, 2),
    };
    if len > max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte frame from the server"),
        ));
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        at += 4;
        Some([buf[at - 4], buf[at - 3], buf[at - 2], buf[at - 1]])
    } else {
        None
    };
    let end = at + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let mut payload = buf[at..end].to_vec();
    if let Some(mask) = mask {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= mask[i % 4]);
    }
    Ok(Some((Frame { opcode, payload }, end)))
}

/// The code of a close frame's payload.
pub(crate) fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// Reads frames until a close frame or the end of the connection; returns
/// how it ended as a tally label.
pub(crate) async fn read_until_close(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> String {
    loop {
        match read_frame(stream, buf, max).await {
            Ok(Some(f)) if f.opcode == OP_CLOSE => {
                return match close_code(&f.payload) {
                    Some(code) => format!("close {code}"),
                    None => "close without a code".into(),
                }
            }
            Ok(Some(_)) => continue,
            Ok(None) => return "EOF without a close frame".into(),
            Err(e) => return io_label(&e),
        }
    }
}

/// A short label for how a socket operation failed.
pub(crate) fn io_label(e: &io::Error) -> String {
    use io::ErrorKind::*;
    if e.raw_os_error() == Some(24) {
        // EMFILE: our limit, not the server's doing.
        return "local: too many open files".into();
    }
    match e.kind() {
        ConnectionReset => "reset".into(),
        BrokenPipe => "broken pipe".into(),
        ConnectionRefused => "connection refused".into(),
        ConnectionAborted => "aborted".into(),
        TimedOut => "timed out".into(),
        AddrNotAvailable | AddrInUse => "local: no port left".into(),
        UnexpectedEof => "EOF".into(),
        InvalidData => format!("invalid data: {e}"),
        _ => format!("I/O error: {e}"),
    }
}

/// A label for what a tungstenite read returned when the client expected
/// the connection to end.
pub(crate) fn ws_end_label(read: Option<Result<Message, tungstenite::Error>>) -> String {
    use tungstenite::Error;
    match read {
        Some(Ok(Message::Close(Some(c)))) => format!("close {}", u16::from(c.code)),
        Some(Ok(Message::Close(None))) => "close without a code".into(),
        Some(Ok(Message::Text(t))) => format!("text frame: {}", first_chars(&t, 60)),
        Some(Ok(other)) => format!("{} frame", kind(&other)),
        Some(Err(Error::Io(e))) => io_label(&e),
        Some(Err(Error::ConnectionClosed | Error::AlreadyClosed)) => "closed".into(),
        // tungstenite's name for a clean EOF before any close frame.
        Some(Err(Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ))) => "EOF without a close frame".into(),
        Some(Err(Error::Protocol(p))) => format!("protocol error: {p}"),
        Some(Err(e)) => format!("error: {e}"),
        None => "EOF without a close frame".into(),
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "raw",
    }
}

/// The first `n` characters of `s`, for labels built from server text.
pub(crate) fn first_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The HTTP status of a refused tungstenite handshake, if that is what
/// `e` is.
pub(crate) fn refused_status(e: &anyhow::Error) -> Option<u16> {
    match e.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Http(resp)) => Some(resp.status().as_u16()),
        _ => None,
    }
}

/// `max_message_bytes` of a `connected` frame's payload.
pub(crate) fn max_message_bytes(connected: &[u8]) -> anyhow::Result<usize> {
    let frame: serde_json::Value = serde_json::from_slice(connected)?;
    let max = frame["payload"]["max_message_bytes"]
        .as_u64()
        .context("no max_message_bytes in connected")?;
    Ok(max as usize)
}

/// Waits for connections being opened, each with the server's
/// `max_message_bytes`: the open ones and that limit; a connection that
/// failed is tallied by its reason, and `opened` under `label`.
pub(crate) async fn gather<S>(
    opening: Vec<tokio::task::JoinHandle<anyhow::Result<(S, usize)>>>,
    tally: &Tally,
    label: &str,
) -> anyhow::Result<(Vec<S>, usize)> {
    let mut sockets = Vec::with_capacity(opening.len());
    let mut max = None;
    for t in opening {
        match t.await? {
            Ok((socket, m)) => {
                max = Some(m);
                sockets.push(socket);
            }
            Err(e) => tally.add(format!(
                "could not connect: {}",
                first_chars(&format!("{e:#}"), 70)
            )),
        }
    }
    let max = max.context("no connection opened")?;
    tally.add_n(label, sockets.len() as u64);
    Ok((sockets, max))
}
