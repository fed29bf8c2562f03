//! The relay: publishes the lifecycle events waiting in a store's outbox (`store::events::Outbox`) to NATS
//! JetStream, then forgets them.
//!
//! Guarantees, and how:
//! - **Never lost.** An event is in the outbox from the commit of its change; the relay deletes it only
//!   after JetStream acknowledged it (the ack means the stream stored it). A relay that dies between the
//!   ack and the delete publishes it again after restart.
//! - **Never doubled.** Each message carries `Nats-Msg-Id` = the event id, so JetStream drops a second copy
//!   within its duplicate window (the stream is created with [`RelayConfig::duplicate_window`]).
//! - **In order per key, one publisher.** Replicas share the outbox; only the holder of the relay lease (a
//!   row in the store) publishes, oldest first, one event at a time, each acknowledged before the next is
//!   sent. The others wait and take over when a lease runs out.
//! - **NATS down.** Publishing fails or times out; nothing is deleted, the relay backs off and tries again.
//!   Requests never wait for NATS: they only write the outbox.
//!
//! Metrics: `crm_events_outbox_pending`, `crm_events_outbox_oldest_age_seconds` (gauges, from every
//! replica), `crm_events_published_total` and `crm_events_publish_failures_total` (counters).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use store::events::{Lag, Outbox, Pending};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The relay's settings (the server's `[events]` section).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `nats://host:port` of the NATS server (or a comma-separated list of them).
    pub nats_url: String,
    /// The JetStream stream; created, taking every subject below `subject_prefix`, if it is missing.
    pub stream: String,
    /// Subjects are `PREFIX.lead.created`, `PREFIX.opportunity.won`, …
    pub subject_prefix: String,
    /// How often an idle relay looks at the outbox.
    pub poll: Duration,
    /// How long the relay lease lasts: a replica that died holds up publishing at most this long.
    pub lease: Duration,
    /// Events read from the outbox at a time.
    pub batch: usize,
    /// Longest wait for one acknowledgement.
    pub publish_timeout: Duration,
    /// The stream's window for dropping a message whose `Nats-Msg-Id` it has seen (when the relay creates it).
    pub duplicate_window: Duration,
}

impl RelayConfig {
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            stream: "CRM_EVENTS".into(),
            subject_prefix: "crm".into(),
            poll: Duration::from_millis(100),
            lease: Duration::from_secs(10),
            batch: 256,
            publish_timeout: Duration::from_secs(3),
            duplicate_window: Duration::from_secs(600),
        }
    }
}

/// What `/health/ready` shows of the relay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Events in the outbox, not yet delivered, and how long the oldest has waited (last look).
    pub lag: Lag,
    /// Whether the client is connected to NATS.
    pub connected: bool,
    /// Whether this replica holds the relay lease (publishes).
    pub publishing: bool,
}

/// A running relay. [`Relay::stop`] ends it; dropping it aborts it.
pub struct Relay {
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts the relay on the current runtime. It connects in the background: a NATS server that is down
    /// at start is retried like one that goes down later.
    pub fn start(outbox: Arc<dyn Outbox>, config: RelayConfig) -> Self {
        let status = Arc::new(Mutex::new(Status::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(outbox, config, status.clone(), stopped));
        Self { status, stop, task: Some(task) }
    }

    /// The relay's state at its last look.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A handle on the status, for the HTTP layer.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.status.clone())
    }

    /// Stops after the event being published (if any) and waits for that.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A shared view of a relay's [`Status`].
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Mutex<Status>>);

impl StatusHandle {
    pub fn get(&self) -> Status {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Why one round of publishing stopped early. The text goes to the log; it never holds event bodies.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("the outbox: {0}")]
    Outbox(#[from] store::StoreError),
    #[error("cannot create or read the stream: {0}")]
    Stream(String),
    #[error("publishing: {0}")]
    Publish(String),
}

struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    stream_ready: bool,
}

