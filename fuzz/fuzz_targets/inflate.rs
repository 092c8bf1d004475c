//! The inbound frame layer as a connection runs it: arbitrary bytes from
//! the socket through the permessage-deflate inflater (negotiated or not)
//! and the server's frame codec (`transport::frames`, its own limits), read until the
//! stream fails or ends. The first byte sets how many bytes each socket
//! read returns (frames split anywhere), the second whether deflate was
//! negotiated.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wsgate::transport::{frames, TransportLimits};
use wsgate_core::limits::Limits;
use wsgate_deflate::{Deflate, Inflating};

/// A socket that yields `data` in reads of at most `chunk` bytes and
/// swallows writes (pongs, close frames).
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct Setup {
    runtime: tokio::runtime::Runtime,
    limits: TransportLimits,
    deflate: std::sync::Arc<Deflate>,
    offer: HeaderMap,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let limits = TransportLimits::new(&Limits::default(), Duration::ZERO);
        let mut offer = HeaderMap::new();
        offer.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
        );
        Setup {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            deflate: Deflate::new(1, 0, limits.max_message_bytes),
            limits,
            offer,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [chunk, mode, rest @ ..] = data else {
        return;
    };
    let s = setup();
    let negotiated = if mode & 1 == 1 {
        Some(s.deflate.negotiate(&s.offer).expect("the offer is acceptable"))
    } else {
        None
    };
    let io = Inflating::new(
        Chunked {
            data: rest,
            chunk: usize::from(*chunk).max(1),
        },
        negotiated,
    );
    s.runtime.block_on(async {
        let mut ws = frames(io, Default::default(), Default::default(), &s.limits);
        while let Some(Ok(message)) = ws.next().await {
            // The limit holds for what was inflated, not only for what
            // came off the wire.
            assert!(message.len() <= s.limits.max_message_bytes);
        }
    });
});
