//! The client envelope (SPEC §4): a frame decoded as JSON or MessagePack,
//! then read as a command, then the channel name checks a command meets
//! first. The first byte picks the encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_core::channels::names::{namespace, pattern_matches, valid_name};
use wsgate_protocol::{ClientFrame, Command, Encoding};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let encoding = if selector & 1 == 0 {
        Encoding::Json
    } else {
        Encoding::Msgpack
    };
    let Ok(frame) = ClientFrame::decode(encoding, bytes) else {
        return;
    };
    let _ = frame.id_str();
    let _ = frame.payload_object();
    let channel = match Command::parse(&frame.kind, frame.payload.clone()) {
        Ok(Command::Subscribe(s)) => s.channel,
        Ok(Command::Publish(p)) => p.channel,
        Ok(Command::History(h)) => h.channel,
        Ok(Command::Unsubscribe(c) | Command::Presence(c)) => c.channel,
        _ => return,
    };
    if valid_name(&channel) {
        let _ = namespace(&channel);
        let _ = pattern_matches("user:*", &channel);
        let _ = pattern_matches(&channel, "user:alice");
    }
});
