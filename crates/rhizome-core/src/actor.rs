//! Whose name a CRDT operation's dots carry (docs/edge.md, "One device, several servers").
//!
//! The server that applies an operation assigns its dots: the author's next counter in the
//! object's context, or the author's new totals of a counter. That is only dense and unique
//! while one server applies all of an author's operations on an object. A device that writes
//! at an edge while the edge is cut off, then at the cloud directly, would get the same dot
//! (or the same running total) from both, and the join would keep one of the two operations.
//!
//! So the actor of an operation names the device *and* the server that applied it:
//! - a server without an upstream (the root of a tree of nodes) uses the author's node id as
//!   it is, which keeps a lone server's documents as they always were;
//! - an edge uses `server:<site>~<author>`, where `<site>` is the client id of its link
//!   (`edge:site1` for the link node `edge:site1:link`); a server's own actions keep its
//!   node id, which no other server applies.
//!
//! The decorated form can never be a client's node id (no client is of user `server`). A site
//! is ASCII letters, digits, `:`, `_`, `.` and `-`, so the first `~` or `#` after the prefix
//! ends it, and two sites give two names. When the whole would be longer than a node id may
//! be, the form is `server:<site>#<hex>` instead, the first 128 bits of the author's SHA-256:
//! apart from every `~` form, whatever the author's node id.

use rhizome_protocol::ids::NODE_ID_BYTES_MAX;
use rhizome_protocol::{ClientId, NodeId};
use sha2::{Digest, Sha256};

/// Most bytes of a site (an edge link's client id).
pub const SITE_BYTES_MAX: usize = 64;

/// What separates the site from the author in a decorated actor.
const SEPARATOR: char = '~';

/// What separates the site from the author's digest.
const DIGEST_SEPARATOR: char = '#';

/// Why a link's client id cannot name a site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// It holds another character than a site may.
    #[error(
        "an edge's link client id may hold only ASCII letters, digits, ':', '_', '.' and '-' (it names the edge in CRDT dots)"
    )]
    Character,
    /// It is too long.
    #[error("an edge's link client id must be at most {SITE_BYTES_MAX} bytes")]
    TooLong,
}

/// The site of an edge whose link has `client` as its client id, checked.
pub fn site(client: &ClientId) -> Result<ClientId, SiteError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-');
    if !client.as_str().chars().all(allowed) {
        return Err(SiteError::Character);
    }
    if client.as_str().len() > SITE_BYTES_MAX {
        return Err(SiteError::TooLong);
    }
    Ok(client.clone())
}

/// The actor of an operation by `author` applied by this server, an edge of `site` or, with
/// `None`, a server without an upstream.
pub fn actor(author: &NodeId, site: Option<&ClientId>) -> NodeId {
    let Some(site) = site else { return author.clone() };
    if author.is_server() {
        return author.clone();
    }
    let whole = format!("server:{site}{SEPARATOR}{author}");
    if whole.len() <= NODE_ID_BYTES_MAX {
        return NodeId::from(whole);
    }
    NodeId::from(format!("server:{site}{DIGEST_SEPARATOR}{}", digest_hex(author)))
}

/// 128 bits of the SHA-256 of `author`'s node id, in hex: the name of an author too long to
/// be spelled out in an actor.
fn digest_hex(author: &NodeId) -> String {
    let digest = Sha256::digest(author.as_str().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is the actor under which an edge (any edge) applies `author`'s operations
/// ([`actor`] with a site): the name a taking back of the author's counter operation may
/// carry, whichever edge of a chain took the operation.
pub fn is_edge_actor_of(name: &NodeId, author: &NodeId) -> bool {
    let Some(rest) = name.as_str().strip_prefix("server:") else { return false };
    if let Some(site) = rest.strip_suffix(author.as_str()).and_then(|r| r.strip_suffix(SEPARATOR)) {
        return !site.is_empty() && !site.contains(SEPARATOR);
    }
    rest.strip_suffix(digest_hex(author).as_str())
        .and_then(|r| r.strip_suffix(DIGEST_SEPARATOR))
        .is_some_and(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_actor_is_recognised_as_its_authors_at_any_edge() {
        let alice = NodeId::from("alice:a1:t");
        for site in ["edge:site1", "edge:region"] {
            assert!(is_edge_actor_of(&actor(&alice, Some(&site.into())), &alice));
        }
        let long = NodeId::from(format!("bob:{}:t", "x".repeat(NODE_ID_BYTES_MAX - 8)).as_str());
        assert!(is_edge_actor_of(&actor(&long, Some(&"edge:s".into())), &long));
        for other in
            ["alice:a1:t", "server:edge:s1~bob:b1:t", "server:~alice:a1:t", "server:edge:s1~x~alice:a1:t"]
        {
            assert!(!is_edge_actor_of(&NodeId::from(other), &alice), "{other}");
        }
        assert!(!is_edge_actor_of(&actor(&long, Some(&"edge:s".into())), &alice));
    }

    #[test]
    fn a_server_without_an_upstream_keeps_the_authors_node_id() {
        assert_eq!(actor(&"alice:a1:t".into(), None), NodeId::from("alice:a1:t"));
    }

    #[test]
    fn an_edge_names_itself_and_the_author() {
        let site = site(&"edge:site1".into()).expect("site");
        assert_eq!(actor(&"alice:a1:t".into(), Some(&site)), NodeId::from("server:edge:site1~alice:a1:t"));
        let other = ClientId::from("edge:site2");
        assert_ne!(actor(&"alice:a1:t".into(), Some(&site)), actor(&"alice:a1:t".into(), Some(&other)));
        assert_eq!(actor(&"server:x1".into(), Some(&site)), NodeId::from("server:x1"), "a server's own");
    }

    #[test]
    fn a_decorated_actor_is_a_valid_node_id_and_never_a_clients() {
        let site = ClientId::from("e".repeat(SITE_BYTES_MAX));
        for author in ["a", "alice:a1:t", &format!("bob:{}:t", "x".repeat(NODE_ID_BYTES_MAX - 8))] {
            let author = NodeId::parse(author).expect("author");
            let got = actor(&author, Some(&site));
            assert!(NodeId::parse(got.as_str()).is_some(), "{got}");
            assert!(got.is_server(), "{got}");
        }
    }

    #[test]
    fn a_long_author_is_named_by_its_digest() {
        let site = ClientId::from("edge:s");
        let long = |c: char| NodeId::from(format!("bob:{}:t", c.to_string().repeat(240)));
        let (a, b) = (actor(&long('x'), Some(&site)), actor(&long('y'), Some(&site)));
        assert_ne!(a, b);
        assert!(
            a.as_str().starts_with("server:edge:s#") && a.as_str().len() == "server:edge:s#".len() + 32,
            "{a}"
        );
        // Never the name of an author whose node id looks like a digest.
        let lookalike = NodeId::from(a.as_str().trim_start_matches("server:edge:s"));
        assert_ne!(actor(&lookalike, Some(&site)), a);
        assert_eq!(a, actor(&long('x'), Some(&site)), "the same author, the same actor");
    }

    #[test]
    fn a_site_has_no_separator_and_a_bounded_length() {
        for bad in ["edge:a~b", "edge:a#b", "edge:a b", "edge:é"] {
            assert_eq!(site(&bad.into()), Err(SiteError::Character), "{bad}");
        }
        assert_eq!(site(&ClientId::from("e".repeat(SITE_BYTES_MAX + 1))), Err(SiteError::TooLong));
        assert!(site(&"edge:site1".into()).is_ok());
    }
}
