//! The hub's fan-out: one publication into N subscriber queues, and whether
//! the cost per delivery depends on how many other channels exist.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prometheus_client::registry::Registry;
use serde_json::json;
use wsgate_core::broker::NodeSink;
use wsgate_core::channels::fanout::{ChannelIndex, FrameFormat, Subscriber};
use wsgate_core::channels::publication::Publication;
use wsgate_core::connection::outbound::Outbound;
use wsgate_core::metrics::Metrics;
use wsgate_core::protocol::Encoding;

fn setup(subscribers: usize, other_channels: usize) -> (ChannelIndex, Vec<Arc<Outbound>>) {
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    let index = ChannelIndex::new(metrics);
    let mut queues = Vec::new();
    for _ in 0..subscribers {
        let q = Arc::new(Outbound::new(usize::MAX / 2));
        let s = Subscriber::new(q.clone(), FrameFormat::Envelope(Encoding::Json), None);
        s.go_live(None, &[], 0);
        index.add("bench", s);
        queues.push(q);
    }
    for i in 0..other_channels {
        let q = Arc::new(Outbound::new(1 << 20));
        let s = Subscriber::new(q, FrameFormat::Envelope(Encoding::Json), None);
        s.go_live(None, &[], 0);
        index.add(&format!("other:{i}"), s);
    }
    (index, queues)
}

fn publication(offset: u64) -> Arc<Publication> {
    let value = json!({"ts": 1_763_900_000_000_000_000u64, "pad": "x".repeat(60)});
    let data = Bytes::from(value.to_string());
    Publication::new("bench".into(), offset, "epoch".into(), data, value)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for (subs, others) in [(1000, 0), (1000, 10_000), (10_000, 0)] {
        let (index, queues) = setup(subs, others);
        let p = publication(1);
        group.throughput(Throughput::Elements(subs as u64));
        group.bench_with_input(
            BenchmarkId::new(
                format!("{subs}_subscribers"),
                format!("{others}_other_channels"),
            ),
            &subs,
            |b, _| {
                b.iter(|| {
                    index.on_publication(&p);
                    // Empty the queues as the writers would.
                    for q in &queues {
                        std::hint::black_box(q.take());
                    }
                })
            },
        );
    }
    group.finish();
}

fn encode_once(c: &mut Criterion) {
    c.bench_function("publication_new_100B", |b| {
        let value = json!({"ts": 1u64, "pad": "x".repeat(80)});
        let data = Bytes::from(value.to_string());
        b.iter(|| Publication::new("bench".into(), 1, "e".into(), data.clone(), value.clone()))
    });
}

criterion_group!(benches, fanout, encode_once);
criterion_main!(benches);
