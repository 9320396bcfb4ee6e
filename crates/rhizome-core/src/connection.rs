//! The per-connection protocol state machine: handshake, authentication, pre-auth queue,
//! id/time decompression, ping and timeouts.
//!
//! Sans-IO: the driver feeds it frames and the current time, and carries out the [`Output`]s.
//! It never waits: authentication is asked for with [`Output::Authenticate`] and answered with
//! [`Connection::auth_finished`].

use crate::app::AuthRequest;
use crate::limits::Limits;
use rhizome_protocol::message::{encode_connected, encode_duilian, encode_error, encode_headers};
use rhizome_protocol::{parse, Action, ActionId, ClientId, Codec, Message, NodeId, UserId, PROTOCOL};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::Arc;

/// Handshake settings of the server.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Our node id, `server:<id>`.
    pub server_node: NodeId,
    /// Our subprotocol, sent in `connected`.
    pub subprotocol: u64,
    /// Clients below this subprotocol get `wrong-subprotocol`.
    pub min_subprotocol: u64,
    /// Development mode: send `headers {env: "development"}`.
    pub development: bool,
    /// This server relays what it takes to an upstream of its own (it is an edge): its peers
    /// are told so in `connected` (docs/edge.md, two levels of acknowledgement).
    pub relays: bool,
}

/// Why the connection is closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer broke the protocol; an `error` was sent.
    ProtocolError,
    /// Authentication failed; `wrong-credentials` (or a version error) was sent.
    Refused,
    /// No `connect`, or no answer to `ping`, in time.
    Timeout,
    /// Too many messages before authentication.
    Flood,
}

/// Whether `node` is the server's: `server` or of user `server`, which no client may be.
pub(crate) fn is_server(node: &NodeId) -> bool {
    node.is_server()
}

/// The authenticator's answer to a `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Wrong credentials: `wrong-credentials`, and the connection closes.
    Refused,
    /// A client: it sends only its own actions (ids of its own client id).
    Client,
    /// A peer (an edge node's link to this server): it relays actions of other nodes, each
    /// checked by the rules as its author's (see docs/edge.md).
    Peer,
}

/// What an authenticated connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Only its own actions.
    Client,
    /// Actions of any node, relayed.
    Peer,
}

/// Identity of an authenticated connection.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client's node id.
    pub node_id: NodeId,
    /// `user:client`.
    pub client_id: ClientId,
    /// The user part.
    pub user_id: Option<UserId>,
    /// The client's subprotocol.
    pub subprotocol: u64,
    /// The `synced` of `connect`: the last `added` the client received from us.
    pub synced: u64,
    /// The Logux headers.
    pub headers: Arc<Map<String, Value>>,
    /// Compression state of this connection.
    pub codec: Codec,
    /// What the connection may do (set when it is authenticated).
    pub role: Role,
}

/// An action received in a `sync`, decompressed and checked against the meta rules.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The full id.
    pub id: ActionId,
    /// Creation time in the server clock.
    pub time: i64,
    /// The action.
    pub action: Action,
    /// The action's subprotocol (the connection's when the client gave none).
    pub subprotocol: u64,
    /// Set when the meta rules refuse it: a meta key outside `id`/`time`/`subprotocol`, or an
    /// id of another client. Such an action is answered with undo `denied` and never stored.
    pub refused: bool,
    /// The ids of the deltas a peer folded into this one (its `folded` meta, see
    /// docs/edge.md); a client's `folded` refuses the action.
    pub folded: Vec<ActionId>,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Send this frame.
    Send(String),
    /// Ask the authenticator, then call [`Connection::auth_finished`].
    Authenticate(AuthRequest),
    /// Authentication succeeded (after `connected` was sent): register the connection.
    Authenticated(Box<Identity>),
    /// Actions to run through the pipeline; answer `["synced", added]` once they are durable.
    Sync {
        /// The `added` to echo in `synced`.
        added: u64,
        /// The actions.
        actions: Vec<Incoming>,
    },
    /// The peer confirmed our `sync` up to this `added`.
    Synced(u64),
    /// Answer a `ping` with `["pong", added]`, `added` being what was safely delivered.
    Pong,
    /// Send `["ping", added]`.
    Ping,
    /// Close the socket (an `error` frame, if any, was sent just before).
    Close(CloseReason),
}

