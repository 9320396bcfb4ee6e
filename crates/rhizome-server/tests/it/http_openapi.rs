//! `docs/openapi.json` describes the HTTP sync API as served: every request these tests send
//! and every answer they get (success and refusals) is checked against its schemas.

use crate::http_push::{meta, now_ms, request};
use crate::support::{token, TestServer};
use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};

/// The OpenAPI document.
pub fn document() -> Result<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let text = std::fs::read_to_string(path).with_context(|| path.to_owned())?;
    Ok(serde_json::from_str(&text)?)
}

/// Checks `instance` against `schema`, whose `$ref`s point into the document's components.
pub fn check(doc: &Value, schema: &Value, instance: &Value, what: &str) -> Result<()> {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    let validator = jsonschema::validator_for(&root).map_err(|e| anyhow!("{what}: bad schema: {e}"))?;
    let errors: Vec<String> = validator.iter_errors(instance).map(|e| e.to_string()).collect();
    anyhow::ensure!(errors.is_empty(), "{what}: {instance} does not match: {errors:?}");
    Ok(())
}

/// The schema of the answer to `POST path` with `status`, as documented.
fn answer_schema(doc: &Value, path: &str, status: u16) -> Result<Value> {
    let answer = &doc["paths"][path]["post"]["responses"][status.to_string()];
    anyhow::ensure!(!answer.is_null(), "{path} {status} is not documented");
    let answer = match answer["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().context("ref")?;
            &doc["components"]["responses"][name]
        }
        None => answer,
    };
    Ok(answer["content"]["application/json"]["schema"].clone())
}

/// The schema of the request body of `POST path`.
fn request_schema(doc: &Value, path: &str) -> Value {
    doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"].clone()
}