async fn run(
    outbox: Arc<dyn Outbox>,
    config: RelayConfig,
    status: Arc<Mutex<Status>>,
    mut stopped: watch::Receiver<bool>,
) {
    let holder = uuid::Uuid::new_v4().to_string();
    let mut publisher: Option<Publisher> = None;
    let mut pause = Duration::ZERO;
    let max_pause = Duration::from_secs(5);
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(pause) => {}
        }
        look(&*outbox, &status, publisher.as_ref()).await;
        let publisher = match &mut publisher {
            Some(p) => p,
            None => match connect(&config).await {
                Ok(p) => publisher.insert(p),
                Err(e) => {
                    tracing::warn!(error = %e, "events: cannot set up the NATS client");
                    pause = (pause * 2).clamp(config.poll, max_pause);
                    continue;
                }
            },
        };
        match round(&*outbox, &config, &holder, publisher, &status, &stopped).await {
            Ok(full) => pause = if full { Duration::ZERO } else { config.poll },
            Err(e) => {
                metrics::counter!("crm_events_publish_failures_total").increment(1);
                tracing::warn!(error = %e, "events: publishing paused; the events wait in the outbox");
                pause = (pause * 2).clamp(config.poll, max_pause);
            }
        }
    }
    tracing::debug!("events relay stopped");
}

/// Refreshes the lag (status and gauges) and the connection state.
async fn look(outbox: &dyn Outbox, status: &Mutex<Status>, publisher: Option<&Publisher>) {
    let lag = outbox.lag().await;
    let connected = publisher.is_some_and(|p| p.client.connection_state() == async_nats::connection::State::Connected);
    let mut s = status.lock().unwrap_or_else(PoisonError::into_inner);
    s.connected = connected;
    if let Ok(lag) = lag {
        s.lag = lag;
        metrics::gauge!("crm_events_outbox_pending").set(lag.count as f64);
        metrics::gauge!("crm_events_outbox_oldest_age_seconds").set(lag.oldest_age.as_secs_f64());
    }
}

async fn connect(config: &RelayConfig) -> Result<Publisher, async_nats::ConnectError> {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(config.publish_timeout)
        .connect(config.nats_url.as_str())
        .await?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.publish_timeout);
    Ok(Publisher { client, js, stream_ready: false })
}

async fn ensure_stream(config: &RelayConfig, js: &jetstream::Context) -> Result<(), RoundError> {
    let stream = jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        duplicate_window: config.duplicate_window,
        ..Default::default()
    };
    js.get_or_create_stream(stream).await.map_err(|e| RoundError::Stream(e.to_string()))?;
    Ok(())
}

/// One round: if events wait and this replica holds (or takes) the lease, publish a batch of them in
/// order and forget those acknowledged. `Ok(true)` when the batch was full (more may wait).
async fn round(
    outbox: &dyn Outbox,
    config: &RelayConfig,
    holder: &str,
    publisher: &mut Publisher,
    status: &Mutex<Status>,
    stopped: &watch::Receiver<bool>,
) -> Result<bool, RoundError> {
    let pending = outbox.pending(config.batch).await?;
    if pending.is_empty() {
        return Ok(false);
    }
    let leader = outbox.lease_relay(holder, config.lease).await?;
    status.lock().unwrap_or_else(PoisonError::into_inner).publishing = leader;
    if !leader {
        return Ok(false);
    }
    if !publisher.stream_ready {
        ensure_stream(config, &publisher.js).await?;
        publisher.stream_ready = true;
    }
    // Read again under the lease: another replica may have delivered some of them meanwhile.
    let pending = outbox.pending(config.batch).await?;
    let full = pending.len() == config.batch;
    let mut delivered = Vec::with_capacity(pending.len());
    let mut failure = None;
    for event in &pending {
        if *stopped.borrow() {
            break;
        }
        match publish(config, &publisher.js, event).await {
            Ok(()) => delivered.push(event.position),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if !delivered.is_empty() {
        outbox.delivered(&delivered).await?;
        metrics::counter!("crm_events_published_total").increment(delivered.len() as u64);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(full),
    }
}

/// Publishes one event and waits for JetStream's acknowledgement (a duplicate the stream dropped counts:
/// it holds the event already).
async fn publish(config: &RelayConfig, js: &jetstream::Context, p: &Pending) -> Result<(), RoundError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, p.event.id.as_str());
    let subject = format!("{}.{}", config.subject_prefix, p.event.subject);
    let ack = js
        .publish_with_headers(subject, headers, p.event.body.clone().into())
        .await
        .map_err(|e| RoundError::Publish(e.to_string()))?;
    ack.await.map_err(|e| RoundError::Publish(e.to_string()))?;
    Ok(())
}
