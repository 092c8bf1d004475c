//! When a connection's queued frames are written: the batching rule of the
//! transport, kept apart from the socket so it can be tested on paused time.
//!
//! The rule (TCP autocorking and Nagle-without-delay are the models):
//!
//! - A reply, an error, anything but a publication goes out at once, and
//!   with it whatever is queued ([`Outbound::write_now`]).
//! - A publication goes out at once too unless the connection is really
//!   receiving a burst: below [`CALM_RATE`] frames/s (an agent streaming
//!   tokens, a dashboard's updates) every frame is written when it comes.
//!   Above it, a frame waits up to a window that grows with the rate, from
//!   0 at [`CALM_RATE`] to `write_delay` at [`BURST_RATE`] and beyond, and
//!   the frames of the window share one write: on loopback a write costs
//!   ~2 µs of kernel time charged to the sender, so a fan-out at 500
//!   frames/s per connection spends 5× the CPU per delivery unbatched
//!   (docs/benchmarks.md).
//! - A batch that fills ¼ of the outbound queue (at most 64 KiB) goes at
//!   once.
//! - Nothing new is handed to the socket while a previous write is still
//!   being flushed; what comes meanwhile (and whatever arrives before the
//!   connection task runs, "within one wake-up") goes out together after
//!   it.
//!
//! [`Outbound::write_now`]: wsgate_core::connection::outbound::Outbound::write_now

use std::time::Duration;

use tokio::time::Instant;

/// Frames per second below which every frame is written when it comes.
pub const CALM_RATE: u32 = 100;
/// Frames per second from which frames wait the whole `write_delay`.
pub const BURST_RATE: u32 = 500;
/// How long frames are counted for one rate reading.
const RATE_PERIOD: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct WriteScheduler {
    /// The longest a publication waits, at [`BURST_RATE`] and above, in
    /// microseconds (a `Duration` is 16 bytes, in every connection).
    delay_micros: u32,
    /// True while written frames (or control frames) wait in the socket's
    /// buffer for a flush.
    flushing: bool,
    /// When the last batch was handed to the socket.
    last_write: Option<Instant>,
    /// When the frames waiting in the queue are to be written.
    due: Option<Instant>,
    /// Frames written since `counted_from`.
    counted: u32,
    counted_from: Option<Instant>,
    /// Frames per second over the last full [`RATE_PERIOD`] (or longer,
    /// after a quiet spell).
    rate: u32,
}

impl WriteScheduler {
    pub fn new(delay: Duration) -> Self {
        WriteScheduler {
            delay_micros: u32::try_from(delay.as_micros()).unwrap_or(u32::MAX),
            flushing: false,
            last_write: None,
            due: None,
            counted: 0,
            counted_from: None,
            rate: 0,
        }
    }

    /// How long publications may wait for company at the current rate.
    fn window(&mut self, now: Instant) -> Duration {
        if let Some(from) = self.counted_from {
            let elapsed = now.saturating_duration_since(from);
            if elapsed >= RATE_PERIOD {
                self.rate = (u128::from(self.counted) * 1_000_000 / elapsed.as_micros().max(1))
                    .min(u128::from(u32::MAX)) as u32;
                self.counted = 0;
                self.counted_from = Some(now);
            }
        }
        if self.rate <= CALM_RATE {
            return Duration::ZERO;
        }
        let share = (self.rate - CALM_RATE).min(BURST_RATE - CALM_RATE);
        let micros = u64::from(self.delay_micros) * u64::from(share);
        Duration::from_micros(micros / u64::from(BURST_RATE - CALM_RATE))
    }

    /// Frames were queued (`now_wanted`: a reply or a full batch among
    /// them). Whether to write them now; otherwise they are written when
    /// the flush completes or at [`Self::deadline`].
    pub fn on_queued(&mut self, now: Instant, now_wanted: bool) -> bool {
        if self.flushing {
            return false;
        }
        if now_wanted {
            self.due = None;
            return true;
        }
        if self.due.is_some() {
            return false;
        }
        let window = self.window(now);
        match self.last_write.map(|t| t + window).filter(|due| *due > now) {
            Some(due) => {
                self.due = Some(due);
                false
            }
            None => true,
        }
    }

    /// A batch of `frames` frames was handed to the socket (a flush is
    /// then due if there were any).
    pub fn on_written(&mut self, now: Instant, frames: usize) {
        self.flushing = frames > 0;
        self.last_write = Some(now);
        self.counted = self
            .counted
            .saturating_add(u32::try_from(frames).unwrap_or(u32::MAX));
        self.counted_from.get_or_insert(now);
    }

    /// Something other than a batch (a pong, a ping, a close reply) waits
    /// in the socket's buffer and must be flushed.
    pub fn needs_flush(&mut self) {
        self.flushing = true;
    }

    pub fn is_flushing(&self) -> bool {
        self.flushing
    }

    /// The flush completed; frames queued meanwhile (`has_frames`) become
    /// the next batch: due at once when `now_wanted` (a reply or a full
    /// batch) or outside a burst, else at the end of the window.
    pub fn on_flushed(&mut self, now: Instant, has_frames: bool, now_wanted: bool) {
        self.flushing = false;
        if has_frames && (self.due.is_none() || now_wanted) {
            let window = self.window(now);
            self.due = Some(if now_wanted {
                now
            } else {
                self.last_write.map_or(now, |t| (t + window).max(now))
            });
        }
    }