#[tokio::test]
async fn every_request_and_answer_matches_the_openapi_document() -> Result<()> {
    let doc = document()?;
    let server = TestServer::default().await?;
    let t = now_ms();
    let alice = format!("Bearer {}", token("alice"));
    let mut cases: Vec<(&str, Option<String>, String, bool)> = Vec::new();
    let push_ok = json!({"node": "alice:a1:t1", "actions": [
        {"action": {"type": "inc", "id": "o"}, "meta": meta("alice:a1:t1", t)},
        {"action": {"type": "post", "channel": "users/bob", "text": "no"}, "meta": meta("alice:a1:t1", t + 1)},
        {"action": {"type": "crdt/set/add", "key": "o", "elem": 1}, "meta": meta("alice:a1:t1", t + 2)}
    ]});
    cases.push(("/v1/push", Some(alice.clone()), push_ok.to_string(), true));
    cases.push(("/v1/push", Some(alice.clone()), push_ok.to_string(), true));
    cases.push(("/v1/push", Some(alice.clone()), "{".into(), false));
    cases.push(("/v1/push", Some(alice.clone()), "x".repeat(70_000), false));
    let first = json!({"node": "bob:b1:t1", "channels": ["counter/o", "crdt/o"]});
    let bob = format!("Bearer {}", token("bob"));
    cases.push(("/v1/pull", Some(bob.clone()), first.to_string(), true));
    cases.push((
        "/v1/pull",
        Some(bob.clone()),
        json!({"node": "bob:b1:t1", "channels": ["counter/o"], "cursor": "0", "limit": 10, "wait": 0})
            .to_string(),
        true,
    ));
    cases.push((
        "/v1/pull",
        Some(bob.clone()),
        json!({"node": "bob:b1:t1", "channels": ["users/alice"]}).to_string(),
        true,
    ));
    cases.push((
        "/v1/pull",
        Some(bob.clone()),
        json!({"node": "bob:b1:t1", "cursor": "x"}).to_string(),
        true,
    ));
    cases.push(("/v1/pull", Some("Basic x".into()), first.to_string(), true));
    let mut statuses = Vec::new();
    for (path, authorization, body, schema_valid) in cases {
        if schema_valid {
            let sent: Value = serde_json::from_str(&body)?;
            check(&doc, &request_schema(&doc, path), &sent, &format!("request to {path}"))?;
        }
        let (status, answer) = request(server.addr, path, authorization.as_deref(), &body).await?;
        check(&doc, &answer_schema(&doc, path, status)?, &answer, &format!("{path} {status}"))?;
        statuses.push((path, status));
    }
    // The cases above reach every documented status but the storage failure (503).
    for (path, status) in [
        ("/v1/push", 200),
        ("/v1/push", 400),
        ("/v1/push", 413),
        ("/v1/pull", 200),
        ("/v1/pull", 400),
        ("/v1/pull", 401),
        ("/v1/pull", 403),
    ] {
        assert!(statuses.contains(&(path, status)), "{path} {status} not exercised: {statuses:?}");
    }
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_re_subscription_s_requests_and_answers_match_the_openapi_document() -> Result<()> {
    let doc = document()?;
    let server = TestServer::default().await?;
    let bob = format!("Bearer {}", token("bob"));
    let t = now_ms();
    let pushes: Vec<Value> = (0..3)
        .map(|i| json!({"action": {"type": "inc", "id": "q"}, "meta": meta("alice:a1:t1", t + i)}))
        .collect();
    let push = json!({"node": "alice:a1:t1", "actions": pushes});
    let (status, _) =
        request(server.addr, "/v1/push", Some(&format!("Bearer {}", token("alice"))), &push.to_string())
            .await?;
    assert_eq!(status, 200);
    let exchange = |body: Value| {
        let (doc, bob, addr) = (&doc, &bob, server.addr);
        async move {
            check(doc, &request_schema(doc, "/v1/pull"), &body, "pull request")?;
            let (status, answer) = request(addr, "/v1/pull", Some(bob), &body.to_string()).await?;
            check(doc, &answer_schema(doc, "/v1/pull", status)?, &answer, &format!("/v1/pull {status}"))?;
            anyhow::ensure!(status == 200, "{answer}");
            Ok::<Value, anyhow::Error>(answer)
        }
    };
    // A subscription id asked for, then a re-subscription behind the cursor, paged by 1.
    let first = exchange(json!({"node": "bob:b1:t1", "channels": ["counter/q", "crdt/q"],
        "ids": {"counter/q": null, "crdt/q": null}}))
    .await?;
    let id = first["ids"]["counter/q"].clone();
    anyhow::ensure!(id.is_string(), "{first}");
    let behind = exchange(json!({"node": "bob:b1:t1", "channels": ["counter/q"], "cursor": first["cursor"],
        "limit": 1, "ids": {"counter/q": id}, "since": {"counter/q": {"id": "1 server:gone 0", "time": t}}}))
    .await?;
    let own = behind["since"]["counter/q"].clone();
    anyhow::ensure!(own.is_string(), "a channel cursor: {behind}");
    exchange(json!({"node": "bob:b1:t1", "channels": ["counter/q"], "cursor": behind["cursor"],
        "since": {"counter/q": own}}))
    .await?;
    server.stop().await;
    Ok(())
}

#[test]
fn the_schemas_refuse_what_the_server_refuses() -> Result<()> {
    let doc = document()?;
    let push = request_schema(&doc, "/v1/push");
    for bad in [
        json!({"actions": []}),
        json!({"node": "a:b", "actions": [], "extra": 1}),
        json!({"node": "a:b", "actions": [{"action": {"type": "x"}, "meta": {"time": 1}}]}),
        json!({"node": "a:b", "actions": [{"action": {"type": "x"}, "meta": {"id": "not an id", "time": 1}}]}),
    ] {
        assert!(check(&doc, &push, &bad, "push").is_err(), "{bad} passed");
    }
    let pull = request_schema(&doc, "/v1/pull");
    for bad in [
        json!({"channels": []}),
        json!({"node": "a:b", "wait": -1}),
        json!({"node": "a:b", "cursor": 5}),
        json!({"node": "a:b", "since": {"counter/1": 5}}),
        json!({"node": "a:b", "since": {"counter/1": {"time": 5}}}),
    ] {
        assert!(check(&doc, &pull, &bad, "pull").is_err(), "{bad} passed");
    }
    Ok(())
}
