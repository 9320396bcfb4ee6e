//! The WebSocket opening handshake (RFC 6455, section 4.2), checked the same way whether the
//! request came through hyper or was read directly off the socket.

/// A valid WebSocket handshake request.
#[derive(Debug)]
pub struct Accepted {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// The request's `Cookie` header (Logux passes it to the authenticator).
    pub cookie: Option<String>,
}

/// Why a request is not a WebSocket handshake Rhizome accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a WebSocket upgrade at all: 404.
    NotWebSocket,
    /// Another WebSocket version than 13: 426 with `Sec-WebSocket-Version: 13`.
    WrongVersion,
    /// No `Sec-WebSocket-Key`: 400.
    MissingKey,
}

/// Checks a request from its method and headers (names are case-insensitive).
pub fn check(method: &str, headers: &[(&str, &[u8])]) -> Result<Accepted, Refusal> {
    let values = |name: &'static str| {
        headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    };
    let has_token = |name: &'static str, token: &str| {
        values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if method != "GET" || !has_token("connection", "upgrade") || !has_token("upgrade", "websocket") {
        return Err(Refusal::NotWebSocket);
    }
    if values("sec-websocket-version").next() != Some(b"13".as_slice()) {
        return Err(Refusal::WrongVersion);
    }
    let Some(key) = values("sec-websocket-key").next() else {
        return Err(Refusal::MissingKey);
    };
    let cookie = values("cookie").next().and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned);
    Ok(Accepted { accept: rhizome_websocket::accept_key(key), cookie })
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
    )
}

/// Headers read at most when parsing a request head directly.
const HEADERS_MAX: usize = 32;

/// A request head read directly: its length in bytes and the handshake check.
pub type Head = (usize, Result<Accepted, Refusal>);

/// Parses a complete request head at the start of `bytes`. `None` when the head is incomplete
/// or not parseable here (hyper then handles the request).
pub fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(length) = request.parse(bytes).ok()? else {
        return None;
    };
    let method = request.method?;
    let headers: Vec<(&str, &[u8])> = request.headers.iter().map(|h| (h.name, h.value)).collect();
    let checked = check(method, &headers);
    Some((length, checked))
}

/// A `POST /v1/pull` whose head is all in the bytes read so far, simple enough to serve
/// without hyper: HTTP/1.1, a `Content-Length` body, no `Transfer-Encoding`, no `Expect`.
#[derive(Debug, PartialEq, Eq)]
pub struct Pull {
    /// Bytes of the head.
    pub head: usize,
    /// Bytes of the body, right after the head.
    pub body: usize,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// Whether the client asked to close the connection after the answer.
    pub close: bool,
}

/// The pull request whose head starts `bytes`, if it is one served directly (its body may not
/// have arrived yet).
pub fn parse_pull(bytes: &[u8]) -> Option<Pull> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = request.parse(bytes).ok()? else {
        return None;
    };
    if request.method? != "POST" || request.path? != "/v1/pull" || request.version? != 1 {
        return None;
    }
    let mut body = None;
    let mut authorization = None;
    let mut close = false;
    for h in request.headers.iter() {
        let value = std::str::from_utf8(h.value).ok()?;
        if h.name.eq_ignore_ascii_case("content-length") {
            // Two lengths, even equal, are left to hyper's stricter handling.
            if body.is_some() {
                return None;
            }
            // Only what hyper takes as a length (1*DIGIT between optional spaces or tabs):
            // `usize::from_str` also takes a `+`, and `trim` non-ASCII spaces, which would frame
            // the body differently from the general stack.
            let digits = value.trim_matches([' ', '\t']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            body = Some(digits.parse::<usize>().ok()?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") || h.name.eq_ignore_ascii_case("expect") {
            return None;
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_owned());
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let body = body?;
    head.checked_add(body)?;
    Some(Pull { head, body, authorization, close })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_simple_pull_is_served_directly_and_anything_else_is_left_to_hyper() {
        let body = r#"{"node":"a:b:c","wait":25}"#;
        let request = format!(
            "POST /v1/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let pull = parse_pull(request.as_bytes()).expect("a direct pull");
        assert_eq!(&request[pull.head..pull.head + pull.body], body);
        assert_eq!(pull.authorization.as_deref(), Some("Bearer t"));
        assert!(!pull.close);
        let cut = parse_pull(&request.as_bytes()[..pull.head]).expect("a head without its body yet");
        assert_eq!(cut, pull);
        assert!(parse_pull(&request.as_bytes()[..pull.head - 1]).is_none(), "an incomplete head");
        let closing = request.replace("Host: x", "Connection: close");
        assert!(parse_pull(closing.as_bytes()).expect("direct").close);
        for other in [
            request.replace("POST /v1/pull", "POST /v1/push"),
            request.replace("POST /v1/pull", "POST /v1/pull?x=1"),
            request.replace("HTTP/1.1", "HTTP/1.0"),
            request.replace("Host: x", "Transfer-Encoding: chunked"),
            request.replace("Host: x", "Expect: 100-continue"),
            request.replace("Host: x", &format!("Content-Length: {}", body.len())),
            request.replace(&format!("Content-Length: {}", body.len()), "Content-Length: x"),
            request.replace(
                &format!("Content-Length: {}", body.len()),
                &format!("Content-Length: +{}", body.len()),
            ),
            request.replace(
                &format!("Content-Length: {}", body.len()),
                &format!("Content-Length: {}\u{a0}", body.len()),
            ),
            request.replace(&format!("Content-Length: {}", body.len()), "Content-Length: "),
        ] {
            assert!(parse_pull(other.as_bytes()).is_none(), "{other}");
        }
    }

    const REQUEST: &[u8] =
        b"GET /any HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: a=b\r\n\r\n[\"connect\"";

    #[test]
    fn a_head_read_off_the_socket_is_checked_like_one_from_hyper() {
        let (length, checked) = parse_head(REQUEST).expect("complete head");
        assert_eq!(&REQUEST[length..], b"[\"connect\"", "the bytes after the head stay unread");
        let accepted = checked.expect("valid handshake");
        assert_eq!(accepted.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accepted.cookie.as_deref(), Some("a=b"));
        assert!(parse_head(&REQUEST[..40]).is_none(), "an incomplete head is left to hyper");
    }

    #[test]
    fn refusals() {
        let ok: [(&str, &[u8]); 3] =
            [("Upgrade", b"websocket"), ("Connection", b"upgrade"), ("Sec-WebSocket-Version", b"13")];
        assert_eq!(check("POST", &ok).err(), Some(Refusal::NotWebSocket));
        assert_eq!(check("GET", &ok[1..]).err(), Some(Refusal::NotWebSocket));
        assert_eq!(check("GET", &ok[..2]).err(), Some(Refusal::WrongVersion));
        assert_eq!(check("GET", &ok).err(), Some(Refusal::MissingKey));
    }
}
