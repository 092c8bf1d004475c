//! Coarse timers shared by every connection of a server: one tokio timer
//! ticking every [`TICK`] wakes the connections whose heartbeat, heartbeat
//! timeout or token deadline falls in that tick.
//!
//! Why not a tokio `Sleep` per connection: a `Sleep` is 112 bytes inside
//! every connection's future (its timer-wheel entry), and a connection's
//! future is what an idle connection costs. These deadlines are seconds
//! apart and need no better than a tenth of a second, so a connection here
//! holds only the tick it asked to be woken at (8 bytes), and the wheel a
//! waker (16 bytes) while that tick is ahead. Deadlines that need
//! milliseconds (a burst's write window) keep a tokio timer of their own,
//! only while the connection bursts.
//!
//! The wheel is a ring of [`SLOTS`] slots, one per tick, ~100 s ahead; a
//! deadline further out is woken at the ring's far end ([`Timers::wake_at`]
//! says which tick it took) and asks again. A connection woken for a tick
//! it no longer needs (its deadline moved later) just asks for the next
//! one. A waker keeps its task's memory alive, so a connection that ends,
//! or moves its deadline earlier, takes its waker out of the slot it left
//! ([`Timers::cancel`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

/// The wheel's resolution.
pub const TICK: Duration = Duration::from_nanos(TICK_NANOS);
const TICK_NANOS: u64 = 100_000_000;
/// Ticks the ring holds ahead of now.
const SLOTS: u64 = 1024;

/// A point in time as a count of [`TICK`]s since the wheel started.
pub type Tick = u64;

#[derive(Default)]
struct Slot {
    /// The latest tick this slot was fired for.
    fired: Tick,
    wakers: Vec<Waker>,
}

pub struct Timers {
    start: Instant,
    /// The latest tick fired (every slot up to it has been woken).
    now: AtomicU64,
    slots: Box<[Mutex<Slot>]>,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers").field("now", &self.now()).finish()
    }
}

impl Timers {
    /// A wheel whose ticking task runs on the current runtime for as long
    /// as the returned `Arc` (or a clone) lives.
    pub fn start() -> Arc<Self> {
        let timers = Arc::new(Self::new(Instant::now()));
        tokio::spawn(tick(Arc::downgrade(&timers)));
        timers
    }

    fn new(start: Instant) -> Self {
        Timers {
            start,
            now: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| Mutex::new(Slot::default())).collect(),
        }
    }

    /// The latest tick fired: a clock as coarse as the wheel, one atomic
    /// load to read.
    pub fn now(&self) -> Tick {
        self.now.load(Ordering::Acquire)
    }

    /// `duration` in ticks, rounded up. (In u64 nanoseconds, enough for
    /// 584 years: the transport converts a deadline per event, and 128-bit
    /// division is the slow kind.)
    pub fn ticks(duration: Duration) -> Tick {
        Self::nanos(duration).div_ceil(TICK_NANOS)
    }

    fn nanos(duration: Duration) -> u64 {
        duration
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(duration.subsec_nanos()))
    }

    /// The first tick at or after `at`.
    pub fn tick_at(&self, at: Instant) -> Tick {
        Self::ticks(at.saturating_duration_since(self.start))
    }

    /// Wakes `waker` once tick `at` has fired, or at the farthest tick the
    /// ring holds if `at` is further: returns the tick it will be woken at.
    /// `None` (and nothing kept) when tick `at` has fired already: the
    /// caller is due now.
    pub fn wake_at(&self, at: Tick, waker: &Waker) -> Option<Tick> {
        let at = at.min(self.now().saturating_add(SLOTS - 1));
        let mut slot = self.slot(at);
        // The slot's own record, read under its lock, says whether `at` has
        // fired: the global `now` may be read just before the ticker fires.
        if slot.fired >= at {
            return None;
        }
        slot.wakers.push(waker.clone());
        Some(at)
    }

    /// Takes `waker`'s registration for tick `at` back, if that tick has
    /// not fired. A scan of one slot: done when a connection ends, or in
    /// the rare case its deadline moves earlier.
    pub fn cancel(&self, at: Tick, waker: &Waker) {
        let mut slot = self.slot(at);
        if slot.fired < at {
            if let Some(i) = slot.wakers.iter().position(|w| w.will_wake(waker)) {
                slot.wakers.swap_remove(i);
            }
        }
    }

    /// Wakers waiting in the ring.
    #[cfg(test)]
    pub fn registered(&self) -> usize {
        (0..SLOTS).map(|t| self.slot(t).wakers.len()).sum()
    }

    fn slot(&self, tick: Tick) -> std::sync::MutexGuard<'_, Slot> {
        // Critical sections are a push or a swap; a poisoned slot is fine.
        let slot = &self.slots[(tick % SLOTS) as usize];
        slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fires every tick up to the current time.
    fn advance(&self, to: Instant) {
        let target = Self::nanos(to.saturating_duration_since(self.start)) / TICK_NANOS;
        let from = self.now();
        // After a stall longer than the ring, each slot fires once.
        for tick in from.saturating_add(1).max(target.saturating_sub(SLOTS - 1))..=target {
            let wakers = {
                let mut slot = self.slot(tick);
                slot.fired = tick;
                std::mem::take(&mut slot.wakers)
            };
            // Published before the wakes, so a woken connection reads a
            // clock that has reached its tick.
            self.now.fetch_max(tick, Ordering::AcqRel);
            for w in wakers {
                w.wake();
            }
        }
    }
}

