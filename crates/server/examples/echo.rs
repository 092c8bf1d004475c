//! An echo server on `ws://ADDR/` for the Autobahn conformance suite. It
//! runs the same upgrade and transport as `/ws` (`wsgate::transport`), with
//! authentication off and the message limit raised to 32 MiB so the suite's
//! 16 MiB cases fit. permessage-deflate is offered as `/ws` offers it with
//! `transport.compression = true`; `--no-compression` turns it off.
//!
//!     cargo run --release --example echo -- 127.0.0.1:9001

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsgate::transport::upgrade::Upgrade;
use wsgate::transport::{self, Connection, TransportLimits};
use wsgate_core::connection::handler::Echo;
use wsgate_core::connection::outbound::Outbound;
use wsgate_core::limits::Limits;
use wsgate_core::metrics::Metrics;
use wsgate_deflate::Deflate;

const LIMITS: TransportLimits = TransportLimits {
    max_message_bytes: 32 << 20,
    // Room for one echoed maximum-size message plus what is in flight.
    outbound_queue_bytes: 80 << 20,
    heartbeat: Duration::from_secs(30),
    heartbeat_timeout: Duration::from_secs(75),
    write_delay: Duration::ZERO,
};

async fn echo(
    transport: Arc<transport::Shared>,
    deflate: Option<Arc<Deflate>>,
    request: Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    let upgrade = match Upgrade::from_parts(&mut parts) {
        Ok(u) => u,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let negotiated = deflate.and_then(|d| d.negotiate(&parts.headers));
    let codec = negotiated.clone();
    upgrade.respond(&LIMITS, None, negotiated, move |socket| {
        let outbound = Arc::new(Outbound::new(LIMITS.outbound_queue_bytes));
        let handler = Echo::new(outbound.clone());
        tokio::spawn(transport::drive(Box::new(Connection {
            socket,
            handler,
            outbound,
            transport,
            deflate: codec,
            on_end: |_| {},
        })));
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:9001".parse()?;
    let mut compression = true;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--no-compression" => compression = false,
            a => addr = a.parse()?,
        }
    }
    // The server's defaults: level 1, frames under 256 bytes uncompressed.
    let deflate = compression.then(|| Deflate::new(1, 256, LIMITS.max_message_bytes));
    let listener = wsgate::listener::bind(addr)?;
    eprintln!("echo listening on ws://{addr}/ (permessage-deflate: {compression})");
    let transport = transport::Shared::start(LIMITS);
    let app = Router::new().route(
        "/",
        get(move |req| echo(transport.clone(), deflate.clone(), req)),
    );
    // The server's own accept loop (hyper's HTTP/1 with a header timeout),
    // so the suite tests the path `/ws` connections take; the suite opens
    // hundreds of connections from one address, one at a time.
    let limits = Limits {
        pending_connections_per_ip: 10_000,
        ..Limits::default()
    };
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    wsgate::listener::serve(
        listener,
        app,
        limits,
        metrics,
        CancellationToken::new(),
        TaskTracker::new(),
    )
    .await;
    Ok(())
}
