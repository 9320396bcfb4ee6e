//! Push wake-ups: a device that holds no connection registers where to be poked (Web Push or
//! the operator's webhook) and which channels it follows; when a commit concerns it while it
//! is not connected, it gets a content-free poke and pulls.
//!
//! Deciding is sans-IO ([`rhizome_core::wakeup`]): the [`Registry`] says which devices a commit
//! concerns, the [`Schedule`] when each is poked (coalesced, retried with backoff). This module
//! keeps them with the devices' targets and whether each device is connected (a WebSocket, or
//! a waiting long-poll: those get what concerns them without a poke), stores registrations in
//! the log's database, and runs the task that delivers pokes ([`deliver`]).

mod api;
mod deliver;

pub use api::{config as config_endpoint, register as register_endpoint, unregister as unregister_endpoint};
pub use deliver::Vapid;

use crate::shared::Shared;
use crate::writer::now_ms;
use rhizome_core::wakeup::{Delivery, Registry, Schedule, ScheduleOptions};
use rhizome_core::StoredEntry;
use rhizome_protocol::{Channel, ClientId, NodeId};
use rhizome_store::{PushTarget, PushTargetChange, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};

/// How the server pokes devices.
#[derive(Debug, Clone)]
pub struct WakeupOptions {
    /// Coalescing and retries.
    pub schedule: ScheduleOptions,
    /// How long a push service keeps an undelivered poke (`TTL`).
    pub ttl: Duration,
    /// The VAPID key the server signs Web Push requests with; `None`: the key kept in the data
    /// directory (`vapid-private-key`), made on first start.
    pub vapid_key: Option<String>,
    /// The VAPID `sub` claim: a `mailto:` or `https:` contact for the push service's operator.
    pub vapid_subject: Option<String>,
    /// The operator's webhook, for devices registered with a platform token.
    pub webhook: Option<WebhookOptions>,
    /// Accept `http:` Web Push endpoints and webhook URLs (tests, private networks).
    pub allow_insecure_endpoints: bool,
    /// Registered devices per user at most.
    pub targets_per_user_max: usize,
    /// Pokes being delivered at once at most.
    pub sends_max: usize,
    /// Longest one delivery may take.
    pub send_timeout: Duration,
}

impl Default for WakeupOptions {
    fn default() -> Self {
        WakeupOptions {
            schedule: ScheduleOptions::default(),
            ttl: Duration::from_secs(24 * 3600),
            vapid_key: None,
            vapid_subject: None,
            webhook: None,
            allow_insecure_endpoints: false,
            targets_per_user_max: 32,
            sends_max: 64,
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// The operator's webhook.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// Where pokes are posted.
    pub url: String,
    /// The HMAC-SHA256 key of the `Rhizome-Signature` header.
    pub secret: String,
}

/// Where a device's pokes go, as a client registers it and as it is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetSpec {
    /// A Web Push subscription (`PushSubscription.toJSON()` of a browser).
    Webpush {
        /// The subscription.
        subscription: Subscription,
    },
    /// A platform token the operator's webhook turns into a push (FCM, APNs, …).
    Webhook {
        /// The device's token on its platform.
        token: String,
        /// Which platform, for the webhook (`fcm`, `apns`, anything the gateway knows).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
    },
}

/// A Web Push subscription.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The push resource URL.
    pub endpoint: String,
    /// When the subscription expires (ms since the epoch), if it does.
    #[serde(default, rename = "expirationTime", skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<f64>,
    /// The user agent's keys.
    pub keys: SubscriptionKeys,
}

/// The keys of a Web Push subscription, base64url.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionKeys {
    /// The user agent's P-256 public key (uncompressed point).
    pub p256dh: String,
    /// The authentication secret (16 bytes).
    pub auth: String,
}

/// A registered device.
#[derive(Debug)]
struct Device {
    node: NodeId,
    target: deliver::Target,
    /// Which registration this is: a delivery that finds another one removes nothing.
    generation: u64,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    schedule: Schedule,
    devices: HashMap<ClientId, Device>,
    generation: u64,
}

