//! The `http` agent backend's NDJSON reader fed an upstream body in
//! arbitrary chunks (the first byte sets their size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_agents::fuzzing::ndjson;
use wsgate_core::runs::AgentEvent;

fuzz_target!(|data: &[u8]| {
    let outcome = ndjson(data);
    if let Ok(answer) = outcome.result {
        // A run's answer is its final report, the last event passed on.
        assert_eq!(
            outcome.events.last(),
            Some(&AgentEvent::FinalReport { content: answer })
        );
    }
});
