//! The upgrade request as the server judges it before answering: raw bytes
//! parsed as an HTTP/1.1 request head (httparse, as hyper does), then the
//! upgrade header checks, subprotocol negotiation, the token's three
//! transports, the origin policy and the permessage-deflate offer.
#![no_main]

use std::sync::{Arc, OnceLock};

use http::{HeaderName, HeaderValue, Request, Version};
use libfuzzer_sys::fuzz_target;
use wsgate::auth::bearer_token;
use wsgate::handshake::{find_token, negotiate_encoding, origin_allowed};
use wsgate::transport::upgrade::Upgrade;
use wsgate_deflate::Deflate;

fn deflate() -> &'static Arc<Deflate> {
    static DEFLATE: OnceLock<Arc<Deflate>> = OnceLock::new();
    DEFLATE.get_or_init(|| Deflate::new(1, 0, 8192))
}

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return;
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .version(if version == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        });
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    // No connection stands behind this request, so a valid one ends at
    // "cannot be upgraded": every header check before it has run.
    assert!(Upgrade::from_parts(&mut parts).is_err());
    let _ = negotiate_encoding(&parts.headers);
    let _ = bearer_token(&parts.headers);
    let _ = find_token(&parts.headers, &parts.uri, true);
    let _ = origin_allowed(&parts.headers, &["https://app.example".to_owned()]);
    let _ = deflate().negotiate(&parts.headers);
});