/// A client's connections and waiting long-polls, and when the last one ended.
#[derive(Debug, Default, Clone, Copy)]
struct Presence {
    count: u32,
    /// How many commits had been handed over when `count` last fell to 0 (see
    /// [`Wakeups::handed`]): an order, not a time, so a device that left the same millisecond
    /// as a commit came is told from one that left just after, whatever the clock does.
    left_after: u64,
}

/// Who is connected: what [`Wakeups::look`] needs to tell whether a device was there when a
/// commit was handed over.
#[derive(Debug, Default)]
struct Live {
    clients: HashMap<ClientId, Presence>,
    /// Every commit up to this one (in hand-over order) has been looked at: a client that left
    /// after it matters to no look to come, and is forgotten.
    looked: u64,
}

/// Committed entries the wake-up task has not looked at yet.
#[derive(Debug, Default)]
struct Queue {
    commits: Vec<Vec<Vec<StoredEntry>>>,
    entries: usize,
    /// The hand-over number of the last of them (see [`Wakeups::handed`]).
    last: u64,
    /// More than [`QUEUED_ENTRIES_MAX`] came before the task could look: every device that is
    /// not connected is treated as concerned (a poke too many, never one missing).
    overflow: bool,
    /// Devices whose last connection ended with entries queued for them that they did not
    /// confirm (see [`Wakeups::went_away_unconfirmed`]).
    unconfirmed: HashSet<ClientId>,
}

/// Entries queued for the wake-up task at most; beyond, see [`Queue::overflow`].
const QUEUED_ENTRIES_MAX: usize = 200_000;

/// Least time between two looks at the queued entries: commits in between are looked at
/// together, so a channel followed by many devices costs one pass over them per look, not
/// one per commit.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Counters of the wake-ups, for tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WakeupStats {
    /// Registered devices.
    pub devices: usize,
    /// Pokes delivered.
    pub sent: u64,
    /// Deliveries that failed and were retried or dropped.
    pub failed: u64,
    /// Registrations removed because their push service said they are gone.
    pub removed: u64,
}

/// The wake-ups of one server.
pub struct Wakeups {
    options: WakeupOptions,
    vapid: Vapid,
    inner: Mutex<Inner>,
    /// Connections and waiting long-polls per client (taken after `inner` when both are).
    live: Mutex<Live>,
    /// Committed entries to look at.
    queue: Mutex<Queue>,
    /// Commits handed over so far (taken under `queue`'s lock).
    handed: AtomicU64,
    /// Some device is registered: commits are looked at.
    active: AtomicBool,
    /// Something became due.
    wake: Notify,
    /// Registration changes, one at a time: a store write and the matching change in memory
    /// happen together.
    changes: tokio::sync::Mutex<()>,
    stats: Mutex<WakeupStats>,
    /// Stored registrations refused at start, to remove from the log.
    stale: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakeups").field("active", &self.active).finish_non_exhaustive()
    }
}

