//! Group commit: one thread owns the log writer, takes every write request queued while the
//! previous transaction was committing, and commits them together.
//!
//! Committed entries are handed to the hub in commit order, so delivery order equals log order.

use crate::hub::HubMessage;
use rhizome_store::{Committed, LogWriter, WriteBatch};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Appends per transaction at most; more wait for the next one.
const APPENDS_PER_COMMIT_MAX: usize = 20_000;

/// One caller's write.
#[derive(Debug)]
pub struct WriteRequest {
    /// What to write.
    pub batch: WriteBatch,
    /// Where the outcome goes, once durable.
    pub reply: oneshot::Sender<Result<Committed, WriteFailed>>,
}

/// A write that did not happen; nothing in it was acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the log could not be written")]
pub struct WriteFailed;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs the commit loop until every sender is dropped. Blocking: run it on its own thread.
pub fn run(
    mut writer: impl LogWriter,
    mut requests: mpsc::Receiver<WriteRequest>,
    hub: mpsc::Sender<HubMessage>,
) {
    let mut pending: Vec<WriteRequest> = Vec::new();
    while let Some(first) = requests.blocking_recv() {
        let mut appends = first.batch.appends.len();
        pending.push(first);
        while appends < APPENDS_PER_COMMIT_MAX {
            match requests.try_recv() {
                Ok(r) => {
                    appends += r.batch.appends.len();
                    pending.push(r);
                }
                Err(_) => break,
            }
        }
        let mut batches: Vec<WriteBatch> = pending.iter_mut().map(|r| std::mem::take(&mut r.batch)).collect();
        match writer.commit(&mut batches, now_ms()) {
            Ok(mut results) => {
                // Moved per batch, not flattened: a commit can hold many thousand entries.
                let entries: Vec<_> = results
                    .iter_mut()
                    .filter(|c| !c.entries.is_empty())
                    .map(|c| std::mem::take(&mut c.entries))
                    .collect();
                // Hub first: by the time a client hears `synced`, the entries are being routed.
                if !entries.is_empty() && hub.blocking_send(HubMessage::Committed(entries)).is_err() {
                    tracing::debug!("hub is gone; committed entries are not routed");
                }
                for (request, result) in pending.drain(..).zip(results) {
                    let _ = request.reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "log commit failed; the writes were refused");
                for request in pending.drain(..) {
                    let _ = request.reply.send(Err(WriteFailed));
                }
            }
        }
    }
    tracing::debug!("writer stopped");
}
