//! The `openai` agent backend's server-sent-events reader fed an upstream
//! body in arbitrary chunks (the first byte sets their size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_agents::fuzzing::sse;
use wsgate_agents::MAX_ANSWER_BYTES;
use wsgate_core::runs::AgentEvent;

fuzz_target!(|data: &[u8]| {
    let outcome = sse(data);
    let Ok(answer) = outcome.result else {
        return;
    };
    // The answer is bounded, is the deltas in order, and is reported last.
    assert!(answer.len() <= MAX_ANSWER_BYTES);
    let (last, deltas) = outcome.events.split_last().expect("a final report");
    assert_eq!(last, &AgentEvent::FinalReport { content: answer.clone() });
    let joined: String = deltas
        .iter()
        .map(|e| match e {
            AgentEvent::PartialResult { delta } => delta.as_str(),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(joined, answer);
});
