//! Logging set-up: text or JSON through `tracing`, level from `RUST_LOG`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines queued for the log thread before new ones are dropped.
const BUFFERED_LINES: usize = 128_000;

/// Directives added after `RUST_LOG`, so no level it sets can undo them:
/// tungstenite logs whole frames at trace level, `refresh_token` tokens
/// included.
const ALWAYS: &[&str] = &["tungstenite=info", "tokio_tungstenite=info"];

/// The drop counter of the process's log writer. The subscriber is
/// process-wide by tracing's design, so its counter is too; the metrics
/// registry reads it through [`LogDrops`].
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the subscriber. Lines are written to stderr by a background
/// thread in batches (one `write` per batch, not per line, off the
/// connection tasks); the returned guard flushes what is left when dropped,
/// so `main` keeps it until exit.
///
/// The buffer is lossy: when stderr stalls and it fills, lines are dropped
/// and counted (`wsgate_log_lines_dropped_total`) instead of blocking
/// runtime threads, which once froze the server. Rejected handshakes are
/// logged at most once per reason and address per window (`audit`), so a
/// flood cannot fill it by itself.
pub fn init(format: LogFormat) -> WorkerGuard {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in ALWAYS {
        // The directives are constants that parse.
        filter = filter.add_directive(directive.parse().expect("valid directive"));
    }
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("wsgate-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    // `try_init` fails only if a subscriber is already set (tests).
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    guard
}

/// `wsgate_log_lines_dropped_total`: log lines the writer dropped because
/// its buffer was full (0 when logging was not set up by [`init`]).
#[derive(Debug)]
pub struct LogDrops;

impl Collector for LogDrops {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dropped = DROPPED.get().map_or(0, |c| c.dropped_lines() as u64);
        let counter = ConstCounter::new(dropped);
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log writer's buffer was full",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}