#[derive(Debug)]
enum Phase {
    AwaitingConnect,
    Authenticating { identity: Box<Identity>, received_ms: i64 },
    Authenticated { codec: Codec, client_id: ClientId, subprotocol: u64, role: Role },
    Closed,
}

/// The headers of every connection that sent none.
static NO_HEADERS: std::sync::LazyLock<Arc<Map<String, Value>>> = std::sync::LazyLock::new(Arc::default);

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    config: Arc<HandshakeConfig>,
    limits: Arc<Limits>,
    phase: Phase,
    /// The Logux headers the client sent before authentication (boxed: most send none).
    headers: Option<Box<Map<String, Value>>>,
    /// Messages received before authentication, replayed after it (boxed: usually none).
    #[allow(clippy::box_collection)] // the box keeps every authenticated session 24 bytes smaller
    queued: Option<Box<VecDeque<Message>>>,
    opened_ms: i64,
    last_activity_ms: i64,
    ping_sent_ms: Option<i64>,
}

impl Connection {
    /// A new connection, opened at `now_ms`.
    pub fn new(config: Arc<HandshakeConfig>, limits: Arc<Limits>, now_ms: i64) -> Self {
        Connection {
            config,
            limits,
            phase: Phase::AwaitingConnect,
            headers: None,
            queued: None,
            opened_ms: now_ms,
            last_activity_ms: now_ms,
            ping_sent_ms: None,
        }
    }