impl Wakeups {
    /// The wake-ups with the stored registrations; `vapid` signs Web Push requests.
    pub fn new(options: WakeupOptions, vapid: Vapid, stored: Vec<PushTarget>) -> Wakeups {
        let mut inner = Inner {
            registry: Registry::default(),
            schedule: Schedule::new(options.schedule.clone()),
            devices: HashMap::new(),
            generation: 0,
        };
        let mut stale = Vec::new();
        for row in stored {
            let parsed =
                serde_json::from_str::<TargetSpec>(&row.target).map_err(|e| e.to_string()).and_then(|spec| {
                    deliver::Target::parse(spec, options.allow_insecure_endpoints, false).map_err(|(_, m)| m)
                });
            let target = match parsed {
                Ok(target) => target,
                Err(e) => {
                    // Unreadable, or refused by this server's settings (an internal endpoint
                    // stored before they changed): removed from the log when the task starts.
                    tracing::warn!(
                        client = row.client,
                        error = e,
                        "a stored push target is refused; removing it"
                    );
                    stale.push(row.client);
                    continue;
                }
            };
            let node = NodeId::from(row.node);
            let channels = row.channels.into_iter().map(Channel::from).collect();
            inner.registry.insert(node.clone(), channels);
            inner.generation += 1;
            inner.devices.insert(node.client_id(), Device { node, target, generation: inner.generation });
        }
        let active = AtomicBool::new(!inner.registry.is_empty());
        Wakeups {
            options,
            vapid,
            inner: Mutex::new(inner),
            live: Mutex::default(),
            queue: Mutex::default(),
            handed: AtomicU64::new(0),
            active,
            wake: Notify::new(),
            changes: tokio::sync::Mutex::new(()),
            stats: Mutex::default(),
            stale: Mutex::new(stale),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The options.
    pub fn options(&self) -> &WakeupOptions {
        &self.options
    }

    /// The VAPID public key clients subscribe with (`applicationServerKey`), base64url.
    pub fn vapid_public_key(&self) -> &str {
        self.vapid.public_key()
    }

    /// Counters.
    pub fn stats(&self) -> WakeupStats {
        let devices = self.lock().registry.len();
        WakeupStats { devices, ..self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone() }
    }

    /// Hands committed entries to the wake-up task, which pokes each registered device they
    /// concern that is not connected, now or when its interval ends. Costs the hub a lock and
    /// a push, and nothing while no device is registered.
    pub fn committed(&self, entries: Vec<Vec<StoredEntry>>) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let count: usize = entries.iter().map(Vec::len).sum();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.overflow || queue.entries + count > QUEUED_ENTRIES_MAX {
            queue.overflow = true;
            queue.commits.clear();
            queue.entries = 0;
        } else {
            queue.commits.push(entries);
            queue.entries += count;
        }
        queue.last = self.handed.fetch_add(1, Ordering::SeqCst) + 1;
        drop(queue);
        self.wake.notify_one();
    }

    /// Looks at the queued entries: touches the devices they concern that are not connected.
    /// Whether there were any.
    fn look(&self) -> bool {
        let queue = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        if queue.commits.is_empty() && !queue.overflow && queue.unconfirmed.is_empty() {
            return false;
        }
        let now = now_ms();
        let mut inner = self.lock();
        let concerned: Vec<ClientId> = if queue.overflow {
            tracing::warn!("push wake-ups fell behind the commits: every registered device is poked");
            inner.devices.keys().cloned().collect()
        } else {
            inner.registry.concerned(queue.commits.iter().flatten().flatten()).into_iter().collect()
        };
        // A device connected when the last of these commits was routed, or connected since,
        // has them from its connection: what it missed before connecting, it read on connecting.
        // After an overflow, only whether it is connected now counts (which commits it was
        // there for is not known).
        let mut live = self.lock_live();
        let gone = |live: &Live, c: &ClientId| live.clients.get(c).is_none_or(|p| p.count == 0);
        let mut offline: Vec<ClientId> = concerned
            .into_iter()
            .filter(|c| {
                live.clients
                    .get(c)
                    .is_none_or(|p| p.count == 0 && (queue.overflow || p.left_after < queue.last))
            })
            .collect();
        // Left with news it never confirmed, and not back.
        offline.extend(
            queue.unconfirmed.iter().filter(|c| inner.devices.contains_key(*c) && gone(&live, c)).cloned(),
        );
        live.looked = live.looked.max(queue.last);
        let looked = live.looked;
        live.clients.retain(|_, p| p.count > 0 || p.left_after > looked);
        drop(live);
        for client in &offline {
            inner.schedule.touch(client, now);
        }
        drop(inner);
        // The entries are dropped here, off every lock.
        drop(queue);
        true
    }

    /// The last connection of `client` ended with log entries queued for it that it did not
    /// confirm: if it is a registered device and no connection of it is open when the task
    /// next looks, it is poked (its interval permitting). Costs the hub a lock and a push, as
    /// [`Wakeups::committed`]: the registry may be held by a look for tens of milliseconds.
    pub fn went_away_unconfirmed(&self, client: &ClientId) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.unconfirmed.len() >= QUEUED_ENTRIES_MAX {
            // Every device not connected at the look is poked.
            queue.overflow = true;
        } else {
            queue.unconfirmed.insert(client.clone());
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// `client` has a connection (or a waiting long-poll) until the guard is dropped.
    pub fn live(self: &Arc<Self>, client: &ClientId) -> LiveGuard {
        self.connected(client);
        LiveGuard { wakeups: self.clone(), client: client.clone() }
    }

    /// Counts a connection of `client` (the hub's connections are counted from their
    /// registration to their unregistration). Not while no device is registered: a server
    /// without wake-ups keeps no presence. A connection opened before the first registration
    /// is then not counted, and its device may get a poke it did not need; never the reverse,
    /// as [`Wakeups::disconnected`] always runs and never counts below zero.
    pub fn connected(&self, client: &ClientId) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        self.lock_live().clients.entry(client.clone()).or_default().count += 1;
    }

    /// A connection of `client` ended. It is remembered until the commits handed over before
    /// now are looked at: a device that was connected when a commit was routed got it, even
    /// if it went away before the task looked. With none waiting (always, while no device is
    /// registered) it is forgotten at once.
    pub fn disconnected(&self, client: &ClientId) {
        let mut live = self.lock_live();
        let handed = self.handed.load(Ordering::SeqCst);
        let looked = live.looked;
        if let Some(presence) = live.clients.get_mut(client) {
            presence.count = presence.count.saturating_sub(1);
            if presence.count == 0 {
                if handed <= looked {
                    live.clients.remove(client);
                } else {
                    presence.left_after = handed;
                }
            }
        }
    }

    /// Registers the client of `node`: pokes for commits on `channels` or addressed to it go
    /// to `target`. Durable before it returns. `Err` when the user has too many devices.
    pub async fn register(
        &self,
        shared: &Shared,
        node: NodeId,
        channels: Vec<Channel>,
        spec: &TargetSpec,
        target: deliver::Target,
    ) -> Result<(), RegisterError> {
        let _change = self.changes.lock().await;
        let client = node.client_id();
        {
            let inner = self.lock();
            let user = node.user_id();
            let others = user.map_or(0, |u| inner.registry.of_user(&u));
            if !inner.registry.contains(&client) && others >= self.options.targets_per_user_max {
                return Err(RegisterError::TooMany(self.options.targets_per_user_max));
            }
        }
        let row = PushTarget {
            client: client.as_str().to_owned(),
            node: node.as_str().to_owned(),
            channels: channels.iter().map(|c| c.as_str().to_owned()).collect(),
            target: serde_json::to_string(spec).unwrap_or_default(),
            registered_ms: now_ms(),
        };
        let batch = WriteBatch { push_targets: vec![PushTargetChange::Put(row)], ..WriteBatch::default() };
        match shared.writer.write_unordered(batch).await.await {
            Ok(Ok(_)) => {}
            _ => return Err(RegisterError::Storage),
        }
        let mut inner = self.lock();
        inner.registry.insert(node.clone(), channels);
        inner.generation += 1;
        let generation = inner.generation;
        inner.schedule.remove(&client);
        inner.devices.insert(client, Device { node, target, generation });
        self.active.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes the registration of `client`; whether there was one. Durable before it returns.
    pub async fn unregister(&self, shared: &Shared, client: &ClientId) -> Result<bool, RegisterError> {
        let _change = self.changes.lock().await;
        self.remove(shared, client, None).await
    }

    /// Removes `client`'s registration (only `generation`, when given).
    async fn remove(
        &self,
        shared: &Shared,
        client: &ClientId,
        generation: Option<u64>,
    ) -> Result<bool, RegisterError> {
        {
            let inner = self.lock();
            match inner.devices.get(client) {
                None => return Ok(false),
                Some(device) if generation.is_some_and(|g| g != device.generation) => return Ok(false),
                Some(_) => {}
            }
        }
        let change = PushTargetChange::Remove(client.as_str().to_owned());
        let batch = WriteBatch { push_targets: vec![change], ..WriteBatch::default() };
        match shared.writer.write_unordered(batch).await.await {
            Ok(Ok(_)) => {}
            _ => return Err(RegisterError::Storage),
        }
        let mut inner = self.lock();
        inner.registry.remove(client);
        inner.schedule.remove(client);
        inner.devices.remove(client);
        self.active.store(!inner.registry.is_empty(), Ordering::Release);
        Ok(true)
    }

    /// Whether committed entries wait to be looked at.
    fn has_queued(&self) -> bool {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        !queue.commits.is_empty() || queue.overflow || !queue.unconfirmed.is_empty()
    }

    fn count(&self, f: impl FnOnce(&mut WakeupStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A registration that was not made.
#[derive(Debug)]
pub enum RegisterError {
    /// The user has this many devices registered already.
    TooMany(usize),
    /// The log could not be written.
    Storage,
}

/// A connection or long-poll of a client, counted while it lives.
#[derive(Debug)]
pub struct LiveGuard {
    wakeups: Arc<Wakeups>,
    client: ClientId,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.wakeups.disconnected(&self.client);
    }
}

/// How often idle devices are forgotten by the schedule.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Delivers due pokes until shutdown: at most `sends_max` at once, each device's outcome fed
/// back to the schedule (a gone registration is removed).
pub async fn run(shared: Arc<Shared>) {
    let wakeups = shared.wakeups.clone();
    let options = wakeups.options.clone();
    let http = match reqwest::Client::builder()
        .timeout(options.send_timeout)
        .connect_timeout(options.send_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for push wake-ups; none will be sent");
            return;
        }
    };
    let stale = std::mem::take(&mut *wakeups.stale.lock().unwrap_or_else(|p| p.into_inner()));
    if !stale.is_empty() {
        // As a registration change: a device that registered again since the server started
        // (the listener is open already) keeps its new registration.
        let _change = wakeups.changes.lock().await;
        let stale: Vec<String> = {
            let inner = wakeups.lock();
            stale.into_iter().filter(|c| !inner.devices.contains_key(c.as_str())).collect()
        };
        let changes = stale.into_iter().map(PushTargetChange::Remove).collect();
        let batch = WriteBatch { push_targets: changes, ..WriteBatch::default() };
        if !matches!(shared.writer.write_unordered(batch).await.await, Ok(Ok(_))) {
            tracing::warn!("refused push targets could not be removed from the log");
        }
    }
    let sends = Arc::new(Semaphore::new(options.sends_max.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(ClientId, u64, Delivery)>();
    let mut pruned_at = tokio::time::Instant::now();
    let mut looked_at = tokio::time::Instant::now() - LOOK_EVERY;
    loop {
        let next = wakeups.lock().schedule.next_due();
        let mut sleep = match next {
            // Every send busy: the next one to finish wakes the loop.
            _ if sends.available_permits() == 0 => PRUNE_EVERY,
            Some(at) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
            None => PRUNE_EVERY,
        };
        if wakeups.has_queued() {
            sleep = sleep.min(LOOK_EVERY.saturating_sub(looked_at.elapsed()));
        }
        tokio::select! {
            _ = wakeups.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            Some((client, generation, delivery)) = done_rx.recv() => {
                finished(&shared, &client, generation, delivery).await;
            }
            _ = shared.stopping() => break,
        }
        if looked_at.elapsed() >= LOOK_EVERY && wakeups.has_queued() {
            // A large look runs off the async threads' budget of short steps.
            let looking = wakeups.clone();
            let _ = rhizome_io::blocking(move || looking.look()).await;
            looked_at = tokio::time::Instant::now();
        }
        if pruned_at.elapsed() >= PRUNE_EVERY {
            wakeups.lock().schedule.prune(now_ms());
            pruned_at = tokio::time::Instant::now();
        }
        start_due(&wakeups, &http, &sends, &done_tx);
    }
}

/// Starts delivering the pokes due now, as many as may be sent at once; the others stay due.
fn start_due(
    wakeups: &Arc<Wakeups>,
    http: &reqwest::Client,
    sends: &Arc<Semaphore>,
    done_tx: &mpsc::UnboundedSender<(ClientId, u64, Delivery)>,
) {
    let permits = sends.available_permits();
    if permits == 0 {
        return;
    }
    {
        let now = now_ms();
        let mut inner = wakeups.lock();
        for client in inner.schedule.take_due(now, permits) {
            let connected = wakeups.lock_live().clients.get(&client).is_some_and(|p| p.count > 0);
            let Some(device) = inner.devices.get(&client).filter(|_| !connected) else {
                inner.schedule.skipped(&client, now);
                continue;
            };
            let Ok(permit) = sends.clone().try_acquire_owned() else {
                inner.schedule.skipped(&client, now);
                inner.schedule.touch(&client, now);
                continue;
            };
            let poke = deliver::Poke {
                client: client.clone(),
                node: device.node.clone(),
                target: device.target.clone(),
            };
            let generation = device.generation;
            let done = done_tx.clone();
            let http = http.clone();
            let wakeups = wakeups.clone();
            tokio::spawn(async move {
                let delivery = deliver::send(&http, &wakeups, &poke).await;
                drop(permit);
                let _ = done.send((client, generation, delivery));
            });
        }
    }
}

/// Feeds a delivery's outcome to the schedule; removes a registration that is gone.
async fn finished(shared: &Shared, client: &ClientId, generation: u64, delivery: Delivery) {
    let wakeups = &shared.wakeups;
    match delivery {
        Delivery::Sent => wakeups.count(|s| s.sent += 1),
        Delivery::Retry { .. } | Delivery::Refused => wakeups.count(|s| s.failed += 1),
        Delivery::Gone => {}
    }
    let remove = {
        let mut inner = wakeups.lock();
        let current = inner.devices.get(client).is_some_and(|d| d.generation == generation);
        if !current {
            // Registered again meanwhile: this outcome was the old registration's.
            inner.schedule.skipped(client, now_ms());
            false
        } else {
            inner.schedule.finished(client, delivery, now_ms())
        }
    };
    if remove {
        let _change = wakeups.changes.lock().await;
        match wakeups.remove(shared, client, Some(generation)).await {
            Ok(true) => {
                tracing::info!(%client, "push target gone (404/410); registration removed");
                wakeups.count(|s| s.removed += 1);
            }
            Ok(false) => {}
            Err(_) => tracing::warn!(%client, "a gone push target could not be removed from the log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhizome_core::Routing;
    use rhizome_protocol::ActionId;

    fn stored(client: &str, channels: &[&str]) -> PushTarget {
        PushTarget {
            client: client.to_owned(),
            node: format!("{client}:1"),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            target: r#"{"type":"webhook","token":"t"}"#.to_owned(),
            registered_ms: 1,
        }
    }

    fn wakeups() -> Wakeups {
        let rows =
            vec![stored("alice:a", &["news"]), stored("bob:b", &["news"]), stored("carol:c", &["other"])];
        Wakeups::new(WakeupOptions::default(), Vapid::generate(), rows)
    }

    fn commit(n: usize, channel: &str) -> Vec<Vec<StoredEntry>> {
        let entries = (0..n)
            .map(|i| StoredEntry {
                added: i as u64 + 1,
                id: ActionId::parse(&format!("{} dave:d:1 0", i + 1)).expect("id"),
                time: 1,
                action_json: std::sync::Arc::from("{}"),
                subprotocol: 1,
                routing: Routing::channel(channel),
                crdt: None,
            })
            .collect();
        vec![entries]
    }

    #[test]
    fn a_device_connected_when_a_commit_was_routed_is_not_poked_even_if_gone_before_the_look() {
        let w = wakeups();
        let alice = ClientId::from("alice:a");
        let bob = ClientId::from("bob:b");
        w.connected(&alice);
        w.connected(&bob);
        // Bob leaves before the commit, Alice after it (her long-poll answered with it).
        w.disconnected(&bob);
        w.committed(commit(1, "news"));
        w.disconnected(&alice);
        assert!(w.look());
        let due = w.lock().schedule.take_due(i64::MAX, usize::MAX);
        assert_eq!(due, vec![bob], "only the device that was gone when the commit came");
        assert!(!w.look(), "nothing queued");
    }

    #[test]
    fn a_device_that_left_just_before_a_commit_is_poked_even_within_the_same_millisecond() {
        // The hub unregisters a connection and routes the next commit microseconds apart:
        // whether the device was there is an order, not a time.
        let alice = ClientId::from("alice:a");
        let mut same_ms = 0;
        for _ in 0..1_000 {
            let w = wakeups();
            w.connected(&alice);
            let before = now_ms();
            w.disconnected(&alice);
            w.committed(commit(1, "news"));
            if now_ms() != before {
                continue;
            }
            same_ms += 1;
            assert!(w.look());
            let due = w.lock().schedule.take_due(i64::MAX, usize::MAX);
            assert!(due.contains(&alice), "gone before the commit, yet not poked: {due:?}");
        }
        assert!(same_ms > 0, "never within one millisecond");
    }

    #[test]
    fn no_client_is_remembered_while_no_device_is_registered() {
        // No registration: no commit is handed over, so nothing ever looks, and nothing may
        // keep every client that ever connected.
        let w = Wakeups::new(WakeupOptions::default(), Vapid::generate(), Vec::new());
        for i in 0..1_000 {
            let client = ClientId::from(format!("u{i}:c").as_str());
            w.connected(&client);
            w.disconnected(&client);
        }
        assert_eq!(w.lock_live().clients.len(), 0);
        // With devices registered, those that left are forgotten once a look has covered them.
        let w = wakeups();
        let alice = ClientId::from("alice:a");
        w.connected(&alice);
        w.committed(commit(1, "news"));
        w.disconnected(&alice);
        assert!(w.look());
        w.committed(commit(1, "news"));
        assert!(w.look());
        assert_eq!(w.lock_live().clients.len(), 0);
    }

    #[test]
    fn the_hub_noting_an_unconfirmed_departure_does_not_wait_for_a_look() {
        // A look holds the registry while it works out who a batch concerns (tens of ms for a
        // large one); the hub, an async task routing every commit, must not wait for it.
        let w = wakeups();
        let alice = ClientId::from("alice:a");
        std::thread::scope(|scope| {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let looking = w.lock();
            let (w, alice) = (&w, &alice);
            scope.spawn(move || {
                w.went_away_unconfirmed(alice);
                let _ = done_tx.send(());
            });
            let returned = done_rx.recv_timeout(Duration::from_secs(5)).is_ok();
            drop(looking);
            assert!(returned, "went_away_unconfirmed waited for the registry lock");
        });
        assert!(w.look());
        let due = w.lock().schedule.take_due(i64::MAX, usize::MAX);
        assert_eq!(due, vec![alice]);
    }

    #[test]
    fn when_the_task_falls_behind_every_device_is_poked_rather_than_one_missed() {
        let w = wakeups();
        w.committed(commit(QUEUED_ENTRIES_MAX, "nothing-followed"));
        w.committed(commit(10, "nothing-followed"));
        assert!(w.look());
        let mut due = w.lock().schedule.take_due(i64::MAX, usize::MAX);
        due.sort();
        assert_eq!(due, ["alice:a", "bob:b", "carol:c"].map(ClientId::from));
        // Back to normal afterwards.
        w.committed(commit(3, "other"));
        assert!(w.look());
        assert_eq!(w.queue.lock().expect("lock").entries, 0);
    }
}
