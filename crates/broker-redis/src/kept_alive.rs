//! Entries this node keeps alive in Redis (presence, counted connections):
//! each expires a TTL after it was last written, and the node writes the
//! ones it holds again every third of the TTL. A node that crashes stops
//! writing, so its entries go by themselves within the TTL.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use wsgate_core::broker::BrokerError;

type Entries<K, V> = Mutex<HashMap<K, V>>;

pub struct KeptAlive<K, V> {
    entries: Arc<Entries<K, V>>,
    refresher: JoinHandle<()>,
}

impl<K, V> Drop for KeptAlive<K, V> {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl<K, V> KeptAlive<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Starts rewriting the entries with `write` every `ttl / 3`.
    pub fn new<F, Fut>(ttl: Duration, write: F) -> Self
    where
        F: Fn(K, V) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BrokerError>> + Send + 'static,
    {
        let entries: Arc<Entries<K, V>> = Arc::default();
        let refresher = tokio::spawn(refresh(ttl / 3, Arc::downgrade(&entries), write));
        KeptAlive { entries, refresher }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        // Single inserts and removals: consistent even after a panic.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, key: K, value: V) {
        self.lock().insert(key, value);
    }

    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }
}

async fn refresh<K, V, F, Fut>(every: Duration, entries: Weak<Entries<K, V>>, write: F)
where
    K: Clone,
    V: Clone,
    F: Fn(K, V) -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(entries) = entries.upgrade() else {
            return;
        };
        let now: Vec<(K, V)> = entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        drop(entries);
        for (k, v) in now {
            if let Err(e) = write(k, v).await {
                // Redis is away: the next round writes them again.
                tracing::debug!(error = %e, "keeping entries alive failed");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn held_entries_are_written_every_third_of_the_ttl_until_removed() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let w = written.clone();
        let kept = KeptAlive::new(Duration::from_secs(3), move |k: u32, v: u32| {
            let w = w.clone();
            async move {
                w.lock().unwrap().push((k, v));
                Ok(())
            }
        });
        kept.insert(1, 10);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(*written.lock().unwrap(), [(1, 10)], "once, after 1 s");
        kept.insert(2, 20);
        kept.remove(&1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*written.lock().unwrap(), [(1, 10), (2, 20)]);
        drop(kept);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(written.lock().unwrap().len(), 2, "nothing once dropped");
    }
}
