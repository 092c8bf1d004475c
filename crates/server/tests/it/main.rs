//! wsgate's integration tests: one binary, a real server per test, real
//! clients over real sockets.

mod browser;
mod channels;
mod chaos;
mod cluster;
mod compression;
mod connection;
mod dashboard;
mod graphql;
mod handshake;
mod hardening;
mod harness;
mod jwks;
mod ops;
mod process;
mod runs;
mod sdk;
mod storage;
mod threads;
