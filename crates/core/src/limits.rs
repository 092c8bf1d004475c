//! Every limit wsgate enforces, with its default and the reason for it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

// Fixed limits: part of the contract or of wsgate's defences, not tuned per
// deployment. Each says why it has its value; the configurable ones follow
// in [`Limits`].

/// Longest channel name (SPEC §5: `[A-Za-z0-9_.:@-]{1,255}`).
pub const MAX_CHANNEL_BYTES: usize = 255;
/// Most publications one history answer carries: a client pages with
/// `since` beyond it, so no answer is unbounded.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Largest `history_size` a namespace may keep in memory per channel.
pub const MAX_HISTORY_SIZE: usize = 100_000;
/// How long before `exp` a connection is warned with `token_expiring`
/// (SPEC §4): time enough to fetch and send a new token.
pub const TOKEN_WARNING: Duration = Duration::from_secs(60);
/// Rate-limited messages in a row that end a connection with 1008: a
/// client that keeps sending into the limit is not slowing down.
pub const MAX_DROPPED_IN_A_ROW: u32 = 10;
/// Longest token accepted; anything longer is not a token we issued, and
/// verifying it would cost more than it is worth.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Latest `exp` accepted: 9999-12-31T23:59:59Z. Beyond it a timestamp is
/// not a date (and loses precision in JavaScript clients that read
/// `expires_at`).
pub const MAX_EXP: u64 = 253_402_300_799;
/// The furthest a connection timer is set (about 30 years): an `exp`
/// centuries away would overflow `Instant` arithmetic, and a deadline
/// further off than any process lives is the same as none.
pub const MAX_TIMER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
/// Largest JWKS document read: real ones are a few KiB; the answer is read
/// with this running cap, never buffered whole.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Longest thread title, in characters (SPEC §6).
pub const MAX_TITLE_CHARS: usize = 200;
/// Most threads or messages one listing returns; a client pages beyond it.
pub const MAX_PAGE: u32 = 200;
/// Largest request body of the server API.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most channels one `POST /api/broadcast` may name.
pub const MAX_BROADCAST_CHANNELS: usize = 1000;
/// How long to wait for the client's close frame after sending ours: a
/// client that neither reads nor answers must not keep its task alive.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// `[limits]` in the configuration. Each field's environment variable is
/// `WSGATE_LIMITS__<FIELD>` in upper case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open connections on this node (default 10000); beyond it the
    /// handshake gets 503 so a load balancer tries another node.
    pub max_connections: usize,
    /// Open connections per user `sub` (default 3): one user cannot take a
    /// node's capacity. 429 beyond it.
    pub max_connections_per_user: usize,
    /// Handshakes per minute from one IP address (default 60): cheap defence
    /// against reconnect storms and token guessing. 429 beyond it.
    pub handshakes_per_minute_per_ip: u32,
    /// Seconds a client has to send a complete request head (default 10),
    /// also the longest a keep-alive connection may idle between requests:
    /// a socket that never completes a request must not hold a file
    /// descriptor for ever.
    pub header_timeout_secs: u64,
    /// Connections from one IP address (IPv6: one /64) that have not
    /// upgraded to WebSocket yet (default 64; a browser opens at most 6 per
    /// host). Beyond it new sockets are closed at once: half-sent requests
    /// from one address cannot exhaust the server's file descriptors.
    pub pending_connections_per_ip: usize,
    /// Connections from all addresses that have not upgraded yet (default
    /// 4096), for floods from many addresses.
    pub max_pending_connections: usize,
    /// Largest frame a client may send, after decompression (default 8192).
    /// Commands are small; a bigger frame is an attack or a bug. Close 1009.
    pub max_message_bytes: usize,
    /// Sustained client messages per minute (default 30)...
    pub messages_per_minute: u32,
    /// ...with bursts of up to this many (default 10).
    pub message_burst: u32,
    /// Seconds between server pings (default 30), below common proxy idle
    /// timeouts of 60 s.
    pub heartbeat_secs: u64,
    /// Seconds without any frame from the client before close 4002
    /// (default 75: two missed pings and some slack).
    pub heartbeat_timeout_secs: u64,
    /// Bytes queued towards one client before it is closed with 4009
    /// (default 1 MiB): a slow reader must never slow publishers or grow
    /// the server's memory without bound.
    pub outbound_queue_bytes: usize,
    /// Channels one connection may subscribe to (default 128).
    pub max_subscriptions: usize,
    /// Agent runs of one user at a time (default 3): each holds an upstream
    /// request and a model's time. `error conflict` beyond it.
    pub max_runs_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_user: 3,
            handshakes_per_minute_per_ip: 60,
            header_timeout_secs: 10,
            pending_connections_per_ip: 64,
            max_pending_connections: 4096,
            max_message_bytes: 8192,
            messages_per_minute: 30,
            message_burst: 10,
            heartbeat_secs: 30,
            heartbeat_timeout_secs: 75,
            outbound_queue_bytes: 1 << 20,
            max_subscriptions: 128,
            max_runs_per_user: 3,
        }
    }
}

impl Limits {
    /// Checks relations between fields; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let positive = [
            ("limits.max_connections", self.max_connections as u64),
            (
                "limits.max_connections_per_user",
                self.max_connections_per_user as u64,
            ),
            (
                "limits.handshakes_per_minute_per_ip",
                self.handshakes_per_minute_per_ip as u64,
            ),
            ("limits.header_timeout_secs", self.header_timeout_secs),
            (
                "limits.pending_connections_per_ip",
                self.pending_connections_per_ip as u64,
            ),
            (
                "limits.max_pending_connections",
                self.max_pending_connections as u64,
            ),
            ("limits.max_message_bytes", self.max_message_bytes as u64),
            (
                "limits.messages_per_minute",
                self.messages_per_minute as u64,
            ),
            ("limits.message_burst", self.message_burst as u64),
            ("limits.heartbeat_secs", self.heartbeat_secs),
            ("limits.heartbeat_timeout_secs", self.heartbeat_timeout_secs),
            (
                "limits.outbound_queue_bytes",
                self.outbound_queue_bytes as u64,
            ),
            ("limits.max_subscriptions", self.max_subscriptions as u64),
            ("limits.max_runs_per_user", self.max_runs_per_user as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key, "must be greater than 0"));
            }
        }
        if self.heartbeat_timeout_secs <= self.heartbeat_secs {
            return Err((
                "limits.heartbeat_timeout_secs",
                "must be greater than limits.heartbeat_secs",
            ));
        }
        if self.header_timeout_secs > 3600 {
            return Err(("limits.header_timeout_secs", "must be at most 3600"));
        }
        if self.max_message_bytes > 64 << 20 {
            return Err(("limits.max_message_bytes", "must be at most 64 MiB"));
        }
        // The queue counts in u32 (it is in every connection).
        if self.outbound_queue_bytes > 1 << 30 {
            return Err(("limits.outbound_queue_bytes", "must be at most 1 GiB"));
        }
        Ok(())
    }
}
