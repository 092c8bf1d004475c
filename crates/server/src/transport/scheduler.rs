//! When a connection's queued frames are written: the batching rule of the
//! transport, kept apart from the socket so it can be tested on paused time.
//!
//! The rule today: a frame to a socket that has not been written to for
//! `write_delay` goes out at once; frames that follow within the window go
//! out together when it ends, in one write; a batch that reaches the
//! outbound queue's batch size goes out at once; nothing new is handed to
//! the socket while a previous write is still being flushed (the frames
//! wait in the bounded outbound queue instead of the socket's buffer).

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct WriteScheduler {
    delay: Duration,
    /// True while written frames (or control frames) wait in the socket's
    /// buffer for a flush.
    flushing: bool,
    /// When the last batch was handed to the socket.
    last_write: Option<Instant>,
    /// When the frames waiting in the queue are to be written.
    due: Option<Instant>,
}

impl WriteScheduler {
    pub fn new(delay: Duration) -> Self {
        WriteScheduler {
            delay,
            flushing: false,
            last_write: None,
            due: None,
        }
    }

    /// Frames were queued. Whether to write them now; otherwise they are
    /// written when the flush completes or at [`Self::deadline`].
    pub fn on_queued(&mut self, now: Instant, batch_full: bool) -> bool {
        if self.flushing {
            return false;
        }
        if self.due.is_some() && !batch_full {
            return false;
        }
        self.due = None;
        match self
            .last_write
            .map(|t| t + self.delay)
            .filter(|due| *due > now && !batch_full)
        {
            Some(due) => {
                self.due = Some(due);
                false
            }
            None => true,
        }
    }

    /// A batch was handed to the socket (`sent`: it held frames, so a flush
    /// is due).
    pub fn on_written(&mut self, now: Instant, sent: bool) {
        self.flushing = sent;
        self.last_write = Some(now);
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
    /// the next batch, after the write delay unless the batch is full.
    pub fn on_flushed(&mut self, now: Instant, has_frames: bool, batch_full: bool) {
        self.flushing = false;
        if has_frames && self.due.is_none() {
            self.due = Some(if batch_full {
                now
            } else {
                self.last_write.map_or(now, |t| t + self.delay)
            });
        }
    }

    /// The connection's timer fired: whether the waiting batch is due now.
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

    #[tokio::test(start_paused = true)]
    async fn the_first_frame_to_an_idle_socket_goes_at_once() {
        let mut s = WriteScheduler::new(DELAY);
        assert!(s.on_queued(Instant::now(), false));
        s.on_written(Instant::now(), true);
        assert!(s.is_flushing());
        s.on_flushed(Instant::now(), false, false);
        // Long after, the socket is idle again: at once.
        advance(DELAY).await;
        assert!(s.on_queued(Instant::now(), false));
    }

    #[tokio::test(start_paused = true)]
    async fn frames_within_the_window_wait_for_its_end_and_go_together() {
        let mut s = WriteScheduler::new(DELAY);
        let t0 = Instant::now();
        assert!(s.on_queued(t0, false));
        s.on_written(t0, true);
        s.on_flushed(t0, false, false);
        advance(Duration::from_millis(5)).await;
        assert!(!s.on_queued(Instant::now(), false));
        assert_eq!(s.deadline(), Some(t0 + DELAY));
        // More frames meanwhile change nothing.
        advance(Duration::from_millis(5)).await;
        assert!(!s.on_queued(Instant::now(), false));
        assert_eq!(s.deadline(), Some(t0 + DELAY));
        // Not yet due.
        assert!(!s.on_timer(Instant::now()));
        advance(Duration::from_millis(15)).await;
        assert!(s.on_timer(Instant::now()));
        assert_eq!(s.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_even_within_the_window() {
        let mut s = WriteScheduler::new(DELAY);
        let t0 = Instant::now();
        assert!(s.on_queued(t0, false));
        s.on_written(t0, true);
        s.on_flushed(t0, false, false);
        advance(Duration::from_millis(1)).await;
        assert!(!s.on_queued(Instant::now(), false));
        assert!(s.on_queued(Instant::now(), true));
        assert_eq!(s.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_written_while_a_flush_is_pending() {
        let mut s = WriteScheduler::new(DELAY);
        let t0 = Instant::now();
        assert!(s.on_queued(t0, false));
        s.on_written(t0, true);
        // The socket is slow: frames queue, even a full batch waits.
        advance(DELAY * 4).await;
        assert!(!s.on_queued(Instant::now(), false));
        assert!(!s.on_queued(Instant::now(), true));
        assert!(!s.on_timer(Instant::now()));
        // The flush completes after the window: what waits is due now.
        let t1 = Instant::now();
        s.on_flushed(t1, true, false);
        assert_eq!(s.deadline(), Some(t0 + DELAY));
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
