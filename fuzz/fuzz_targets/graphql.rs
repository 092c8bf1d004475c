//! A graphql-transport-ws client message through the checks that run
//! before any resolver: the message parse, the size limit, the operation's
//! shape, and the document's parse and validation with the server's depth
//! and complexity limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wsgate_graphql::fuzzing::message(data);
});
