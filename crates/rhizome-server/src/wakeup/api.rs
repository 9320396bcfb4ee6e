//! The HTTP endpoints of push wake-ups (see `docs/http.md`): `GET /v1/push-config`,
//! `PUT /v1/push-target` and `DELETE /v1/push-target`.

use super::deliver::Target;
use super::{RegisterError, TargetSpec};
use crate::http_sync::{authenticate, channel_names, may_follow, ok_json, read_request, refuse};
use crate::shared::Shared;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use rhizome_protocol::Channel;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// The body of `PUT /v1/push-target`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    node: String,
    #[serde(default)]
    subprotocol: Option<u64>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    /// The channels whose actions wake the device, each checked by its subscribe rules.
    #[serde(default)]
    channels: Vec<String>,
    /// Where pokes go.
    target: Value,
}

/// The body of `DELETE /v1/push-target`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnregisterBody {
    node: String,
    #[serde(default)]
    subprotocol: Option<u64>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
}

/// `GET /v1/push-config`: what a client needs to register: the VAPID public key to subscribe
/// with (`applicationServerKey`), whether webhook targets are served, the poke interval.
pub async fn config(State(shared): State<Arc<Shared>>) -> Response {
    let wakeups = &shared.wakeups;
    let options = wakeups.options();
    ok_json(&json!({
        "webpush": {"applicationServerKey": wakeups.vapid_public_key()},
        "webhook": options.webhook.is_some(),
        "intervalMs": options.schedule.interval_ms,
    }))
}

/// `PUT /v1/push-target`: registers (or replaces) the push target of the client of `node`.
pub async fn register(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (token, body): (_, RegisterBody) = match read_request(&shared, request).await {
        Ok(read) => read,
        Err(refusal) => return refusal,
    };
    // The target is read before authenticating: a bad one costs no hook.
    let spec: TargetSpec = match serde_json::from_value(body.target) {
        Ok(spec) => spec,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad-target", format!("target: {e}")),
    };
    let options = shared.wakeups.options();
    let target = match Target::parse(spec.clone(), options.allow_insecure_endpoints, true) {
        Ok(target) => target,
        Err((error, message)) => return refuse(StatusCode::BAD_REQUEST, error, message),
    };
    if matches!(target, Target::Webhook { .. }) && options.webhook.is_none() {
        let message = "this server has no webhook (push.webhook_url): register a Web Push subscription";
        return refuse(StatusCode::BAD_REQUEST, "bad-target", message);
    }
    let ctx = match authenticate(&shared, peer, body.node, token, body.subprotocol, body.headers).await {
        Ok(ctx) => ctx,
        Err(refusal) => return refusal,
    };
    let names = match channel_names(&shared, body.channels) {
        Ok(names) => names,
        Err(refusal) => return refusal,
    };
    for name in &names {
        if let Err(refusal) = may_follow(&shared, &ctx, name, false, None).await {
            return refusal;
        }
    }
    let channels: Vec<Channel> = names.iter().map(|n| Channel::from(n.as_str())).collect();
    let registered = shared.wakeups.register(&shared, ctx.node_id.clone(), channels, &spec, target).await;
    match registered {
        Ok(()) => ok_json(&json!({
            "client": ctx.client_id.as_str(),
            "node": ctx.node_id.as_str(),
            "channels": names,
            "target": spec_type(&spec),
        })),
        Err(RegisterError::TooMany(most)) => refuse(
            StatusCode::CONFLICT,
            "too-many-targets",
            format!("this user has {most} devices registered (push.targets_per_user_max): remove one first"),
        ),
        Err(RegisterError::Storage) => {
            refuse(StatusCode::SERVICE_UNAVAILABLE, "storage", "the registration could not be stored; retry")
        }
    }
}

/// `DELETE /v1/push-target`: removes the push target of the client of `node`.
pub async fn unregister(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (token, body): (_, UnregisterBody) = match read_request(&shared, request).await {
        Ok(read) => read,
        Err(refusal) => return refusal,
    };
    let ctx = match authenticate(&shared, peer, body.node, token, body.subprotocol, body.headers).await {
        Ok(ctx) => ctx,
        Err(refusal) => return refusal,
    };
    match shared.wakeups.unregister(&shared, &ctx.client_id).await {
        Ok(removed) => ok_json(&json!({"client": ctx.client_id.as_str(), "removed": removed})),
        Err(_) => {
            refuse(StatusCode::SERVICE_UNAVAILABLE, "storage", "the removal could not be stored; retry")
        }
    }
}

fn spec_type(spec: &TargetSpec) -> &'static str {
    match spec {
        TargetSpec::Webpush { .. } => "webpush",
        TargetSpec::Webhook { .. } => "webhook",
    }
}
