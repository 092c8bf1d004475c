//! A JWKS cache: keys by `kid` from one configured URL, refreshed in the
//! background; the last good keys stay in use while the endpoint is down.
//!
//! Only the configured URL is ever fetched: nothing from an unverified
//! token (`jku`, `x5u`, `kid`) is used to build a request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;
use wsgate_core::limits::MAX_JWKS_BYTES;

/// Fetches are short: a slow identity provider must not hold handshakes.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// An unknown `kid` triggers a refresh at most this often, so a client
/// cannot make the server hammer the identity provider.
const ON_DEMAND_MIN_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS fetch failed: {0}")]
    Fetch(String),
    #[error("JWKS document is invalid: {0}")]
    Parse(String),
}

struct CachedKey {
    alg: Option<String>,
    key: DecodingKey,
}

pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    // std RwLock: read on every handshake, written only on refresh; never
    // held across an await.
    keys: RwLock<HashMap<String, CachedKey>>,
    wake: tokio::sync::Notify,
    last_on_demand: Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(url: String) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            // Building a client with only timeouts set fails only when the
            // TLS backend cannot initialise, which is a broken install.
            .expect("HTTP client builds");
        Arc::new(JwksCache {
            url,
            client,
            keys: RwLock::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            last_on_demand: Mutex::new(None),
        })
    }

    /// The key for `kid` usable with `alg`. An unknown `kid` asks the
    /// background task for an early refresh.
    pub fn key(&self, kid: &str, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        match keys.get(kid) {
            Some(cached) => {
                let alg_name = format!("{alg:?}");
                match &cached.alg {
                    Some(a) if *a != alg_name => None,
                    _ => Some(cached.key.clone()),
                }
            }
            None => {
                drop(keys);
                let mut last = self
                    .last_on_demand
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|t| t.elapsed() >= ON_DEMAND_MIN_INTERVAL) {
                    *last = Some(Instant::now());
                    self.wake.notify_one();
                }
                None
            }
        }
    }

    pub fn key_count(&self) -> usize {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Fetches the document and replaces the keys; on any error the old keys
    /// stay.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let mut resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?;
        // A declared length over the cap is refused before reading; an
        // undeclared (chunked) or lying one is read with a running cap, so
        // a huge answer never sits in memory whole.
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::Parse(format!(
                "larger than {MAX_JWKS_BYTES} bytes"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::Parse(format!(
                    "larger than {MAX_JWKS_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| JwksError::Parse(e.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            // Symmetric keys never come from a JWKS: an HMAC token must only
            // verify with the configured secret.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                let alg = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
                keys.insert(kid.clone(), CachedKey { alg, key });
            }
        }
        if keys.is_empty() {
            return Err(JwksError::Parse("no usable signing keys".into()));
        }
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(n)
    }

    /// Refreshes every `every`, and early when asked, until `shutdown`.
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = self.wake.notified() => {}
            }
            match self.refresh().await {
                Ok(n) => tracing::debug!(keys = n, "JWKS refreshed"),
                Err(error) => {
                    tracing::warn!(%error, kept = self.key_count(), "JWKS refresh failed; keeping the last good keys")
                }
            }
        }
    }
}
