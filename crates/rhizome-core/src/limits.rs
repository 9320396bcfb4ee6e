//! Named limits. Every queue and buffer in Rhizome is bounded by one of these.

use std::time::Duration;

/// Limits of one server; each is documented in the README and settable in the config file.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes.
    pub frame_bytes_max: usize,
    /// Most actions in one `sync` message.
    pub actions_per_sync_max: usize,
    /// Most open connections; more are refused with HTTP 503 before the upgrade.
    pub connections_max: usize,
    /// Time a connection may take to authenticate.
    pub unauthenticated_timeout: Duration,
    /// Messages a connection may send before `connect`; they are replayed after authentication.
    pub pre_auth_messages_max: usize,
    /// Bytes queued for one connection before it is disconnected as a slow consumer.
    pub outbound_queue_bytes_max: usize,
    /// `sync` messages of one connection waiting for their commit; more stop reading the socket.
    pub inflight_syncs_max: usize,
    /// Connections with a backlog in flight (more than 64 actions awaiting commit: returning
    /// clients sending their queues) that may read and parse more input at the same time; the
    /// others wait their turn, first come first served, with their input left in the kernel.
    /// A connection with fewer in flight (an online client sending a few actions) never waits
    /// for this, so it is not queued behind a reconnect storm's backlogs.
    pub backlog_readers_max: usize,
    /// Actions sent in one catch-up `sync` frame.
    pub catch_up_chunk_actions: usize,
    /// Failed authentications per IP address within `auth_failure_window` before refusing all.
    pub auth_failures_max: usize,
    /// How long a failed authentication counts against its IP address.
    pub auth_failure_window: Duration,
    /// Time of silence after which the server pings.
    pub ping_interval: Duration,
    /// Time without an answer to `ping` after which the connection is closed.
    pub timeout: Duration,
    /// Time a write to a socket may block before the connection is dropped.
    pub write_timeout: Duration,
    /// Time of quiet after which a connection is parked: its task and its socket's runtime
    /// registration are released, and its socket waits in one shared poller until it has input,
    /// output or a timer. A parked connection costs its protocol state only.
    pub park_after: Duration,
    /// Most actions one HTTP pull answers with; a client that was away pages through the rest.
    pub pull_actions_max: usize,
    /// Most distinct channels one HTTP pull follows: each costs an access check and a read
    /// per page.
    pub pull_channels_max: usize,
    /// Longest an HTTP pull with nothing to answer is held open (long-poll), whatever its
    /// `wait` asks for.
    pub long_poll: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 16 * 1024 * 1024,
            actions_per_sync_max: 100_000,
            connections_max: 50_000,
            unauthenticated_timeout: Duration::from_secs(10),
            pre_auth_messages_max: 64,
            outbound_queue_bytes_max: 16 * 1024 * 1024,
            inflight_syncs_max: 64,
            backlog_readers_max: 4,
            catch_up_chunk_actions: 500,
            auth_failures_max: 3,
            auth_failure_window: Duration::from_secs(3),
            ping_interval: Duration::from_secs(20),
            timeout: Duration::from_secs(70),
            write_timeout: Duration::from_secs(30),
            park_after: Duration::from_secs(1),
            pull_actions_max: 1000,
            pull_channels_max: 100,
            long_poll: Duration::from_secs(25),
        }
    }
}
