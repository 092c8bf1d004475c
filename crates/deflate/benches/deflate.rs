//! permessage-deflate: what compressing one outbound frame costs. A
//! publication pays it once for all its subscribers (`SharedFrame`); a
//! reply pays it per frame.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{header, HeaderMap, HeaderValue};
use wsgate_deflate::Deflate;

/// A 1 KiB `message` frame with text-like JSON data.
fn frame() -> Vec<u8> {
    let rows: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"site":"eu-west-{i}","status":"ok","latency_ms":{},"cpu":0.{}}}"#,
                17 + i * 3,
                i * 7 % 10
            )
        })
        .collect();
    format!(
        r#"{{"type":"message","payload":{{"channel":"metrics","offset":4711,"epoch":"a1b2c3","data":{{"rows":[{}]}}}}}}"#,
        rows.join(",")
    )
    .into_bytes()
}

fn compression(c: &mut Criterion) {
    let frame = frame();
    let mut offer = HeaderMap::new();
    offer.insert(
        header::SEC_WEBSOCKET_EXTENSIONS,
        HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
    );
    for level in [1, 6] {
        let negotiated = Deflate::new(level, 256, 1 << 20).negotiate(&offer).unwrap();
        let compressed = negotiated.compress(&frame).unwrap();
        eprintln!(
            "level {level}: {} B frame -> {} B compressed",
            frame.len(),
            compressed.len()
        );
        c.bench_function(&format!("compress_1k_frame_level_{level}"), |b| {
            b.iter(|| negotiated.compress(std::hint::black_box(&frame)).unwrap())
        });
    }
}

criterion_group!(benches, compression);
criterion_main!(benches);
