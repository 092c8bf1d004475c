//! wsgate's server: configuration, authentication, the WebSocket transport,
//! HTTP endpoints and the `run` entry point.

pub mod audit;
pub mod auth;

pub mod cli;
pub mod config;
pub mod handshake;
pub mod http;
pub mod listener;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod transport;

pub use server::run;
