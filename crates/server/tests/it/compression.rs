//! permessage-deflate on `/ws`, checked on the wire: a client written here
//! frame by frame, so the tests see RSV1, the negotiated header and the
//! compressed bytes themselves (tungstenite's client has no deflate).
//! Interoperability with an independent implementation is Autobahn's
//! 12.* and 13.* cases, run in `.ci/run`.

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const TEXT: u8 = 1;
const TRAILER: [u8; 4] = [0, 0, 0xff, 0xff];

/// One WebSocket client connection, spoken byte by byte.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame as it came off the wire.
struct RawFrame {
    first_byte: u8,
    payload: Vec<u8>,
}

impl RawFrame {
    fn rsv1(&self) -> bool {
        self.first_byte & RSV1 != 0
    }

    fn opcode(&self) -> u8 {
        self.first_byte & 0x0f
    }

    /// The frame's JSON, inflated first when RSV1 is set.
    fn json(&self) -> Value {
        let bytes = if self.rsv1() {
            inflate(&self.payload)
        } else {
            self.payload.clone()
        };
        serde_json::from_slice(&bytes).expect("a JSON frame")
    }

    fn close_code(&self) -> u16 {
        assert_eq!(self.opcode(), 8, "a close frame");
        u16::from_be_bytes([self.payload[0], self.payload[1]])
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&TRAILER));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(data.len() * 20 + 1024);
    let input = [data, &TRAILER].concat();
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, input.len(), "output room was enough");
    out
}

impl RawClient {
    /// Opens `/ws` as `user`, offering `extensions` when given; returns the
    /// client and the response head (status line and headers, lowercased).
    async fn connect(server: &TestServer, user: &str, extensions: Option<&str>) -> (Self, String) {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let offer = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {}\r\n{offer}\r\n",
            server.addr,
            token(user)
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawClient {
            stream,
            buf: Vec::new(),
        };
        let head = loop {
            if let Some(end) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(client.buf[..end].to_vec()).unwrap();
                client.buf.drain(..end + 4);
                break head.to_ascii_lowercase();
            }
            client.fill().await;
        };
        assert!(head.starts_with("http/1.1 101"), "{head}");
        (client, head)
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("bytes within 10 s")
            .unwrap();
        assert!(n > 0, "the server closed the TCP connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Sends one masked frame.
    async fn send(&mut self, first_byte: u8, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first_byte];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn send_json(&mut self, v: Value, compressed: bool) {
        let text = v.to_string();
        if compressed {
            self.send(FIN | RSV1 | TEXT, &deflate(text.as_bytes()))
                .await;
        } else {
            self.send(FIN | TEXT, text.as_bytes()).await;
        }
    }

    /// The next frame other than ping/pong.
    async fn next(&mut self) -> RawFrame {
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                if matches!(frame.opcode(), 9 | 10) {
                    continue;
                }
                return frame;
            }
            self.fill().await;
        }
    }

    /// The next JSON frame whose `id` is `id`.
    async fn reply(&mut self, id: &str) -> (RawFrame, Value) {
        loop {
            let frame = self.next().await;
            let v = frame.json();
            if v["id"] == id {
                return (frame, v);
            }
        }
    }
}

/// An unmasked server frame at the start of `buf`, and its length.
fn parse(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, header) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(header..header + len)?.to_vec();
    Some((
        RawFrame {
            first_byte: buf[0],
            payload,
        },
        header + len,
    ))
}

async fn compressing_server() -> TestServer {
    TestServer::with(|c| c.transport.compression = true).await
}

#[tokio::test]
async fn deflate_is_agreed_only_when_enabled() {
    let server = compressing_server().await;
    let (_, head) = RawClient::connect(
        &server,
        "alice",
        Some("permessage-deflate; client_max_window_bits"),
    )
    .await;
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ) || head.ends_with(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{head}"
    );
    // An offer we cannot honour (a window under 32 KiB for what the server
    // sends) leaves the connection uncompressed rather than refused; the
    // next acceptable offer in the list is taken instead.
    let (_, head) = RawClient::connect(
        &server,
        "alice",
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    let (_, head) = RawClient::connect(
        &server,
        "alice",
        Some("permessage-deflate; server_max_window_bits=10, permessage-deflate"),
    )
    .await;
    assert!(head.contains("sec-websocket-extensions"), "{head}");
    // No offer, no extension.
    let (_, head) = RawClient::connect(&server, "bob", None).await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    server.stop().await;

    let plain = TestServer::start().await;
    let (_, head) = RawClient::connect(&plain, "alice", Some("permessage-deflate")).await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    plain.stop().await;
}

