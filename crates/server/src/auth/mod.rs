//! Token verification: an explicit algorithm allow-list and keys from an
//! HMAC secret, a PEM public key, or a JWKS URL.

mod jwks;

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use wsgate_core::auth::{AuthError, Identity, TokenVerifier};
use wsgate_core::limits::{MAX_EXP, MAX_TOKEN_BYTES};

pub use jwks::JwksCache;

use crate::config::AuthConfig;

/// Why the verifier could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read auth.public_key_pem {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.public_key_pem is not an RSA, EC (P-256) or Ed25519 public key in PEM")]
    Pem,
    #[error("auth.algorithms allows {0} but no key for it is configured (auth.hmac_secret, auth.public_key_pem or auth.jwks_url)")]
    NoKeyFor(String),
}

/// The claims read from a token; unknown claims are ignored.
#[derive(Debug, Deserialize, Serialize)]
pub struct Claims {
    // Optional here so that a missing claim is reported as such rather than
    // as a malformed token; `verify` requires both.
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kept as raw JSON so that `null`, a number or a missing claim are all
    /// seen as what they are (not an issuer) when `auth.issuer` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<serde_json::Value>,
    /// A string or an array of strings; raw for the same reason as `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}

impl Claims {
    /// `sub` and `exp` only; callers add roles or channels.
    pub fn new(sub: impl Into<String>, exp: u64) -> Self {
        Claims {
            sub: Some(sub.into()),
            exp: Some(exp),
            role: None,
            roles: vec![],
            channels: vec![],
            name: None,
            iss: None,
            aud: None,
        }
    }

    /// Adds the configured `iss` and `aud`, so tokens minted by `wsgate
    /// token` and `--dev` pass the server's own checks.
    pub fn for_config(mut self, auth: &AuthConfig) -> Self {
        self.iss = auth.issuer.clone().map(serde_json::Value::String);
        self.aud = auth.audience.clone().map(serde_json::Value::String);
        self
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme matched
/// without regard to case), for the handshake and the admin endpoints.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

pub struct JwtVerifier {
    /// Each allowed algorithm with its validation settings, made once:
    /// jsonwebtoken wants a `Validation` naming only the token's algorithm,
    /// and cloning one per handshake (with its sets of claim names) was a
    /// handful of allocations on every connect.
    validations: Vec<(Algorithm, Validation)>,
    hmac: Option<DecodingKey>,
    /// The PEM key with the one algorithm family it may verify.
    public: Option<(AlgorithmFamily, DecodingKey)>,
    jwks: Option<Arc<JwksCache>>,
    /// `auth.issuer` / `auth.audience`: checked here rather than by
    /// jsonwebtoken, which skips a claim that is missing or not a string.
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtVerifier {
    /// Builds the verifier. With a JWKS URL, `jwks` is the cache that the
    /// server keeps refreshed.
    pub fn new(config: &AuthConfig, jwks: Option<Arc<JwksCache>>) -> Result<Self, KeyError> {
        let algorithms: Vec<Algorithm> = config
            .algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a))
            .collect();
        let hmac = config
            .hmac_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        let public = match &config.public_key_pem {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Some(parse_public_pem(&pem)?)
            }
        };
        for alg in &algorithms {
            let has_key = match alg.family() {
                AlgorithmFamily::Hmac => hmac.is_some(),
                family => public.as_ref().is_some_and(|(f, _)| *f == family) || jwks.is_some(),
            };
            if !has_key {
                return Err(KeyError::NoKeyFor(format!("{alg:?}")));
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = algorithms.clone();
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = config.leeway_secs;
        // jsonwebtoken rejects any `exp` not strictly in the future once
        // leeway is 0; that is the contract.
        validation.reject_tokens_expiring_in_less_than = 0;
        validation.validate_aud = false;
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = validation.clone();
                v.algorithms = vec![*alg];
                (*alg, v)
            })
            .collect();
        Ok(JwtVerifier {
            validations,
            hmac,
            public,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    /// The key for `header`: borrowed when configured, owned when it
    /// comes from the JWKS cache.
    fn key_for(&self, header: &Header) -> Result<Cow<'_, DecodingKey>, AuthError> {
        match header.alg.family() {
            // An HMAC token is only ever checked with the HMAC secret, never
            // with a public key's bytes.
            AlgorithmFamily::Hmac => self
                .hmac
                .as_ref()
                .map(Cow::Borrowed)
                .ok_or(AuthError::NoKey),
            family => {
                if let (Some(jwks), Some(kid)) = (&self.jwks, &header.kid) {
                    if let Some(key) = jwks.key(kid, header.alg) {
                        return Ok(Cow::Owned(key));
                    }
                }
                match &self.public {
                    Some((f, key)) if *f == family => Ok(Cow::Borrowed(key)),
                    _ => Err(AuthError::NoKey),
                }
            }
        }
    }
}

fn parse_public_pem(pem: &[u8]) -> Result<(AlgorithmFamily, DecodingKey), KeyError> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((AlgorithmFamily::Rsa, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((AlgorithmFamily::Ec, k));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((AlgorithmFamily::Ed, k));
    }
    Err(KeyError::Pem)
}

/// Reads `alg` from a header that jsonwebtoken refused, to tell a disallowed
/// algorithm (`none`, `HS1`…) from garbage.
fn raw_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_owned)
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => {
                return Err(match raw_alg(token) {
                    Some(_) => AuthError::DisallowedAlgorithm,
                    None => AuthError::Malformed,
                })
            }
        };
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthError::DisallowedAlgorithm);
        };
        let key = self.key_for(&header)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm => AuthError::DisallowedAlgorithm,
            ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
            _ => AuthError::Malformed,
        })?;
        let c = data.claims;
        let (Some(sub), Some(exp)) = (c.sub, c.exp) else {
            return Err(AuthError::MissingClaim);
        };
        if sub.is_empty() || sub.len() > 255 {
            return Err(AuthError::MissingClaim);
        }
        if exp > MAX_EXP {
            return Err(AuthError::Malformed);
        }
        // When configured, `iss` and `aud` are required: a token minted by
        // another service that shares the key must not get in.
        if let Some(issuer) = &self.issuer {
            if c.iss.as_ref().and_then(serde_json::Value::as_str) != Some(issuer.as_str()) {
                return Err(AuthError::WrongIssuer);
            }
        }
        if let Some(audience) = &self.audience {
            let ok = match &c.aud {
                Some(serde_json::Value::String(a)) => a == audience,
                Some(serde_json::Value::Array(list)) => {
                    list.iter().any(|a| a.as_str() == Some(audience.as_str()))
                }
                _ => false,
            };
            if !ok {
                return Err(AuthError::WrongAudience);
            }
        }
        let mut roles = c.roles;
        if let Some(role) = c.role {
            roles.push(role);
        }
        Ok(Identity::new(sub.into(), exp).with_claims(roles, c.channels, c.name))
    }
}

