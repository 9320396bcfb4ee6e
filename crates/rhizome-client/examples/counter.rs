//! Queues actions in a local SQLite log (the server may be down: they wait there, across
//! restarts), syncs them whenever the server is reachable, and prints what happens.
//!
//! ```sh
//! cargo run --release -p rhizome -- serve --development     # in another terminal
//! cargo run -p rhizome-client --example counter -- ws://127.0.0.1:31337 alice.sqlite
//! ```

use rhizome_client::{Client, ClientOptions, Event};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:31337".to_owned());
    let path = args.next().unwrap_or_else(|| "alice.sqlite".to_owned());

    let options = ClientOptions::new(url, path, "alice").token("any-token");
    let (client, mut events) = Client::open(options).await?;
    println!("node {}", client.node_id());

    // Persisted: renewed with `since` after every reconnect, so missed actions arrive.
    client.subscribe("counter/1").await?;
    // Committed to the local log before `add_many` returns; sent when a connection is up.
    let actions = (0..100).map(|n| json!({"type": "inc", "channel": "counter/1", "n": n})).collect();
    let ids = client.add_many(actions).await?;
    println!("queued {} actions", ids.len());

    while let Some(event) = events.recv().await {
        match event {
            Event::Connected { server, time_fix } => {
                println!("connected to {server} (clock offset {time_fix} ms)")
            }
            Event::Disconnected { reason, retry_in } => {
                println!("disconnected: {reason}; retry in {retry_in:?}")
            }
            Event::Action { action, id, .. } => println!("received {action} ({id})"),
            Event::Undone { id, reason, .. } => println!("{id} undone: {reason}"),
            Event::ServerError { kind, .. } => println!("server error {kind}"),
            Event::Processed { .. } | Event::Folded { .. } => {}
        }
        let log = client.log_stats().await?;
        if log.queued == 0 && log.awaiting_outcome == 0 {
            println!(
                "all {} actions processed; subscriptions: {:?}",
                ids.len(),
                client.subscriptions().await?
            );
            break;
        }
    }
    client.close().await;
    Ok(())
}
