//! An echo server on `ws://ADDR/` for the Autobahn conformance suite. It
//! runs the same transport as `/ws` (`wsgate::transport::drive`), with
//! authentication off and the message limit raised to 32 MiB so the suite's
//! 16 MiB cases fit.
//!
//!     cargo run --release --example echo -- 127.0.0.1:9001

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::routing::get;
use axum::Router;
use wsgate::transport::{self, Connection, TransportLimits};
use wsgate_core::handler::Echo;
use wsgate_core::outbound::Outbound;

const LIMITS: TransportLimits = TransportLimits {
    max_message_bytes: 32 << 20,
    // Room for one echoed maximum-size message plus what is in flight.
    outbound_queue_bytes: 80 << 20,
    heartbeat: Duration::from_secs(30),
    heartbeat_timeout: Duration::from_secs(75),
    write_delay: Duration::ZERO,
};

async fn echo(upgrade: WebSocketUpgrade) -> axum::response::Response {
    transport::configure(upgrade, &LIMITS).on_upgrade(|socket| {
        let outbound = std::sync::Arc::new(Outbound::new(LIMITS.outbound_queue_bytes));
        let handler = Echo::new(outbound.clone());
        Box::pin(transport::drive(Box::new(Connection {
            socket,
            handler,
            outbound,
            limits: std::sync::Arc::new(LIMITS),
            on_end: |_| {},
        })))
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("echo listening on ws://{addr}/");
    axum::serve(listener, Router::new().route("/", get(echo))).await?;
    Ok(())
}