    /// Whether the waiting batch is due now (the write window's timer fired,
    /// or a flush completed); if so it is no longer waiting.
    pub fn on_timer(&mut self, now: Instant) -> bool {
        if !self.flushing && self.due.is_some_and(|d| now >= d) {
            self.due = None;
            return true;
        }
        false
    }

    /// When the waiting batch is due, if one waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const DELAY: Duration = Duration::from_millis(25);

    /// One frame queued every `every`, `n` times, as the transport sees
    /// it: the first frame of a batch wakes the writer, the others join the
    /// batch; a batch is written when the scheduler says (its flush
    /// completing at once).
    async fn steady(s: &mut WriteScheduler, every: Duration, n: usize) {
        let mut queued = 0;
        for _ in 0..n {
            advance(every).await;
            let now = Instant::now();
            queued += 1;
            let write = if queued == 1 {
                s.on_queued(now, false)
            } else {
                s.on_timer(now)
            };
            if write {
                s.on_written(now, queued);
                s.on_flushed(now, false, false);
                queued = 0;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_frame_to_an_idle_socket_goes_at_once() {
        let mut s = WriteScheduler::new(DELAY);
        assert!(s.on_queued(Instant::now(), false));
        s.on_written(Instant::now(), 1);
        assert!(s.is_flushing());
        s.on_flushed(Instant::now(), false, false);
        // Right after, another frame: still at once, no burst yet.
        assert!(s.on_queued(Instant::now(), false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_calm_stream_is_written_frame_by_frame() {
        // 50 frames/s, an agent streaming tokens: never held back.
        let mut s = WriteScheduler::new(DELAY);
        steady(&mut s, Duration::from_millis(20), 30).await;
        for _ in 0..10 {
            advance(Duration::from_millis(20)).await;
            assert!(s.on_queued(Instant::now(), false), "written when it comes");
            s.on_written(Instant::now(), 1);
            s.on_flushed(Instant::now(), false, false);
        }
        assert_eq!(s.rate, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_waits_for_a_window_that_grows_with_the_rate() {
        // 1,000 frames/s: the whole delay.
        let mut s = WriteScheduler::new(DELAY);
        steady(&mut s, Duration::from_millis(1), 300).await;
        assert!(s.rate >= BURST_RATE, "{}", s.rate);
        // The batch waiting, if any, is written now.
        let t0 = Instant::now();
        s.due = None;
        s.on_written(t0, 1);
        s.on_flushed(t0, false, false);
        advance(Duration::from_millis(1)).await;
        assert!(!s.on_queued(Instant::now(), false));
        assert_eq!(s.deadline(), Some(t0 + DELAY));
        // More frames meanwhile change nothing; not due before its time.
        assert!(!s.on_queued(Instant::now(), false));
        assert!(!s.on_timer(Instant::now()));
        advance(DELAY).await;
        assert!(s.on_timer(Instant::now()));
        assert_eq!(s.deadline(), None);

        // 300 frames/s: half way between calm and burst, half the delay.
        let mut s = WriteScheduler::new(DELAY);
        steady(&mut s, Duration::from_micros(3333), 100).await;
        // The batch waiting, if any, is written now.
        let t0 = Instant::now();
        s.due = None;
        s.on_written(t0, 1);
        s.on_flushed(t0, false, false);
        advance(Duration::from_millis(1)).await;
        assert!(!s.on_queued(Instant::now(), false));
        let wait = s.deadline().unwrap() - t0;
        assert!(
            wait > DELAY * 2 / 5 && wait < DELAY * 3 / 5,
            "{wait:?} at {}/s",
            s.rate
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_goes_at_once_even_in_a_burst() {
        let mut s = WriteScheduler::new(DELAY);
        steady(&mut s, Duration::from_millis(1), 300).await;
        // The batch waiting, if any, is written now.
        let t0 = Instant::now();
        s.due = None;
        s.on_written(t0, 1);
        s.on_flushed(t0, false, false);
        advance(Duration::from_millis(1)).await;
        assert!(!s.on_queued(Instant::now(), false), "a publication waits");
        assert!(s.on_queued(Instant::now(), true), "a reply does not");
        assert_eq!(s.deadline(), None, "and takes the waiting ones along");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_spell_the_burst_is_forgotten() {
        let mut s = WriteScheduler::new(DELAY);
        steady(&mut s, Duration::from_millis(1), 300).await;
        assert!(s.rate >= BURST_RATE);
        advance(Duration::from_secs(2)).await;
        assert!(s.on_queued(Instant::now(), false));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_written_while_a_flush_is_pending() {
        let mut s = WriteScheduler::new(DELAY);
        let t0 = Instant::now();
        assert!(s.on_queued(t0, false));
        s.on_written(t0, 1);
        // The socket is slow: frames queue, even a reply waits.
        advance(DELAY * 4).await;
        assert!(!s.on_queued(Instant::now(), false));
        assert!(!s.on_queued(Instant::now(), true));
        assert!(!s.on_timer(Instant::now()));
        // The flush completes: what waits is due now, together.
        let t1 = Instant::now();
        s.on_flushed(t1, true, false);
        assert_eq!(s.deadline(), Some(t1));
        assert!(s.on_timer(t1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_control_frame_holds_batches_until_flushed() {
        let mut s = WriteScheduler::new(DELAY);
        s.needs_flush();
        assert!(!s.on_queued(Instant::now(), false));
        s.on_flushed(Instant::now(), true, false);
        // Nothing was written before: the queued frames are due at once.
        assert_eq!(s.deadline(), Some(Instant::now()));
        assert!(s.on_timer(Instant::now()));
    }
}
