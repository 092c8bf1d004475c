//! The TCP stream as hyper sees it: it holds back a `101 Switching
//! Protocols` response instead of writing it, so the connection task writes
//! it together with the connection's first frames (`connected`) in one
//! `writev`, one TCP segment, instead of two system calls and two segments
//! per handshake.
//!
//! Only a 101 the server has announced is held: the upgrade arms the
//! stream's [`Switch`] (a request extension) just before answering, and the
//! next write that is exactly a 101 head is kept, once. Bytes are never held
//! for what they look like alone (a response body may contain anything).
//! Everything else passes straight through, vectored as hyper writes it.
//! The held bytes leave with the stream when the upgrade hands it over
//! (`into_parts`) and go first into the frame codec's write queue.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How hyper starts a 101 response.
const SWITCHING: &[u8] = b"HTTP/1.1 101 ";

/// Arms an [`HttpIo`] to hold the next 101 response it writes. The listener
/// puts one in every request's extensions; `Upgrade::respond` arms it.
#[derive(Debug, Clone, Default)]
pub struct Switch(Arc<AtomicBool>);

impl Switch {
    pub fn arm(&self) {
        self.0.store(true, Ordering::Release);
    }
}

#[derive(Debug)]
pub struct HttpIo {
    tcp: TcpStream,
    switch: Switch,
    /// A 101 response, not written yet.
    held: Bytes,
}

impl HttpIo {
    /// The stream, and the switch for its requests' extensions.
    pub fn new(tcp: TcpStream) -> (Self, Switch) {
        let switch = Switch::default();
        let io = HttpIo {
            tcp,
            switch: switch.clone(),
            held: Bytes::new(),
        };
        (io, switch)
    }

    /// The stream and the 101 response it holds (empty if none).
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.tcp, self.held)
    }

    /// Keeps `head` if it is the 101 the switch announced (whole: it ends
    /// the head, and a 101 has no body).
    fn hold(&mut self, head: &[u8]) -> bool {
        let announced = head.starts_with(SWITCHING)
            && head.ends_with(b"\r\n\r\n")
            && self.switch.0.swap(false, Ordering::AcqRel);
        if announced {
            self.held = Bytes::copy_from_slice(head);
        }
        announced
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
        if self.hold(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_write_held(cx))?;
        let mut parts = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(head), None) = (parts.next(), parts.next()) {
            if self.hold(head) {
                return Poll::Ready(Ok(head.len()));
            }
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A held 101 stays held: flushing it is the connection task's.
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";

    async fn pair() -> (HttpIo, Switch, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, server) = tokio::join!(client, listener.accept());
        let (io, switch) = HttpIo::new(server.unwrap().0);
        (io, switch, client.unwrap())
    }

    #[tokio::test]
    async fn an_announced_101_is_held_and_nothing_else() {
        let (mut io, switch, mut client) = pair().await;
        // Not announced: a body that looks like a 101 goes out as it is.
        io.write_all(HEAD).await.unwrap();
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        switch.arm();
        // Announced, but not a whole 101 head: passes too.
        io.write_all(b"HTTP/1.1 101 partial").await.unwrap();
        io.write_all(HEAD).await.unwrap();
        io.flush().await.unwrap();
        let (tcp, held) = io.into_parts();
        assert_eq!(&held[..], HEAD);
        drop(tcp);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let sent = [HEAD, b"HTTP/1.1 200 OK\r\n\r\n", b"HTTP/1.1 101 partial"].concat();
        assert_eq!(got, sent, "everything but the announced 101");
    }

    #[tokio::test]
    async fn a_vectored_101_is_held_and_a_write_after_it_goes_after_it() {
        let (mut io, switch, mut client) = pair().await;
        switch.arm();
        let bufs = [IoSlice::new(&[]), IoSlice::new(HEAD)];
        let n = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write_vectored(cx, &bufs))
            .await
            .unwrap();
        assert_eq!(n, HEAD.len());
        // Held once: the next 101 is not.
        io.write_all(b"later").await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [HEAD, b"later"].concat());
    }
}
