//! Integration tests of the agent backends against scripted local upstreams
//! that stream the way the real ones do: piece by piece, holding the rest
//! back until the test lets it go.

mod http;
mod openai;
mod support;
