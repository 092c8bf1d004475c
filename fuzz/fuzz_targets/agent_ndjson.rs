//! The `http` agent backend's NDJSON reader fed an upstream body in
//! arbitrary chunks (the first byte sets their size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_agents::fuzzing::ndjson;
use wsgate_core::runs::AgentEvent;

fuzz_target!(|data: &[u8]| {
    let Some((&size, body)) = data.split_first() else {
        return;
    };
    let chunks = body
        .chunks(usize::from(size).max(1))
        .map(<[u8]>::to_vec)
        .collect();
    let outcome = ndjson(chunks);
    if let Ok(answer) = outcome.result {
        // A run's answer is its final report, the last event passed on.
        assert_eq!(
            outcome.events.last(),
            Some(&AgentEvent::FinalReport { content: answer })
        );
    }
});
