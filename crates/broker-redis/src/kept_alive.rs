//! Entries this node keeps alive in Redis (presence, counted connections):
//! each expires a TTL after it was last written, and the node writes the
//! ones it holds again every third of the TTL, spread over half of that. A
//! node that crashes stops writing, so its entries go by themselves within
//! the TTL.

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
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
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
        lock(&self.entries)
    }

    pub fn insert(&self, key: K, value: V) {
        self.lock().insert(key, value);
    }

    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }
}

/// Entries are rewritten in slices this far apart, spread over the first
/// half of each round (100 slices for a 60 s TTL), rather than all at
/// once: 10,000 connections are 10,000 scripts, which in one burst every
/// 20 s would queue ahead of publishes on the node's command connection.
const SLICE_EVERY: Duration = Duration::from_millis(100);

fn lock<K, V>(entries: &Entries<K, V>) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
    // Single inserts and removals: consistent even after a panic.
    entries.lock().unwrap_or_else(|e| e.into_inner())
}

async fn refresh<K, V, F, Fut>(every: Duration, entries_ref: Weak<Entries<K, V>>, write: F)
where
    K: Eq + Hash + Clone + Send + Sync,
    V: Clone + Send + Sync,
    F: Fn(K, V) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), BrokerError>> + Send + 'static,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let slices = ((every / 2).as_millis() / SLICE_EVERY.as_millis()).max(1) as usize;
    loop {
        tick.tick().await;
        let Some(entries) = entries_ref.upgrade() else {
            return;
        };
        let keys: Vec<K> = lock(&entries).keys().cloned().collect();
        drop(entries);
        let per_slice = keys.len().div_ceil(slices).max(1);
        for (i, slice) in keys.chunks(per_slice).enumerate() {
            if i > 0 {
                tokio::time::sleep(SLICE_EVERY).await;
            }
            // What is held now, not at the round's start: an entry removed
            // meanwhile must not be written back, nor an older value.
            let Some(entries) = entries_ref.upgrade() else {
                return;
            };
            let now: Vec<(K, V)> = {
                let held = lock(&entries);
                slice
                    .iter()
                    .filter_map(|k| held.get(k).map(|v| (k.clone(), v.clone())))
                    .collect()
            };
            drop(entries);
            // A slice's writes go together: pipelined on one connection.
            let mut writes = tokio::task::JoinSet::new();
            for (k, v) in now {
                writes.spawn(write(k, v));
            }
            let (mut wrote, mut failed) = (0, None);
            while let Some(done) = writes.join_next().await {
                match done {
                    Ok(Ok(())) => wrote += 1,
                    Ok(Err(e)) => failed = Some(e),
                    Err(e) => tracing::warn!(error = %e, "a keep-alive write panicked"),
                }
            }
            // One entry that fails does not cost the others their turn;
            // a slice that fails whole means Redis is away: the next round
            // writes them all again.
            if let (0, Some(e)) = (wrote, &failed) {
                tracing::debug!(error = %e, "keeping entries alive failed; next round");
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

    #[tokio::test(start_paused = true)]
    async fn many_entries_are_written_in_slices_over_half_a_round() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let w = written.clone();
        // Rounds every 2 s: ten slices 100 ms apart.
        let kept = KeptAlive::new(Duration::from_secs(6), move |k: u32, _v: ()| {
            let w = w.clone();
            async move {
                w.lock().unwrap().push((tokio::time::Instant::now(), k));
                Ok(())
            }
        });
        for k in 0..1000 {
            kept.insert(k, ());
        }
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let written = written.lock().unwrap();
        assert_eq!(written.len(), 1000, "each once in the first round");
        let mut keys: Vec<u32> = written.iter().map(|(_, k)| *k).collect();
        keys.sort();
        assert_eq!(keys, (0..1000).collect::<Vec<_>>());
        let at = |t: tokio::time::Instant| (t - start).as_millis();
        let (first, last) = (at(written[0].0), at(written[999].0));
        assert_eq!(first, 2000, "the round starts on time");
        assert_eq!(last, 2900, "ten slices, 100 ms apart");
        let in_first_slice = written.iter().filter(|(t, _)| at(*t) == 2000).count();
        assert_eq!(in_first_slice, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_removed_or_changed_mid_round_is_written_as_it_is_now() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let w = written.clone();
        // Rounds every 2 s, ten slices 100 ms apart: one entry a slice.
        let kept = KeptAlive::new(Duration::from_secs(6), move |k: u32, v: u32| {
            let w = w.clone();
            async move {
                w.lock().unwrap().push((k, v));
                Ok(())
            }
        });
        for k in 0..10 {
            kept.insert(k, 0);
        }
        // The round starts at 2 s; by 2.45 s the first slices are out.
        tokio::time::sleep(Duration::from_millis(2450)).await;
        let early: Vec<u32> = written.lock().unwrap().iter().map(|(k, _)| *k).collect();
        assert!((1..10).contains(&early.len()), "{early:?} written so far");
        // One not written yet keeps its place with a new value; the rest go.
        let next = (0..10).find(|k| !early.contains(k)).unwrap();
        for k in 0..10 {
            kept.remove(&k);
        }
        kept.insert(next, 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let written = written.lock().unwrap();
        assert_eq!(
            written.len(),
            early.len() + 1,
            "removed entries not written back: {written:?}"
        );
        assert_eq!(written.last(), Some(&(next, 1)), "the value held now");
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_that_fails_does_not_cost_the_others_their_turn() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let w = written.clone();
        // Ten slices of ten a round; entry 0 always fails.
        let kept = KeptAlive::new(Duration::from_secs(6), move |k: u32, _v: ()| {
            let w = w.clone();
            async move {
                if k == 0 {
                    return Err(BrokerError::Unavailable("refused".into()));
                }
                w.lock().unwrap().push(k);
                Ok(())
            }
        });
        for k in 0..100 {
            kept.insert(k, ());
        }
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let mut got = written.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, (1..100).collect::<Vec<_>>());
    }
}