    /// Handles one text frame.
    pub fn on_frame(&mut self, text: &str, now_ms: i64, out: &mut Vec<Output>) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.last_activity_ms = now_ms;
        match parse(text) {
            Ok(message) => self.on_message(message, now_ms, out),
            Err(e) => self.fail(e.to_frame(), CloseReason::ProtocolError, out),
        }
    }

    fn fail(&mut self, frame: String, reason: CloseReason, out: &mut Vec<Output>) {
        out.push(Output::Send(frame));
        out.push(Output::Close(reason));
        self.phase = Phase::Closed;
    }

    fn on_message(&mut self, message: Message, now_ms: i64, out: &mut Vec<Output>) {
        match message {
            Message::Headers(h) => self.headers = Some(Box::new(h)),
            Message::Error { .. } => {}
            Message::Debug(_) => {}
            Message::Connect { protocol, node_id, synced, options } => {
                if !matches!(self.phase, Phase::AwaitingConnect) {
                    return self.fail(
                        encode_error("wrong-format", Some(&Value::from("connect was already received"))),
                        CloseReason::ProtocolError,
                        out,
                    );
                }
                self.on_connect(protocol, &node_id, synced, options, now_ms, out)
            }
            Message::Connected { .. } => self.fail(
                encode_error("wrong-format", Some(&Value::from("servers do not accept connected"))),
                CloseReason::ProtocolError,
                out,
            ),
            Message::Duilian(text) if text == "金木水火土" => {
                out.push(Output::Send(encode_duilian("板城烧锅酒")))
            }
            other => match &self.phase {
                Phase::Authenticated { .. } => self.on_authenticated_message(other, out),
                _ => {
                    let queued = self.queued.get_or_insert_with(Box::default);
                    if queued.len() >= self.limits.pre_auth_messages_max {
                        return self.fail(
                            encode_error(
                                "wrong-format",
                                Some(&Value::from("too many messages before connect")),
                            ),
                            CloseReason::Flood,
                            out,
                        );
                    }
                    queued.push_back(other);
                }
            },
        }
    }

    fn on_connect(
        &mut self,
        protocol: u32,
        node_text: &str,
        synced: u64,
        options: rhizome_protocol::ConnectOptions,
        now_ms: i64,
        out: &mut Vec<Output>,
    ) {
        // Protocol 7 changed the id format and `synced` semantics; answering it as protocol 5
        // (what the reference does) makes it fail later in confusing ways, so refuse it clearly.
        if protocol != PROTOCOL {
            let frame =
                encode_error("wrong-protocol", Some(&json!({"supported": PROTOCOL, "used": protocol})));
            return self.fail(frame, CloseReason::Refused, out);
        }
        let Some(node_id) = NodeId::parse(node_text) else {
            return self.fail(encode_error("wrong-credentials", None), CloseReason::Refused, out);
        };
        if options.subprotocol < self.config.min_subprotocol {
            let frame = encode_error(
                "wrong-subprotocol",
                Some(&json!({"supported": self.config.min_subprotocol, "used": options.subprotocol})),
            );
            return self.fail(frame, CloseReason::Refused, out);
        }
        let user_id = node_id.user_id();
        if is_server(&node_id) {
            return self.fail(encode_error("wrong-credentials", None), CloseReason::Refused, out);
        }
        let client_id = node_id.client_id();
        let headers = match self.headers.take() {
            Some(headers) if !headers.is_empty() => Arc::new(*headers),
            // Most clients send no headers: they all share one empty map.
            _ => NO_HEADERS.clone(),
        };
        let codec = Codec { base_time: 0, local: self.config.server_node.clone(), remote: node_id.clone() };
        let identity = Identity {
            node_id: node_id.clone(),
            client_id: client_id.clone(),
            user_id: user_id.clone(),
            subprotocol: options.subprotocol,
            synced,
            headers: headers.clone(),
            codec,
            role: Role::Client,
        };
        out.push(Output::Authenticate(AuthRequest {
            user_id,
            client_id,
            node_id,
            token: options.token,
            headers,
            cookie: None,
        }));
        self.phase = Phase::Authenticating { identity: Box::new(identity), received_ms: now_ms };
    }

    /// The authenticator's answer. On success sends `headers` (development) and `connected`,
    /// emits [`Output::Authenticated`], then replays the messages queued before authentication.
    pub fn auth_finished(&mut self, grant: Grant, now_ms: i64, out: &mut Vec<Output>) {
        let Phase::Authenticating { identity, received_ms } =
            std::mem::replace(&mut self.phase, Phase::Closed)
        else {
            return;
        };
        let role = match grant {
            Grant::Refused => {
                return self.fail(encode_error("wrong-credentials", None), CloseReason::Refused, out);
            }
            Grant::Client => Role::Client,
            Grant::Peer => Role::Peer,
        };
        let mut identity = identity;
        identity.codec.base_time = now_ms;
        identity.role = role;
        if self.config.development {
            let mut h = Map::new();
            h.insert("env".into(), Value::from("development"));
            out.push(Output::Send(encode_headers(&h)));
        }
        out.push(Output::Send(encode_connected(
            self.config.server_node.as_str(),
            received_ms,
            now_ms,
            self.config.subprotocol,
            self.config.relays && role == Role::Peer,
        )));
        self.phase = Phase::Authenticated {
            codec: identity.codec.clone(),
            client_id: identity.client_id.clone(),
            subprotocol: identity.subprotocol,
            role,
        };
        self.last_activity_ms = now_ms;
        out.push(Output::Authenticated(identity));
        for message in self.queued.take().map(|q| *q).unwrap_or_default() {
            self.on_authenticated_message(message, out);
            if matches!(self.phase, Phase::Closed) {
                return;
            }
        }
    }

    fn on_authenticated_message(&mut self, message: Message, out: &mut Vec<Output>) {
        let Phase::Authenticated { codec, client_id, subprotocol, role } = &self.phase else {
            return;
        };
        match message {
            Message::Ping(_) => out.push(Output::Pong),
            Message::Pong(_) => self.ping_sent_ms = None,
            Message::Synced(added) => out.push(Output::Synced(added)),
            Message::Sync { added, entries } => {
                if entries.len() > self.limits.actions_per_sync_max {
                    let text = format!(
                        "sync carries {} actions; the limit is {}",
                        entries.len(),
                        self.limits.actions_per_sync_max
                    );
                    return self.fail(
                        encode_error("wrong-format", Some(&Value::from(text))),
                        CloseReason::ProtocolError,
                        out,
                    );
                }
                let mut actions = Vec::with_capacity(entries.len());
                for entry in entries {
                    let Some(id) = codec.decode_id(&entry.meta.id) else {
                        let text = "an action id has an invalid node id";
                        return self.fail(
                            encode_error("wrong-format", Some(&Value::from(text))),
                            CloseReason::ProtocolError,
                            out,
                        );
                    };
                    // A client may send only its own actions; a peer relays others' too, but
                    // never the server's (no client connects as the server either).
                    let foreign = !id.node.is_of(client_id) && (*role == Role::Client || is_server(&id.node));
                    let folded = entry.meta.folded_ids(&id);
                    let refused = !entry.meta.extra_keys.is_empty()
                        || foreign
                        || (*role == Role::Client && entry.meta.folded.is_some());
                    actions.push(Incoming {
                        time: codec.decode_time(entry.meta.time),
                        subprotocol: entry.meta.subprotocol.unwrap_or(*subprotocol),
                        id,
                        action: entry.action,
                        refused,
                        folded,
                    });
                }
                out.push(Output::Sync { added, actions });
            }
            Message::Headers(h) => self.headers = Some(Box::new(h)),
            _ => {}
        }
    }

    /// The next time [`Connection::on_tick`] has something to do, in ms.
    pub fn deadline_ms(&self) -> i64 {
        match self.phase {
            Phase::AwaitingConnect | Phase::Authenticating { .. } => {
                self.opened_ms + self.limits.unauthenticated_timeout.as_millis() as i64
            }
            Phase::Authenticated { .. } => match self.ping_sent_ms {
                Some(sent) => sent + self.limits.timeout.as_millis() as i64,
                None => self.last_activity_ms + self.limits.ping_interval.as_millis() as i64,
            },
            Phase::Closed => i64::MAX,
        }
    }

    /// Records that we sent something at `now_ms` (a send delays the next ping).
    pub fn note_sent(&mut self, now_ms: i64) {
        if self.ping_sent_ms.is_none() {
            self.last_activity_ms = self.last_activity_ms.max(now_ms);
        }
    }

    /// Handles timers: closes unauthenticated or unresponsive connections, pings idle ones.
    pub fn on_tick(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if now_ms < self.deadline_ms() {
            return;
        }
        match self.phase {
            Phase::AwaitingConnect | Phase::Authenticating { .. } => {
                let ms = self.limits.unauthenticated_timeout.as_millis() as u64;
                self.fail(encode_error("timeout", Some(&Value::from(ms))), CloseReason::Timeout, out)
            }
            Phase::Authenticated { .. } => {
                if self.ping_sent_ms.is_some() {
                    let ms = self.limits.timeout.as_millis() as u64;
                    self.fail(encode_error("timeout", Some(&Value::from(ms))), CloseReason::Timeout, out)
                } else {
                    self.ping_sent_ms = Some(now_ms);
                    out.push(Output::Ping);
                }
            }
            Phase::Closed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn conn() -> Connection {
        let config = HandshakeConfig {
            server_node: NodeId::from("server:test"),
            subprotocol: 1,
            min_subprotocol: 1,
            development: false,
            relays: false,
        };
        Connection::new(Arc::new(config), Arc::new(Limits::default()), 1000)
    }

    fn sends(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn refuses_old_and_new_protocols_and_low_subprotocol() {
        for (frame, answer) in [
            (r#"["connect",4,"u:c:t",0]"#, r#"["error","wrong-protocol",{"supported":5,"used":4}]"#),
            (r#"["connect",7,"u:c:t",0]"#, r#"["error","wrong-protocol",{"supported":5,"used":7}]"#),
            (r#"["connect",5,"u:c:t",0]"#, r#"["error","wrong-subprotocol",{"supported":1,"used":0}]"#),
            (r#"["connect",5,"server:c:t",0,{"subprotocol":1}]"#, r#"["error","wrong-credentials"]"#),
        ] {
            let mut c = conn();
            let mut out = Vec::new();
            c.on_frame(frame, 1001, &mut out);
            assert_eq!(sends(&out), [answer]);
            assert!(matches!(out.last(), Some(Output::Close(CloseReason::Refused))));
        }
    }

    #[test]
    fn queues_before_auth_and_replays_after() {
        let mut c = conn();
        let mut out = Vec::new();
        c.on_frame(r#"["sync",1,{"type":"inc"},{"id":1,"time":1}]"#, 1001, &mut out);
        assert!(out.is_empty());
        c.on_frame(r#"["connect",5,"u:c:t",7,{"token":"x","subprotocol":2}]"#, 1002, &mut out);
        let Some(Output::Authenticate(req)) = out.pop() else { panic!() };
        assert_eq!(req.token.as_deref(), Some("x"));
        assert_eq!(req.user_id.unwrap().as_str(), "u");
        c.auth_finished(Grant::Client, 1005, &mut out);
        assert_eq!(sends(&out), [r#"["connected",5,"server:test",[1002,1005],{"subprotocol":1}]"#]);
        let Some(Output::Authenticated(identity)) = out.get(1) else { panic!("{out:?}") };
        assert_eq!(identity.synced, 7);
        assert_eq!(identity.subprotocol, 2);
        let Some(Output::Sync { added, actions }) = out.get(2) else { panic!("{out:?}") };
        assert_eq!(*added, 1);
        assert_eq!(actions[0].id.to_string(), "1006 u:c:t 0");
        assert_eq!(actions[0].subprotocol, 2);
        assert!(!actions[0].refused);
    }

    #[test]
    fn refuses_foreign_ids_and_extra_meta() {
        let mut c = conn();
        let mut out = Vec::new();
        c.on_frame(r#"["connect",5,"u:c:t",0,{"subprotocol":1}]"#, 1001, &mut out);
        c.auth_finished(Grant::Client, 1001, &mut out);
        out.clear();
        c.on_frame(
            r#"["sync",4,{"type":"a"},{"id":[1,"other:c:t",0],"time":1},{"type":"b"},{"id":2,"time":2,"reasons":[]},{"type":"c"},{"id":[3,"u:c:other",0],"time":3},{"type":"d"},{"id":4,"time":4,"folded":[[1,0]]}]"#,
            1002,
            &mut out,
        );
        let Some(Output::Sync { actions, .. }) = out.first() else { panic!() };
        let refused: Vec<bool> = actions.iter().map(|a| a.refused).collect();
        assert_eq!(
            refused,
            [true, true, false, true],
            "another tab of the same client is allowed; a fold is a peer's"
        );
    }

    #[test]
    fn a_peer_relays_other_nodes_actions_but_no_extra_meta() {
        let mut c = conn();
        let mut out = Vec::new();
        c.on_frame(r#"["connect",5,"edge:e1:link",0,{"subprotocol":1}]"#, 1001, &mut out);
        // An action sent before authentication is replayed with the peer's role.
        c.on_frame(r#"["sync",1,{"type":"a"},{"id":[1,"other:c:t",0],"time":1}]"#, 1001, &mut out);
        out.clear();
        c.auth_finished(Grant::Peer, 1001, &mut out);
        c.on_frame(
            r#"["sync",5,{"type":"a"},{"id":[2,"alice:c:t",0],"time":1},{"type":"b"},{"id":3,"time":2,"reasons":[]},{"type":"c"},{"id":[9,"alice:c:t",2],"time":9,"folded":[[5,0],[0,1]]},{"type":"d"},{"id":[10,"alice:c:t",0],"time":10,"folded":[[5]]}]"#,
            1002,
            &mut out,
        );
        let actions: Vec<&Incoming> = out
            .iter()
            .filter_map(|o| match o {
                Output::Sync { actions, .. } => Some(actions.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        let refused: Vec<bool> = actions.iter().map(|a| a.refused).collect();
        assert_eq!(refused, [false, false, true, false, true], "a malformed folded is extra meta");
        let folded: Vec<String> = actions[3].folded.iter().map(ActionId::text).collect();
        let base = actions[3].id.ms - 9;
        assert_eq!(folded, [format!("{} alice:c:t 0", base + 4), format!("{} alice:c:t 1", base + 9)]);
    }

    #[test]
    fn an_edge_tells_its_peers_but_not_its_clients_that_it_relays() {
        let config = HandshakeConfig { relays: true, ..(*conn().config).clone() };
        let connected = |grant| {
            let mut c = Connection::new(Arc::new(config.clone()), Arc::new(Limits::default()), 1000);
            let mut out = Vec::new();
            c.on_frame(r#"["connect",5,"edge:e1:link",0,{"subprotocol":1}]"#, 1001, &mut out);
            out.clear();
            c.auth_finished(grant, 1002, &mut out);
            sends(&out)
        };
        assert_eq!(
            connected(Grant::Peer),
            [r#"["connected",5,"server:test",[1001,1002],{"subprotocol":1,"relays":true}]"#]
        );
        assert_eq!(
            connected(Grant::Client),
            [r#"["connected",5,"server:test",[1001,1002],{"subprotocol":1}]"#]
        );
    }

    #[test]
    fn wrong_credentials_closes() {
        let mut c = conn();
        let mut out = Vec::new();
        c.on_frame(r#"["connect",5,"u:c:t",0,{"subprotocol":1}]"#, 1001, &mut out);
        out.clear();
        c.auth_finished(Grant::Refused, 1002, &mut out);
        assert_eq!(sends(&out), [r#"["error","wrong-credentials"]"#]);
        assert!(matches!(out.last(), Some(Output::Close(CloseReason::Refused))));
    }

    #[test]
    fn times_out_without_connect_and_pings_when_idle() {
        let mut c = conn();
        let mut out = Vec::new();
        c.on_tick(1000 + 9_999, &mut out);
        assert!(out.is_empty());
        c.on_tick(1000 + 10_000, &mut out);
        assert!(matches!(out.last(), Some(Output::Close(CloseReason::Timeout))));

        let mut c = conn();
        let mut out = Vec::new();
        c.on_frame(r#"["connect",5,"u:c:t",0,{"subprotocol":1}]"#, 1000, &mut out);
        c.auth_finished(Grant::Client, 1000, &mut out);
        out.clear();
        let ping = Limits::default().ping_interval.as_millis() as i64;
        c.on_tick(1000 + ping, &mut out);
        assert!(matches!(out.as_slice(), [Output::Ping]));
        out.clear();
        c.on_frame(r#"["pong",0]"#, 1000 + ping + 5, &mut out);
        assert_eq!(c.deadline_ms(), 1000 + ping + 5 + ping);
        c.on_tick(1000 + 2 * ping + 5, &mut out);
        assert!(matches!(out.as_slice(), [Output::Ping]));
        out.clear();
        c.on_tick(1000 + 2 * ping + 5 + Duration::from_secs(70).as_millis() as i64, &mut out);
        assert!(matches!(out.last(), Some(Output::Close(CloseReason::Timeout))));
    }

    #[test]
    fn floods_before_auth_are_cut() {
        let mut c = conn();
        let mut out = Vec::new();
        for _ in 0..=Limits::default().pre_auth_messages_max {
            c.on_frame(r#"["ping",1]"#, 1001, &mut out);
        }
        assert!(matches!(out.last(), Some(Output::Close(CloseReason::Flood))));
    }
}
