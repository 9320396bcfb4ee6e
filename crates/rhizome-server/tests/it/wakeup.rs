//! Push wake-ups end to end: devices register over HTTP, a WebSocket client writes, and the
//! pokes reach a stand-in Web Push service (which decrypts them and checks VAPID) or an
//! operator's webhook (which checks the signature), coalesced, retried and removed when gone.

use crate::http_push::request_with;
use crate::push_service::{PushService, Webhook};
use crate::support::{token, token_expired, Open, TestServer};
use anyhow::{ensure, Result};
use rhizome_core::wakeup::ScheduleOptions;
use rhizome_core::{Context, HookError, Meta, Routing};
use rhizome_protocol::Action;
use rhizome_server::wakeup::{WakeupOptions, WakeupStats, WebhookOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const INTERVAL_MS: i64 = 1_000;
const HOOK_SECRET: &str = "the-webhook-secret-of-the-operator";

fn options(webhook: Option<&Webhook>) -> WakeupOptions {
    WakeupOptions {
        schedule: ScheduleOptions {
            interval_ms: INTERVAL_MS,
            retries_max: 3,
            backoff_first_ms: 200,
            backoff_max_ms: 1_000,
        },
        vapid_subject: Some("mailto:ops@example.com".into()),
        webhook: webhook.map(|w| WebhookOptions { url: w.url(), secret: HOOK_SECRET.into() }),
        allow_insecure_endpoints: true,
        ..WakeupOptions::default()
    }
}

/// A server with wake-ups, and a push service that knows its VAPID key.
async fn setup(webhook: Option<&Webhook>) -> Result<(TestServer, PushService)> {
    let server = TestServer::with_wakeups(options(webhook)).await?;
    let service = PushService::start().await?;
    service.expect_vapid(&vapid_key(&server).await?);
    Ok((server, service))
}

async fn vapid_key(server: &TestServer) -> Result<String> {
    let (status, config) = request_with(server.addr, "GET", "/v1/push-config", None, "").await?;
    ensure!(status == 200, "push-config: {status} {config}");
    Ok(config["webpush"]["applicationServerKey"].as_str().unwrap_or_default().to_owned())
}

/// `PUT /v1/push-target` as `node` with its user's token.
async fn register(server: &TestServer, node: &str, channels: &[&str], target: Value) -> Result<(u16, Value)> {
    let user = node.split(':').next().unwrap_or(node);
    let body = json!({"node": node, "channels": channels, "target": target}).to_string();
    request_with(server.addr, "PUT", "/v1/push-target", Some(&format!("Bearer {}", token(user))), &body).await
}

fn webpush(subscription: Value) -> Value {
    json!({"type": "webpush", "subscription": subscription})
}

/// Bob writes `n` actions on `counter/7` over a WebSocket, each processed.
async fn bob_writes(server: &TestServer, n: usize) -> Result<()> {
    let mut bob = server.login("bob:laptop:1").await?;
    for _ in 0..n {
        let id = bob.send_action(json!({"type": "inc", "id": "7"})).await?;
        bob.wait_processed(&id).await?;
    }
    bob.close().await;
    Ok(())
}

/// The server's wake-up counters once `done` holds of them (or after 5 s).
async fn wait_stats(server: &TestServer, done: impl Fn(&WakeupStats) -> bool) -> WakeupStats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = server.wakeup_stats();
        if done(&stats) || Instant::now() >= deadline {
            return stats;
        }
        quiet(10).await;
    }
}

