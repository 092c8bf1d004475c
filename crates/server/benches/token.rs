//! Token verification cost: the CPU a handshake spends on its JWT.

use criterion::{criterion_group, criterion_main, Criterion};
use wsgate::auth::{sign_hs256, Claims, JwtVerifier};
use wsgate::config::{AuthConfig, Secret};
use wsgate_core::auth::TokenVerifier;

fn token_validation(c: &mut Criterion) {
    let secret = "bench-secret-bench-secret-bench-secret";
    let config = AuthConfig {
        hmac_secret: Some(Secret::new(secret)),
        ..AuthConfig::default()
    };
    let verifier = JwtVerifier::new(&config, None).unwrap();
    let claims = Claims {
        sub: Some("user-12345".into()),
        exp: Some(jsonwebtoken::get_current_timestamp() + 3600),
        role: None,
        roles: vec!["member".into()],
        channels: vec!["chat:*".into()],
        name: Some("Bench User".into()),
        iss: None,
        aud: None,
    };
    let token = sign_hs256(secret, &claims);
    c.bench_function("verify_hs256", |b| {
        b.iter(|| verifier.verify(std::hint::black_box(&token)).unwrap())
    });
    let forged = format!("{}x", &token[..token.len() - 1]);
    c.bench_function("reject_bad_signature_hs256", |b| {
        b.iter(|| verifier.verify(std::hint::black_box(&forged)).unwrap_err())
    });
}

criterion_group!(benches, token_validation);
criterion_main!(benches);