/// The wheel's one timer: fires the due ticks until the wheel is dropped.
async fn tick(timers: Weak<Timers>) {
    let start = match timers.upgrade() {
        Some(t) => t.start,
        None => return,
    };
    let mut interval = tokio::time::interval_at(start + TICK, TICK);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let Some(timers) = timers.upgrade() else {
            return;
        };
        timers.advance(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_waker_fires_at_its_tick_and_not_before() {
        let start = Instant::now();
        let timers = Timers::new(start);
        let (count, waker) = counter();
        assert_eq!(timers.tick_at(start + Duration::from_millis(250)), 3);
        assert_eq!(timers.wake_at(3, &waker), Some(3));
        timers.advance(start + Duration::from_millis(299));
        assert_eq!(timers.now(), 2);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        timers.advance(start + Duration::from_millis(300));
        assert_eq!(timers.now(), 3);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Fired once only.
        timers.advance(start + Duration::from_secs(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // A tick that has fired is due at once: nothing is kept.
        assert_eq!(timers.wake_at(3, &waker), None);
        assert_eq!(timers.wake_at(10, &waker), None);
    }

    #[test]
    fn a_cancelled_waker_is_let_go_and_not_woken() {
        let start = Instant::now();
        let timers = Timers::new(start);
        let (count, waker) = counter();
        let (other, other_waker) = counter();
        assert_eq!(timers.wake_at(5, &waker), Some(5));
        assert_eq!(timers.wake_at(5, &other_waker), Some(5));
        // `count`, `waker` and the slot's clone.
        assert_eq!(Arc::strong_count(&count), 3, "the slot holds a clone");
        timers.cancel(5, &waker);
        assert_eq!(Arc::strong_count(&count), 2, "and lets it go");
        timers.advance(start + TICK * 5);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert_eq!(other.0.load(Ordering::SeqCst), 1);
        // Cancelling after the tick is a no-op.
        timers.cancel(5, &other_waker);
    }

    #[test]
    fn a_deadline_past_the_ring_wakes_at_its_far_end() {
        let start = Instant::now();
        let timers = Timers::new(start);
        let (count, waker) = counter();
        // The tick it will really be woken at is the one to ask again at.
        assert_eq!(timers.wake_at(SLOTS * 5, &waker), Some(SLOTS - 1));
        timers.advance(start + TICK * (SLOTS as u32 - 2));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        timers.advance(start + TICK * (SLOTS as u32 - 1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_stall_longer_than_the_ring_wakes_everyone_once() {
        let start = Instant::now();
        let timers = Timers::new(start);
        let (count, waker) = counter();
        for at in [1, 500, SLOTS - 1] {
            assert_eq!(timers.wake_at(at, &waker), Some(at));
        }
        timers.advance(start + TICK * (SLOTS as u32 * 3));
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
        assert_eq!(timers.now(), SLOTS * 3);
        // The ring goes on from there.
        assert_eq!(timers.wake_at(SLOTS * 3 + 1, &waker), Some(SLOTS * 3 + 1));
        timers.advance(start + TICK * (SLOTS as u32 * 3 + 1));
        assert_eq!(count.0.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticker_runs_on_the_runtime_and_stops_with_the_wheel() {
        let timers = Timers::start();
        let (count, waker) = counter();
        let at = timers.tick_at(Instant::now() + Duration::from_secs(2));
        assert_eq!(timers.wake_at(at, &waker), Some(at));
        tokio::time::sleep(Duration::from_millis(1_950)).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        assert_eq!(tasks(), 1, "the ticker");
        drop(timers);
        tokio::time::sleep(TICK * 2).await;
        assert_eq!(tasks(), 0, "the ticker ends with its wheel");
    }
}
