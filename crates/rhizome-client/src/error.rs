//! The client's error type.

/// What can go wrong in the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The local SQLite log failed.
    #[error("local log: {0}")]
    Store(#[from] rusqlite::Error),
    /// The local log belongs to another user than the options name.
    #[error("the local log belongs to node {stored}, not to user {user}")]
    WrongOwner {
        /// The node id stored in the log.
        stored: String,
        /// The user the options name.
        user: String,
    },
    /// An argument was refused (an action without a string `type`, a bad user id, …).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The client was closed, or its background task ended.
    #[error("the client is stopped")]
    Stopped,
    /// The local log's lock was poisoned by a panic in another thread.
    #[error("the local log is unusable after a panic")]
    Poisoned,
}