/// Signs an HS256 token (the `token` command and `--dev`).
pub fn sign_hs256(secret: &str, claims: &Claims) -> String {
    // Encoding a derived struct with an HMAC key cannot fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> JwtVerifier {
        let config = AuthConfig {
            hmac_secret: Some(Secret::new(SECRET)),
            ..AuthConfig::default()
        };
        JwtVerifier::new(&config, None).unwrap()
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: Some("alice".into()),
            exp: Some(exp),
            role: Some("admin".into()),
            roles: vec!["ops".into()],
            channels: vec![],
            name: None,
            iss: None,
            aud: None,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn accepts_a_good_token() {
        let id = verifier()
            .verify(&sign_hs256(SECRET, &claims(now() + 60)))
            .unwrap();
        assert_eq!(&*id.user, "alice");
        assert!(id.has_role("admin") && id.has_role("ops"));
    }

    #[test]
    fn refuses_expired_wrong_key_and_none() {
        let v = verifier();
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &claims(now() - 1))),
            Err(AuthError::Expired)
        );
        let other = sign_hs256("ffffffffffffffffffffffffffffffff", &claims(now() + 60));
        assert_eq!(v.verify(&other), Err(AuthError::BadSignature));
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} .
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(v.verify(none), Err(AuthError::DisallowedAlgorithm));
        assert_eq!(v.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(v.verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn missing_key_for_an_allowed_algorithm_is_a_config_error() {
        let config = AuthConfig {
            algorithms: vec!["RS256".into()],
            ..AuthConfig::default()
        };
        assert!(matches!(
            JwtVerifier::new(&config, None),
            Err(KeyError::NoKeyFor(_))
        ));
    }

    #[test]
    fn configured_issuer_and_audience_are_required() {
        let config = AuthConfig {
            hmac_secret: Some(Secret::new(SECRET)),
            issuer: Some("https://idp.example".into()),
            audience: Some("wsgate".into()),
            ..AuthConfig::default()
        };
        let v = JwtVerifier::new(&config, None).unwrap();
        let sign = |iss: Option<serde_json::Value>, aud: Option<serde_json::Value>| {
            let claims = Claims {
                iss,
                aud,
                ..Claims::new("alice", now() + 60)
            };
            v.verify(&sign_hs256(SECRET, &claims))
        };
        let iss = || Some(serde_json::json!("https://idp.example"));
        let aud = || Some(serde_json::json!("wsgate"));
        assert!(sign(iss(), aud()).is_ok());
        assert!(sign(iss(), Some(serde_json::json!(["other", "wsgate"]))).is_ok());
        for bad_iss in [
            None,
            Some(serde_json::json!(null)),
            Some(serde_json::json!(7)),
        ] {
            assert_eq!(sign(bad_iss, aud()), Err(AuthError::WrongIssuer));
        }
        assert_eq!(
            sign(Some(serde_json::json!("https://evil.example")), aud()),
            Err(AuthError::WrongIssuer)
        );
        for bad_aud in [
            None,
            Some(serde_json::json!(null)),
            Some(serde_json::json!(7)),
            Some(serde_json::json!("other")),
            Some(serde_json::json!(["other"])),
        ] {
            assert_eq!(sign(iss(), bad_aud), Err(AuthError::WrongAudience));
        }
        // Tokens minted for this configuration pass.
        let minted = Claims::new("alice", now() + 60).for_config(&config);
        assert!(v.verify(&sign_hs256(SECRET, &minted)).is_ok());
    }

    #[test]
    fn an_absurd_exp_is_refused() {
        let v = verifier();
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &claims(u64::MAX))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &claims(MAX_EXP + 1))),
            Err(AuthError::Malformed)
        );
        assert!(v.verify(&sign_hs256(SECRET, &claims(MAX_EXP))).is_ok());
    }
}
