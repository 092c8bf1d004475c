//! Entry points for `cargo fuzz` (feature `fuzzing`, see `fuzz/`): the two
//! upstream stream parsers fed arbitrary chunks, exactly as a response body
//! would arrive.

use bytes::Bytes;
use futures_util::stream;
use tokio::sync::mpsc;
use wsgate_core::runs::{AgentError, AgentEvent};

use crate::openai::ReadError;

/// What a parser made of a body: its result and the events it passed on.
pub struct Outcome {
    pub result: Result<String, AgentError>,
    pub events: Vec<AgentEvent>,
}

/// The `http` backend's NDJSON reader over `data`: its first byte sets the
/// size of the chunks the rest arrives in.
pub fn ndjson(data: &[u8]) -> Outcome {
    let body = stream::iter(chunks(data).map(Ok));
    drive(|events| async move { crate::http::read_events(body, &events).await })
}

/// The `openai` backend's SSE reader over `data`, chunked as for
/// [`ndjson`].
pub fn sse(data: &[u8]) -> Outcome {
    let body = stream::iter(chunks(data).map(Ok::<_, ReadError>));
    drive(|events| async move { crate::openai::read_stream(body, &events).await })
}

/// The body after the first byte, in chunks of that many bytes (1–255):
/// a line or an event split anywhere, as the network may split it.
fn chunks(data: &[u8]) -> impl Iterator<Item = Bytes> + '_ {
    let (size, body) = data.split_first().map_or((1, &[][..]), |(s, b)| (*s, b));
    body.chunks(usize::from(size).max(1))
        .map(Bytes::copy_from_slice)
}

/// Runs a reader on a current-thread runtime while collecting its events
/// (the channel is small, as the run manager's is, so backpressure is part
/// of what runs).
fn drive<F, Fut>(read: F) -> Outcome
where
    F: FnOnce(mpsc::Sender<AgentEvent>) -> Fut,
    Fut: std::future::Future<Output = Result<String, AgentError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let (tx, mut rx) = mpsc::channel(4);
        let collect = async {
            let mut events = Vec::new();
            while let Some(event) = rx.recv().await {
                events.push(event);
            }
            events
        };
        let (result, events) = tokio::join!(read(tx), collect);
        Outcome { result, events }
    })
}
