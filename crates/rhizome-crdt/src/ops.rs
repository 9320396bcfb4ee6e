//! The JSON action vocabulary of CRDT objects: `crdt/…` actions parsed into [`Op`]s.

use crate::object::Kind;

/// Why an action or a document was refused. [`OpError::reason`] is the stable reason for
/// `logux/undo`; the `Display` text is for people (logs), and quotes no more of the input
/// than a truncated action type.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The action type is not one of the vocabulary's (truncated to 64 bytes).
    #[error("unknown CRDT action type {0:?}")]
    UnknownType(String),
    /// A field is missing, unknown or of the wrong type or range, or a document is malformed.
    #[error("wrong shape: {0}")]
    WrongShape(&'static str),
    /// Something is over its size limit.
    #[error("too big: more than {max} {what}")]
    TooBig {
        /// What was counted.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// An operation or delta of one kind on an object of another.
    #[error("a {found} operation on a {expected} object")]
    TypeMismatch {
        /// The object's kind.
        expected: Kind,
        /// The operation's or delta's kind.
        found: Kind,
    },
}

impl OpError {
    /// The stable camelCase reason for `logux/undo`.
    pub fn reason(&self) -> &'static str {
        match self {
            OpError::UnknownType(_) => "crdtUnknownType",
            OpError::WrongShape(_) => "crdtWrongShape",
            OpError::TooBig { .. } => "crdtTooBig",
            OpError::TypeMismatch { .. } => "crdtTypeMismatch",
        }
    }
}