/// Lets the server act on what it was given, then returns.
async fn quiet(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
async fn an_offline_device_gets_an_encrypted_signed_poke_coalesced_to_one_per_interval() -> Result<()> {
    let (server, service) = setup(None).await?;
    let (status, answer) =
        register(&server, "alice:phone:1", &["counter/7"], webpush(service.subscribe("alice"))).await?;
    ensure!(status == 200, "register: {status} {answer}");
    ensure!(
        answer
            == json!({"client": "alice:phone", "node": "alice:phone:1", "channels": ["counter/7"], "target": "webpush"})
    );
    // Bob's own device follows the channel too: his actions do not wake it.
    let (status, _) =
        register(&server, "bob:laptop:1", &["counter/7"], webpush(service.subscribe("bob"))).await?;
    ensure!(status == 200);

    bob_writes(&server, 1).await?;
    service.wait_requests("alice", 1, Duration::from_secs(5)).await?;
    let first = service.received("alice");
    ensure!(first.len() == 1, "rejected: {:?}", service.rejected());
    let poke = &first[0];
    ensure!(
        poke.payload == br#"{"type":"rhizome/poke"}"#,
        "payload {:?}",
        String::from_utf8_lossy(&poke.payload)
    );
    ensure!(poke.ttl.as_deref() == Some("86400") && poke.topic.as_deref() == Some("rhizome-poke"));
    ensure!(poke.urgency.as_deref() == Some("normal"));
    ensure!(poke.claims["sub"] == "mailto:ops@example.com", "{}", poke.claims);

    // A burst inside the interval: one more poke, an interval after the first.
    bob_writes(&server, 5).await?;
    let times = service.wait_requests("alice", 2, Duration::from_secs(5)).await?;
    let gap = times[1] - times[0];
    ensure!(gap >= Duration::from_millis(INTERVAL_MS as u64 - 50), "second poke after {gap:?}");
    quiet(INTERVAL_MS as u64 + 700).await;
    ensure!(service.requests("alice").len() == 2, "nothing new, no poke: {:?}", service.requests("alice"));
    ensure!(service.requests("bob").is_empty(), "the author's device was poked");
    ensure!(service.rejected().is_empty(), "rejected: {:?}", service.rejected());
    ensure!(wait_stats(&server, |s| s.sent == 2).await.sent == 2);
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_device_with_a_websocket_or_a_waiting_long_poll_is_not_poked() -> Result<()> {
    let (server, service) = setup(None).await?;
    let (status, _) =
        register(&server, "alice:phone:1", &["counter/7"], webpush(service.subscribe("alice"))).await?;
    ensure!(status == 200);

    // Connected over a WebSocket (another tab of the same client counts too).
    let alice = server.login("alice:phone:2").await?;
    bob_writes(&server, 2).await?;
    quiet(800).await;
    ensure!(service.requests("alice").is_empty(), "a connected device was poked");
    alice.close().await;
    server.wait_connections(0).await?;

    // Waiting in a long-poll: the poll answers, no poke.
    let addr = server.addr;
    let auth = format!("Bearer {}", token("alice"));
    let cursor = {
        let body = json!({"node": "alice:phone:1", "channels": ["counter/7"]}).to_string();
        let (status, page) = request_with(addr, "POST", "/v1/pull", Some(&auth), &body).await?;
        ensure!(status == 200, "{page}");
        page["cursor"].as_str().unwrap_or_default().to_owned()
    };
    let body =
        json!({"node": "alice:phone:1", "channels": ["counter/7"], "cursor": cursor, "wait": 10}).to_string();
    let poll = tokio::spawn(async move { request_with(addr, "POST", "/v1/pull", Some(&auth), &body).await });
    quiet(300).await;
    bob_writes(&server, 1).await?;
    let (status, page) = poll.await??;
    ensure!(status == 200 && page["actions"].as_array().map_or(0, Vec::len) == 1, "{page}");
    quiet(800).await;
    ensure!(service.requests("alice").is_empty(), "a polling device was poked");

    // Gone: the next write pokes it.
    bob_writes(&server, 1).await?;
    service.wait_requests("alice", 1, Duration::from_secs(5)).await?;
    ensure!(service.received("alice").len() == 1, "rejected: {:?}", service.rejected());
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn failed_pokes_back_off_honour_retry_after_and_a_gone_device_is_removed() -> Result<()> {
    let (server, service) = setup(None).await?;
    let (status, _) =
        register(&server, "alice:phone:1", &["counter/7"], webpush(service.subscribe("alice"))).await?;
    ensure!(status == 200);
    service.reply_with("alice", &[(500, None), (429, Some(1)), (503, None)]);
    bob_writes(&server, 1).await?;
    let times = service.wait_requests("alice", 4, Duration::from_secs(10)).await?;
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 200 ms less up to a quarter; Retry-After's 1 s over the 400 ms backoff; then 800 ms less
    // up to a quarter.
    ensure!(gaps[0] >= Duration::from_millis(140), "{gaps:?}");
    ensure!(gaps[1] >= Duration::from_millis(950), "{gaps:?}");
    ensure!(gaps[2] >= Duration::from_millis(550), "{gaps:?}");
    ensure!(service.received("alice").len() == 1, "delivered once in the end");
    // The server counts an outcome once the service's answer reached it.
    let stats = wait_stats(&server, |s| s.sent == 1).await;
    ensure!(stats.sent == 1 && stats.failed == 3, "{stats:?}");

    // 410 Gone: the registration goes, for good (a restart does not bring it back).
    service.reply_with("alice", &[(410, None)]);
    quiet(INTERVAL_MS as u64).await;
    bob_writes(&server, 1).await?;
    service.wait_requests("alice", 5, Duration::from_secs(5)).await?;
    let stats = wait_stats(&server, |s| s.removed == 1).await;
    ensure!(stats.removed == 1 && stats.devices == 0, "{stats:?}");
    quiet(INTERVAL_MS as u64).await;
    bob_writes(&server, 1).await?;
    quiet(800).await;
    ensure!(service.requests("alice").len() == 5, "a removed device was poked");
    let server = server.restart(options(None)).await?;
    ensure!(server.wakeup_stats().devices == 0, "the removal was not stored");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn registrations_and_the_vapid_key_survive_a_restart_and_removal_stops_pokes() -> Result<()> {
    let (server, service) = setup(None).await?;
    let key = vapid_key(&server).await?;
    let raw = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &key)?;
    ensure!(raw.len() == 65 && raw[0] == 4, "applicationServerKey is an uncompressed P-256 point");
    let (status, _) =
        register(&server, "alice:phone:1", &["counter/7"], webpush(service.subscribe("alice"))).await?;
    ensure!(status == 200);
    let server = server.restart(options(None)).await?;
    ensure!(vapid_key(&server).await? == key, "a new VAPID key would orphan every subscription");
    ensure!(server.wakeup_stats().devices == 1);
    bob_writes(&server, 1).await?;
    service.wait_requests("alice", 1, Duration::from_secs(5)).await?;
    ensure!(service.received("alice").len() == 1, "rejected: {:?}", service.rejected());

    let body = json!({"node": "alice:phone:1"}).to_string();
    let auth = format!("Bearer {}", token("alice"));
    let (status, answer) = request_with(server.addr, "DELETE", "/v1/push-target", Some(&auth), &body).await?;
    ensure!(status == 200 && answer == json!({"client": "alice:phone", "removed": true}), "{answer}");
    let (_, again) = request_with(server.addr, "DELETE", "/v1/push-target", Some(&auth), &body).await?;
    ensure!(again["removed"] == false);
    quiet(INTERVAL_MS as u64).await;
    bob_writes(&server, 1).await?;
    quiet(800).await;
    ensure!(service.requests("alice").len() == 1, "an unregistered device was poked");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_webhook_gets_signed_pokes_with_the_device_token() -> Result<()> {
    let hook = Webhook::start(HOOK_SECRET).await?;
    let (server, _service) = setup(Some(&hook)).await?;
    let target = json!({"type": "webhook", "token": "fcm-token-123", "platform": "fcm"});
    let (status, answer) = register(&server, "alice:phone:1", &[], target).await?;
    ensure!(status == 200, "{answer}");
    // Registered for no channel: an action on a channel she does not follow wakes nothing.
    let mut tablet = server.login("alice:tablet:1").await?;
    let id = tablet.send_action(json!({"type": "post", "channel": "users/alice", "text": "hi"})).await?;
    tablet.wait_processed(&id).await?;
    tablet.close().await;
    quiet(600).await;
    ensure!(hook.received().is_empty(), "{:?}", hook.received());

    // Followed: an action by another device of hers on the channel wakes this one.
    let target = json!({"type": "webhook", "token": "fcm-token-123", "platform": "fcm"});
    let (status, _) = register(&server, "alice:phone:1", &["users/alice"], target).await?;
    ensure!(status == 200);
    let mut tablet = server.login("alice:tablet:1").await?;
    let id = tablet.send_action(json!({"type": "post", "channel": "users/alice", "text": "again"})).await?;
    tablet.wait_processed(&id).await?;
    tablet.close().await;
    let got = hook.wait_received(1, Duration::from_secs(5)).await?;
    let poke = &got[0];
    ensure!(
        poke["type"] == "rhizome/poke" && poke["token"] == "fcm-token-123" && poke["platform"] == "fcm",
        "{poke}"
    );
    ensure!(
        poke["client"] == "alice:phone" && poke["user"] == "alice" && poke["node"] == "alice:phone:1",
        "{poke}"
    );
    ensure!(poke["delivery"].as_str().is_some_and(|d| d.len() >= 16), "{poke}");
    ensure!(hook.rejected().is_empty(), "{:?}", hook.rejected());

    // The gateway says the token is gone: removed.
    hook.reply_with(&[404]);
    quiet(INTERVAL_MS as u64).await;
    let mut tablet = server.login("alice:tablet:1").await?;
    let id = tablet.send_action(json!({"type": "post", "channel": "users/alice", "text": "3"})).await?;
    tablet.wait_processed(&id).await?;
    tablet.close().await;
    let stats = wait_stats(&server, |s| s.removed == 1).await;
    ensure!(stats.devices == 0, "{stats:?}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_registrations_get_a_clear_4xx_and_change_nothing() -> Result<()> {
    let (server, service) = setup(None).await?;
    let good = service.subscribe("alice");
    let mut bad_key = good.clone();
    bad_key["keys"]["p256dh"] = json!("BAAA");
    let mut bad_auth = good.clone();
    bad_auth["keys"]["auth"] = json!("c2hvcnQ");
    let mut expired = good.clone();
    expired["expirationTime"] = json!(1_000);
    let cases = [
        (json!({"type": "sms", "number": "1"}), 400, "bad-target"),
        (webpush(bad_key), 400, "bad-target"),
        (webpush(bad_auth), 400, "bad-target"),
        (webpush(expired), 400, "bad-target"),
        (webpush(json!({"endpoint": "not a url", "keys": good["keys"]})), 400, "bad-target"),
        (json!({"type": "webhook", "token": "t"}), 400, "bad-target"),
    ];
    for (target, status, error) in cases {
        let (got, answer) = register(&server, "alice:phone:1", &["counter/7"], target.clone()).await?;
        ensure!(got == status && answer["error"] == error, "{target}: {got} {answer}");
        ensure!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let put = |auth: Option<String>, body: String| {
        let addr = server.addr;
        async move { request_with(addr, "PUT", "/v1/push-target", auth.as_deref(), &body).await }
    };
    let body = |node: &str, channels: Value| {
        json!({"node": node, "channels": channels, "target": webpush(good.clone())}).to_string()
    };
    let bearer = |t: String| Some(format!("Bearer {t}"));
    let checks = [
        (put(bearer(token("alice")), "{".into()).await?, 400, "wrong-format"),
        (
            put(bearer(token("alice")), json!({"node": "alice:p:1", "target": {}, "extra": 1}).to_string())
                .await?,
            400,
            "wrong-format",
        ),
        (put(bearer(token("bob")), body("alice:phone:1", json!([]))).await?, 401, "wrong-credentials"),
        (
            put(bearer(token_expired("alice")), body("alice:phone:1", json!([]))).await?,
            401,
            "wrong-credentials",
        ),
        (put(bearer(token("alice")), body("alice:phone:1", json!(["users/bob"]))).await?, 403, "denied"),
        (
            put(bearer(token("alice")), body("alice:phone:1", json!(["nowhere/x/y"]))).await?,
            400,
            "wrongChannel",
        ),
    ];
    for ((got, answer), status, error) in checks {
        ensure!(got == status && answer["error"] == error, "expected {status} {error}: {got} {answer}");
    }
    ensure!(server.wakeup_stats().devices == 0, "a refused registration was kept");

    // An http endpoint, and a webhook target, on a server that does not allow them.
    let strict = TestServer::with_wakeups(WakeupOptions::default()).await?;
    let (status, answer) = register(&strict, "alice:phone:1", &[], webpush(good.clone())).await?;
    ensure!(status == 400 && answer["error"] == "bad-target", "{answer}");
    strict.stop().await;

    // Devices per user.
    let few = TestServer::with_wakeups(WakeupOptions { targets_per_user_max: 2, ..options(None) }).await?;
    for node in ["alice:a:1", "alice:b:1"] {
        let (status, answer) = register(&few, node, &[], webpush(service.subscribe(node))).await?;
        ensure!(status == 200, "{answer}");
    }
    let (status, answer) = register(&few, "alice:c:1", &[], webpush(service.subscribe("c"))).await?;
    ensure!(status == 409 && answer["error"] == "too-many-targets", "{answer}");
    let (status, _) = register(&few, "alice:a:2", &["counter/1"], webpush(service.subscribe("a2"))).await?;
    ensure!(status == 200, "registering again replaces, within the limit");
    let (status, _) = register(&few, "bob:a:1", &[], webpush(service.subscribe("bob"))).await?;
    ensure!(status == 200, "another user has their own limit");
    ensure!(few.wakeup_stats().devices == 3);
    few.stop().await;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

/// A request of the OpenAPI check: the server, method, path, authorization, body, and whether
/// the body is a valid request.
type Case<'a> = (&'a TestServer, &'static str, &'static str, Option<String>, String, bool);

#[tokio::test]
async fn every_wakeup_request_and_answer_matches_the_openapi_document() -> Result<()> {
    use crate::http_openapi::{check, document};
    let doc = document()?;
    let (server, service) = setup(None).await?;
    let few = TestServer::with_wakeups(WakeupOptions { targets_per_user_max: 1, ..options(None) }).await?;
    let alice = Some(format!("Bearer {}", token("alice")));
    let target = webpush(service.subscribe("alice"));
    let register = |node: &str, channels: Value| {
        json!({"node": node, "channels": channels, "target": target}).to_string()
    };
    let cases: Vec<Case> = vec![
        (&server, "GET", "/v1/push-config", None, String::new(), false),
        (&server, "PUT", "/v1/push-target", alice.clone(), register("alice:p:1", json!(["counter/7"])), true),
        (
            &server,
            "PUT",
            "/v1/push-target",
            alice.clone(),
            json!({"node": "alice:p:1", "target": {"type": "webhook", "token": "t", "platform": "apns"}})
                .to_string(),
            true,
        ),
        (&server, "PUT", "/v1/push-target", alice.clone(), "{".into(), false),
        (&server, "PUT", "/v1/push-target", alice.clone(), register("alice:p:1", json!(["users/bob"])), true),
        (
            &server,
            "PUT",
            "/v1/push-target",
            Some("Bearer nope".into()),
            register("alice:p:1", json!([])),
            true,
        ),
        (&server, "PUT", "/v1/push-target", alice.clone(), "x".repeat(70_000), false),
        (&few, "PUT", "/v1/push-target", alice.clone(), register("alice:p:1", json!([])), true),
        (&few, "PUT", "/v1/push-target", alice.clone(), register("alice:q:1", json!([])), true),
        (&server, "DELETE", "/v1/push-target", alice.clone(), json!({"node": "alice:p:1"}).to_string(), true),
        (&server, "DELETE", "/v1/push-target", alice.clone(), json!({"node": "alice:p:1"}).to_string(), true),
        (&server, "DELETE", "/v1/push-target", alice.clone(), json!({"nod": "alice:p:1"}).to_string(), false),
    ];
    let mut statuses = Vec::new();
    for (target_server, method, path, auth, body, valid) in cases {
        let operation = &doc["paths"][path][method.to_lowercase()];
        ensure!(!operation.is_null(), "{method} {path} is not documented");
        if valid {
            let schema = operation["requestBody"]["content"]["application/json"]["schema"].clone();
            check(&doc, &schema, &serde_json::from_str(&body)?, &format!("request {method} {path}"))?;
        }
        let (status, answer) = request_with(target_server.addr, method, path, auth.as_deref(), &body).await?;
        let documented = &operation["responses"][status.to_string()];
        ensure!(!documented.is_null(), "{method} {path} {status} is not documented: {answer}");
        let documented = match documented["$ref"].as_str() {
            Some(r) => &doc["components"]["responses"][r.rsplit('/').next().unwrap_or_default()],
            None => documented,
        };
        let schema = documented["content"]["application/json"]["schema"].clone();
        check(&doc, &schema, &answer, &format!("{method} {path} {status}"))?;
        statuses.push(status);
    }
    ensure!(statuses == [200, 200, 400, 400, 403, 401, 413, 200, 409, 200, 200, 400], "{statuses:?}");
    few.stop().await;
    server.stop().await;
    Ok(())
}

/// `dm`: sent to the user named by its `to`, through `users`.
struct Dm;

#[async_trait::async_trait]
impl rhizome_core::ActionType for Dm {
    async fn access(&self, _: &Context, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(true)
    }
    async fn resend(&self, _: &Context, action: &Action, _: &Meta) -> Result<Routing, HookError> {
        let to = action.fields().get("to").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        Ok(Routing { users: vec![to.as_str().into()], ..Routing::default() })
    }
}

#[tokio::test]
async fn an_action_addressed_to_a_user_wakes_their_devices_but_not_the_authors() -> Result<()> {
    let hook = Webhook::start(HOOK_SECRET).await?;
    let app = rhizome_core::App::new(Open).action_type("dm", Dm);
    let server =
        TestServer::with_app_and_wakeups(app, rhizome_core::Limits::default(), options(Some(&hook))).await?;
    for (node, token) in
        [("alice:phone:1", "alice-phone"), ("alice:laptop:1", "alice-laptop"), ("bob:phone:1", "bob-phone")]
    {
        let target = json!({"type": "webhook", "token": token});
        let (status, answer) = register(&server, node, &[], target).await?;
        ensure!(status == 200, "{answer}");
    }
    // Alice's laptop writes to Alice: her phone is woken, not the laptop, not Bob.
    let mut laptop = server.login("alice:laptop:1").await?;
    let id = laptop.send_action(json!({"type": "dm", "to": "alice", "text": "note to self"})).await?;
    laptop.wait_processed(&id).await?;
    laptop.close().await;
    let got = hook.wait_received(1, Duration::from_secs(5)).await?;
    quiet(600).await;
    let tokens: Vec<&str> = got.iter().filter_map(|p| p["token"].as_str()).collect();
    ensure!(tokens == ["alice-phone"], "{tokens:?}");
    ensure!(hook.received().len() == 1, "{:?}", hook.received());
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_long_poll_whose_client_hung_up_does_not_keep_the_device_from_its_poke() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (server, service) = setup(None).await?;
    let (status, _) =
        register(&server, "alice:phone:1", &["counter/7"], webpush(service.subscribe("alice"))).await?;
    ensure!(status == 200);
    // The device's long-poll waits, then its socket goes away (the phone slept, the tab closed).
    let body =
        json!({"node": "alice:phone:1", "channels": ["counter/7"], "cursor": "0", "wait": 25}).to_string();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await?;
    let request = format!(
        "POST /v1/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
        token("alice"),
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    quiet(300).await;
    drop(stream);
    quiet(300).await;
    // Nobody waits for the device any more: a write that concerns it pokes it, not 25 s later.
    bob_writes(&server, 1).await?;
    service.wait_requests("alice", 1, Duration::from_secs(5)).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_web_push_endpoint_on_a_private_or_loopback_address_is_refused() -> Result<()> {
    // The server POSTs to whatever endpoint a device registers: one on the server's own
    // network (loopback, private ranges, the cloud metadata address) would let any user make
    // the server send requests inside it. Tests and private networks opt in with
    // `allow_insecure_endpoints`.
    let server =
        TestServer::with_wakeups(WakeupOptions { allow_insecure_endpoints: false, ..options(None) }).await?;
    let service = PushService::start().await?;
    let keys = service.subscribe("alice")["keys"].clone();
    for endpoint in [
        "https://127.0.0.1/push",
        "https://localhost:8443/push",
        "https://10.1.2.3/push",
        "https://192.168.0.1/push",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/push",
        "https://[fd00::1]/push",
        "https://0.0.0.0/push",
    ] {
        let subscription = json!({"endpoint": endpoint, "keys": keys});
        let (status, answer) =
            register(&server, "alice:phone:1", &["counter/7"], webpush(subscription)).await?;
        ensure!(status == 400 && answer["error"] == "bad-target", "{endpoint}: {status} {answer}");
    }
    let subscription = json!({"endpoint": "https://push.example.com/send/abc", "keys": keys});
    let (status, answer) = register(&server, "alice:phone:1", &["counter/7"], webpush(subscription)).await?;
    ensure!(status == 200, "a public endpoint: {status} {answer}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_device_whose_websocket_ends_with_unconfirmed_entries_is_poked() -> Result<()> {
    let (server, service) = setup(None).await?;
    let (status, _) =
        register(&server, "alice:phone:1", &["counter/7"], webpush(service.subscribe("alice"))).await?;
    ensure!(status == 200);
    let mut alice = server.login("alice:phone:1").await?;
    alice.subscribe("counter/7").await?;
    // Bob's write is routed to alice's socket while it is connected (no poke), but the app is
    // killed before it read or confirmed it: nothing tells the device there is news.
    bob_writes(&server, 1).await?;
    drop(alice);
    server.wait_connections(0).await?;
    service.wait_requests("alice", 1, Duration::from_secs(3)).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_subscription_that_expires_is_removed_when_its_poke_falls_due() -> Result<()> {
    let (server, service) = setup(None).await?;
    let mut subscription = service.subscribe("alice");
    let expires =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64 + 1_000;
    subscription["expirationTime"] = json!(expires);
    let (status, answer) = register(&server, "alice:phone:1", &["counter/7"], webpush(subscription)).await?;
    ensure!(status == 200, "{answer}");
    quiet(1_300).await;
    bob_writes(&server, 1).await?;
    let stats = wait_stats(&server, |s| s.devices == 0).await;
    ensure!(stats.devices == 0, "{stats:?}");
    ensure!(service.requests("alice").is_empty(), "an expired subscription was pushed to");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_stored_target_the_settings_now_refuse_is_removed_at_start() -> Result<()> {
    let (server, service) = setup(None).await?;
    let (status, _) = register(&server, "alice:phone:1", &[], webpush(service.subscribe("alice"))).await?;
    ensure!(status == 200);
    // The stand-in is on 127.0.0.1 over http: refused once insecure endpoints are not allowed.
    let strict = WakeupOptions { allow_insecure_endpoints: false, ..options(None) };
    let server = server.restart(strict).await?;
    ensure!(server.wakeup_stats().devices == 0);
    quiet(300).await;
    // Removed from the log, not only skipped: allowing them again does not bring it back.
    let server = server.restart(options(None)).await?;
    ensure!(server.wakeup_stats().devices == 0, "the refused registration stayed in the log");
    server.stop().await;
    Ok(())
}
