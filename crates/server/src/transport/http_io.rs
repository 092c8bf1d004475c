//! The TCP stream as hyper sees it: it holds back a `101 Switching
//! Protocols` response instead of writing it, so the connection task writes
//! it together with the connection's first frames (`connected`) in one
//! `writev`, one TCP segment, instead of two system calls and two segments
//! per handshake.
//!
//! Everything else passes straight through. The held bytes leave with the
//! stream when the upgrade hands it over (`into_parts`) and go first into
//! the frame codec's write queue; a connection whose upgrade fails after the
//! 101 (there is no such path but a dropped task) is closed without it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How hyper starts a 101 response (it writes the whole head at once: see
/// `is_write_vectored`).
const SWITCHING: &[u8] = b"HTTP/1.1 101 ";

#[derive(Debug)]
pub struct HttpIo {
    tcp: TcpStream,
    /// A 101 response, not written yet.
    held: Bytes,
}

impl HttpIo {
    pub fn new(tcp: TcpStream) -> Self {
        HttpIo {
            tcp,
            held: Bytes::new(),
        }
    }

    /// The stream and the 101 response it holds (empty if none).
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.tcp, self.held)
    }

    /// Writes what is held, if anything: only if hyper writes again after
    /// a 101, which it does not, but order must hold if it ever does.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = self.held.split_to(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for HttpIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for HttpIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_write_held(cx))?;
        if buf.starts_with(SWITCHING) {
            self.held = Bytes::copy_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A held 101 stays held: flushing it is the connection task's.
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    /// Not vectored, so hyper gathers a response's head into one buffer
    /// and writes it with one `poll_write`: the 101 is recognised whole.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (HttpIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, server) = tokio::join!(client, listener.accept());
        (HttpIo::new(server.unwrap().0), client.unwrap())
    }

    #[tokio::test]
    async fn a_101_is_held_and_other_responses_pass() {
        let (mut io, mut client) = pair().await;
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 19];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\n");

        let head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        io.write_all(head).await.unwrap();
        io.flush().await.unwrap();
        let (tcp, held) = io.into_parts();
        assert_eq!(&held[..], head);
        drop(tcp);
        // Nothing of the 101 reached the client: the stream ends after the
        // 200.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn a_write_after_a_held_101_goes_after_it() {
        let (mut io, mut client) = pair().await;
        io.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        io.write_all(b"later").await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "HTTP/1.1 101 Switching Protocols\r\n\r\nlater");
    }
}
