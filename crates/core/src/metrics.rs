//! Typed Prometheus metrics, registered once per server instance (no global
//! registry). Every label is from a bounded set: never user ids, channel
//! names or tokens.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use wsgate_protocol::{Command, SERVER_TYPES};

type Labeled = Family<[(&'static str, &'static str); 1], Counter>;
type Labeled2 = Family<[(&'static str, &'static str); 2], Counter>;
type LabeledGauge = Family<[(&'static str, &'static str); 1], Gauge>;

/// Maps a client-controlled type name onto a bounded label value: the
/// protocol's command and server frame types, anything else `unknown`, so
/// a client cannot create label values.
pub fn type_label(kind: &str) -> &'static str {
    Command::TYPES
        .iter()
        .chain(SERVER_TYPES)
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("unknown")
}

/// Recent publish → write latencies, for the percentiles of the `metrics`
/// channel. Bounded: at most `LATENCY_WINDOW` samples per interval (samples
/// past it are dropped; one is taken per written batch, not per frame).
#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: std::sync::Mutex<Vec<f64>>,
}

const LATENCY_WINDOW: usize = 20_000;

impl LatencyWindow {
    pub fn record(&self, secs: f64) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < LATENCY_WINDOW {
            s.push(secs);
        }
    }

    /// p50, p99 and p999 in milliseconds since the last call, and the count.
    pub fn take_percentiles(&self) -> (f64, f64, f64, usize) {
        let mut s = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        if s.is_empty() {
            return (0.0, 0.0, 0.0, 0);
        }
        s.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize] * 1000.0;
        (at(0.5), at(0.99), at(0.999), s.len())
    }
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub connections_active: Gauge,
    /// `wsgate_connections_open{protocol}`: open connections by what they
    /// speak (`wsgate.v1.json`, `wsgate.v1.msgpack`, `stream`,
    /// `graphql-transport-ws`).
    pub connections_open: LabeledGauge,
    /// `wsgate_graphql_operations_total{type}`: `query`, `mutation`,
    /// `subscription`, over HTTP and WebSocket.
    pub graphql_operations: Labeled,
    /// `wsgate_graphql_errors_total{code}`: GraphQL errors sent, by
    /// `extensions.code`.
    pub graphql_errors: Labeled,
    /// `wsgate_graphql_shared_executions`: shared subscription executions
    /// running (each resolves a publication once for all its subscribers).
    pub graphql_shared_executions: Gauge,
    /// `wsgate_graphql_shared_subscribers`: subscriptions served by them.
    pub graphql_shared_subscribers: Gauge,
    /// `wsgate_runtime_alive_tasks`: tasks alive in the tokio runtime, set
    /// when `/metrics` is read: back to its idle value once clients leave,
    /// or something leaks (the soak checks it).
    pub runtime_alive_tasks: Gauge,
    /// `wsgate_connections_total{result="accepted"|"rejected"}`.
    pub connections: Labeled,
    /// `wsgate_handshake_rejections_total{reason}`.
    pub handshake_rejections: Labeled,
    /// `wsgate_messages_in_total{type}`.
    pub messages_in: Labeled,
    /// `wsgate_messages_out_total{type}`.
    pub messages_out: Labeled,
    /// `wsgate_errors_total{code}`: `error` frames sent.
    pub errors: Labeled,
    /// `wsgate_security_violations_total{kind}`.
    pub security_violations: Labeled,
    /// `wsgate_disconnects_total{code}`: closes by close code.
    pub disconnects: Labeled,
    pub connection_duration: Histogram,
    pub publish_write_latency: Histogram,
    pub broker_errors: Counter,
    pub storage_errors: Counter,
    /// `wsgate_agent_runs_total{backend, status}`: runs ended, by backend
    /// and `completed` / `stopped` / `failed`.
    pub agent_runs: Labeled2,
    /// From a run's start to its end.
    pub agent_run_duration: Histogram,
    /// From a run's start (recorded, about to call the backend) to the
    /// backend's first event.
    pub agent_first_event: Histogram,
    /// `wsgate_deliveries_total`: publications handed to subscriber queues.
    pub deliveries: Counter,
    /// `wsgate_publications_total`.
    pub publications: Counter,
    /// Totals across types, for the `metrics` channel's rates.
    pub messages_in_total: Counter,
    pub messages_out_total: Counter,
    pub latency_window: std::sync::Arc<LatencyWindow>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `wsgate_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            connections_active: Gauge::default(),
            connections_open: LabeledGauge::default(),
            graphql_operations: Labeled::default(),
            graphql_errors: Labeled::default(),
            graphql_shared_executions: Gauge::default(),
            graphql_shared_subscribers: Gauge::default(),
            runtime_alive_tasks: Gauge::default(),
            connections: Labeled::default(),
            handshake_rejections: Labeled::default(),
            messages_in: Labeled::default(),
            messages_out: Labeled::default(),
            errors: Labeled::default(),
            security_violations: Labeled::default(),
            disconnects: Labeled::default(),
            // 10 ms .. ~11 h
            connection_duration: Histogram::new(exponential_buckets(0.01, 4.0, 12)),
            // 50 µs .. ~1.6 s
            publish_write_latency: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            broker_errors: Counter::default(),
            storage_errors: Counter::default(),
            agent_runs: Labeled2::default(),
            // 10 ms .. ~45 min
            agent_run_duration: Histogram::new(exponential_buckets(0.01, 3.0, 12)),
            // 1 ms .. ~65 s
            agent_first_event: Histogram::new(exponential_buckets(0.001, 3.0, 11)),
            deliveries: Counter::default(),
            publications: Counter::default(),
            messages_in_total: Counter::default(),
            messages_out_total: Counter::default(),
            latency_window: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("wsgate");
        // Name (the `wsgate_` prefix and, for counters, `_total` are added),
        // help, metric.
        macro_rules! register {
            ($($name:literal, $help:literal, $metric:ident;)*) => {
                $( r.register($name, $help, m.$metric.clone()); )*
            };
        }
        register! {
            "connections_active", "Open WebSocket connections", connections_active;
            "connections", "WebSocket handshakes by result", connections;
            "connections_open", "Open WebSocket connections by protocol", connections_open;
            "graphql_operations", "GraphQL operations by type", graphql_operations;
            "graphql_errors", "GraphQL errors sent, by code", graphql_errors;
            "graphql_shared_executions", "Shared GraphQL subscription executions running", graphql_shared_executions;
            "graphql_shared_subscribers", "GraphQL subscriptions served by shared executions", graphql_shared_subscribers;
            "handshake_rejections", "Refused handshakes by reason", handshake_rejections;
            "runtime_alive_tasks", "Tasks alive in the runtime", runtime_alive_tasks;
            "messages_in", "Frames received by type", messages_in;
            "messages_out", "Frames sent by type", messages_out;
            "errors", "Error frames sent by code", errors;
            "security_violations", "Security violations by kind", security_violations;
            "disconnects", "Connections closed by close code", disconnects;
            "connection_duration_seconds", "How long connections stayed open", connection_duration;
            "publish_write_latency_seconds",
                "Time from publish to the write of the frame to a subscriber",
                publish_write_latency;
            "broker_errors", "Errors talking to the broker", broker_errors;
            "deliveries", "Publications handed to subscriber queues", deliveries;
            "publications", "Publications accepted", publications;
            "storage_errors", "Errors talking to storage", storage_errors;
            "agent_runs", "Agent runs ended, by backend and status", agent_runs;
            "agent_run_duration_seconds", "How long agent runs took", agent_run_duration;
            "agent_time_to_first_event_seconds",
                "Time from a run's start to the agent's first event",
                agent_first_event;
        }
        m
    }

    pub fn count(family: &Labeled, label: &'static str, value: &'static str) {
        family.get_or_create(&[(label, value)]).inc();
    }

    pub fn message_in(&self, kind: &str) {
        self.messages_in_total.inc();
        Self::count(&self.messages_in, "type", type_label(kind));
    }

    pub fn message_out(&self, kind: &str) {
        self.messages_out_total.inc();
        Self::count(&self.messages_out, "type", type_label(kind));
    }

    /// One publish → write latency sample.
    pub fn observe_publish_latency(&self, secs: f64) {
        self.publish_write_latency.observe(secs);
        self.latency_window.record(secs);
    }

    /// One run ended: its backend, status and duration.
    pub fn run_ended(&self, backend: &'static str, status: &'static str, secs: f64) {
        self.agent_runs
            .get_or_create(&[("backend", backend), ("status", status)])
            .inc();
        self.agent_run_duration.observe(secs);
    }

    pub fn error(&self, code: &'static str) {
        Self::count(&self.errors, "code", code);
    }

    pub fn violation(&self, kind: &'static str) {
        Self::count(&self.security_violations, "kind", kind);
    }

    pub fn rejection(&self, reason: &'static str) {
        Self::count(&self.handshake_rejections, "reason", reason);
        Self::count(&self.connections, "result", "rejected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_share_one_label() {
        assert_eq!(type_label("ping"), "ping");
        assert_eq!(type_label("stop_agent"), "stop_agent");
        assert_eq!(type_label("agent_completed"), "agent_completed");
        assert_eq!(type_label("drop table"), "unknown");
    }
}