#[tokio::test]
async fn compressed_frames_flow_both_ways() {
    let server = compressing_server().await;
    let (mut ws, _) = RawClient::connect(&server, "alice", Some("permessage-deflate")).await;
    // `connected` is under compression_min_bytes (256): sent as is.
    let connected = ws.next().await;
    assert!(!connected.rsv1());
    assert_eq!(connected.json()["type"], "connected");

    // A compressed command, then a plain one: both are understood.
    ws.send_json(
        json!({"type": "subscribe", "id": "s1", "payload": {"channel": "news"}}),
        true,
    )
    .await;
    let (_, reply) = ws.reply("s1").await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    ws.send_json(json!({"type": "ping", "id": "p1"}), false)
        .await;
    assert_eq!(ws.reply("p1").await.1["type"], "pong");

    // A fragmented compressed command: RSV1 on the first frame only.
    let compressed = deflate(json!({"type": "ping", "id": "p2"}).to_string().as_bytes());
    let (a, b) = compressed.split_at(compressed.len() / 2);
    ws.send(RSV1 | TEXT, a).await;
    ws.send(FIN, b).await;
    assert_eq!(ws.reply("p2").await.1["type"], "pong");

    // A large publication arrives compressed, and smaller on the wire.
    let data = json!({"rows": (0..100).map(|i| json!({"id": i, "status": "ok", "site": "abc"})).collect::<Vec<_>>()});
    api_publish(&server, "news", data.clone()).await;
    let frame = ws.next().await;
    assert!(
        frame.rsv1(),
        "a {}-byte frame is compressed",
        frame.payload.len()
    );
    let message = frame.json();
    assert_eq!(message["type"], "message");
    assert_eq!(message["payload"]["data"], data);
    let plain_len = data.to_string().len();
    assert!(
        frame.payload.len() * 4 < plain_len,
        "{} compressed bytes for {plain_len} bytes of data",
        frame.payload.len()
    );
    server.stop().await;
}

#[tokio::test]
async fn decompressed_size_is_what_the_limit_applies_to() {
    let server = compressing_server().await;
    let (mut ws, _) = RawClient::connect(&server, "alice", Some("permessage-deflate")).await;
    ws.next().await;
    // 100 KiB that deflates to a few hundred bytes: over the 8192-byte
    // limit only once inflated.
    let padding = "a".repeat(100 * 1024);
    let bomb = deflate(
        json!({"type": "ping", "pad": padding})
            .to_string()
            .as_bytes(),
    );
    assert!(bomb.len() < 1024, "{} bytes", bomb.len());
    ws.send(FIN | RSV1 | TEXT, &bomb).await;
    assert_eq!(ws.next().await.close_code(), 1009);
    server.stop().await;
}

#[tokio::test]
async fn data_that_does_not_inflate_closes_with_1007() {
    let server = compressing_server().await;
    let (mut ws, _) = RawClient::connect(&server, "alice", Some("permessage-deflate")).await;
    ws.next().await;
    ws.send(FIN | RSV1 | TEXT, &[0xff; 32]).await;
    assert_eq!(ws.next().await.close_code(), 1007);
    server.stop().await;
}

#[tokio::test]
async fn rsv1_without_agreement_is_a_protocol_error() {
    let server = compressing_server().await;
    // Compression is on, but this client did not offer it.
    let (mut ws, _) = RawClient::connect(&server, "alice", None).await;
    ws.next().await;
    let compressed = deflate(json!({"type": "ping", "id": "p"}).to_string().as_bytes());
    ws.send(FIN | RSV1 | TEXT, &compressed).await;
    assert_eq!(ws.next().await.close_code(), 1002);
    server.stop().await;
}
