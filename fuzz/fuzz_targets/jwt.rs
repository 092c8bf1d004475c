//! Token verification (HS256 with issuer and audience configured), before
//! and after the signature check. First byte even: the rest is a token as
//! a client sent it. Odd: the rest is a header and claims, split at the
//! first 0xff byte, each base64url-encoded and signed with the server's
//! secret, so that the header and claims handling past the signature is
//! reached too.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use wsgate::auth::JwtVerifier;
use wsgate::config::{AuthConfig, Secret};
use wsgate_core::auth::TokenVerifier;

const SECRET: &str = "fuzzing-secret-0123456789abcdef";

fn verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let config = AuthConfig {
            hmac_secret: Some(Secret::new(SECRET)),
            algorithms: vec!["HS256".into(), "HS384".into()],
            issuer: Some("wsgate".into()),
            audience: Some("clients".into()),
            ..AuthConfig::default()
        };
        JwtVerifier::new(&config, None).expect("an HMAC verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            let _ = verifier().verify(token);
        }
        return;
    }
    let split = rest.iter().position(|&b| b == 0xff).unwrap_or(rest.len());
    let (header, claims) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    let token = format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    let Ok(identity) = verifier().verify(&token) else {
        return;
    };
    // Whatever got in met the configured rules. (A claim the verifier does
    // not read may hold bytes that are not UTF-8: serde skips unknown
    // fields without validating them, and such a token is accepted. Only
    // the issuer can sign one, and nothing reads that claim, so the check
    // below looks at claims that parse.)
    if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(claims) {
        assert_eq!(claims["iss"], "wsgate");
        assert!(!identity.user.is_empty() && identity.user.len() <= 255);
        assert_eq!(claims["sub"].as_str(), Some(&*identity.user));
    }
});
