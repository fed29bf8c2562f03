//! Building and running the application: the store chosen by the settings, the listener, the router, and
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use events::{Relay, RelayConfig};
use store::events::Outbox;
use store::{Backend, Sidecar};
use store_postgres::{PgConfig, PgStore};
use store_salesforce::SalesforceStore;
use store_sqlite::{SqliteConfig, SqliteStore};
use tokio::net::TcpListener;

use crate::api::{self, AppState, Shared};
use crate::config::{Settings, StoreUrl};
use crate::connections;
use crate::observability::{self, Instrumented};

/// Why the application could not start. Each message is one line naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Sqlite(#[from] store_sqlite::OpenError),
    #[error(transparent)]
    Postgres(#[from] store_postgres::OpenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Salesforce(#[from] store_salesforce::OpenError),
    #[error("store salesforce: {0}")]
    SalesforceSettings(&'static str),
}

/// The database a store's data is kept in: the store itself, or for Salesforce, the local store beside the
/// org (idempotency keys, key locks, audit).
fn local_store(settings: &Settings) -> Result<StoreUrl, StartError> {
    if settings.store != StoreUrl::Salesforce {
        return Ok(settings.store.clone());
    }
    let config = settings.salesforce.as_ref().ok_or(StartError::SalesforceSettings("no [salesforce] section"))?;
    let local = StoreUrl::parse(&config.local_store)
        .map_err(|_| StartError::SalesforceSettings("salesforce.local_store must be sqlite:// or postgres://"))?;
    if local == StoreUrl::Salesforce {
        return Err(StartError::SalesforceSettings("salesforce.local_store cannot be salesforce"));
    }
    Ok(local)
}

/// Applies the pending migrations of the database the settings' store keeps its data in (for Salesforce,
/// its local store), without opening it for service: the store and how many migrations ran.
/// ([`Opened::open`] migrates too, before it serves.)
pub async fn migrate(settings: &Settings) -> Result<(StoreUrl, usize), StartError> {
    let store = local_store(settings)?;
    let applied = match &store {
        StoreUrl::Sqlite(path) => store_sqlite::migrate(path)?,
        StoreUrl::Postgres(url) => store_postgres::migrate(&pg_config(settings, url)).await?,
        StoreUrl::Salesforce => unreachable!("local_store is never salesforce"),
    };
    Ok((store, applied))
}

/// The backend, kept concrete so shutdown can drain it.
pub enum Opened {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
    /// The org, and the local store beside it.
    Salesforce(Arc<SalesforceStore>, Box<Opened>),
}

impl Opened {
    /// Opens (and migrates) the store the settings name; for Salesforce, the local store first, then the
    /// org (a token, and the mapping check).
    pub async fn open(settings: &Settings) -> Result<Self, StartError> {
        Self::open_at(settings, &settings.store).await
    }

    async fn open_at(settings: &Settings, store: &StoreUrl) -> Result<Self, StartError> {
        match store {
            StoreUrl::Sqlite(path) => {
                let mut config = SqliteConfig::new(path);
                config.matching = settings.matching;
                config.max_batch = settings.sqlite_max_batch;
                config.events = settings.events.is_some();
                Ok(Self::Sqlite(Arc::new(SqliteStore::open(config)?)))
            }
            StoreUrl::Postgres(url) => Ok(Self::Postgres(Arc::new(PgStore::open(pg_config(settings, url)).await?))),
            StoreUrl::Salesforce => {
                let mut config =
                    settings.salesforce.clone().ok_or(StartError::SalesforceSettings("no [salesforce] section"))?;
                config.events = settings.events.is_some();
                let local_url = local_store(settings)?;
                let local = Box::pin(Self::open_at(settings, &local_url)).await?;
                let sidecar: Arc<dyn Sidecar> = match &local {
                    Self::Sqlite(s) => s.clone(),
                    Self::Postgres(s) => s.clone(),
                    Self::Salesforce(..) => unreachable!("checked above"),
                };
                let org = match SalesforceStore::open(config, sidecar, settings.matching).await {
                    Ok(org) => org,
                    Err(e) => {
                        local.shutdown().await;
                        return Err(e.into());
                    }
                };
                Ok(Self::Salesforce(Arc::new(org), Box::new(local)))
            }
        }
    }

    pub fn port(&self) -> Arc<dyn Backend> {
        match self {
            Self::Sqlite(s) => s.clone(),
            Self::Postgres(s) => s.clone(),
            Self::Salesforce(s, _) => s.clone(),
        }
    }

    /// The outbox lifecycle events wait in: the store's own, or for a CRM backend, its local store's.
    pub fn outbox(&self) -> Arc<dyn Outbox> {
        match self {
            Self::Sqlite(s) => s.clone(),
            Self::Postgres(s) => s.clone(),
            Self::Salesforce(_, local) => local.outbox(),
        }
    }

    /// Called after the server has stopped: every handler has returned, so the store is ours alone.
    pub async fn shutdown(self) {
        match self {
            Self::Salesforce(org, local) => {
                drop(org);
                Box::pin(local.shutdown()).await
            }
            Self::Sqlite(s) => {
                // Handlers are done, but spawned work (a purge, an idempotency release) may still hold the
                // store: stop the writer through the shared handle, after what is queued.
                let _ = tokio::task::spawn_blocking(move || s.stop_writer()).await;
            }
            Self::Postgres(s) => s.shutdown().await,
        }
    }
}

/// The PostgreSQL settings of `settings`, for `serve` and `migrate`.
pub fn pg_config(settings: &Settings, url: &str) -> PgConfig {
    let mut config = PgConfig::new(url);
    config.matching = settings.matching;
    config.max_connections = settings.postgres_max_connections;
    config.batching =
        store_postgres::Batching { max_batch: settings.postgres_max_batch, concurrent: settings.postgres_batches };
    config.acquire_timeout = settings.postgres_acquire_timeout;
    config.events = settings.events.is_some();
    config
}

/// The relay's settings from the `[events]` section.
pub fn relay_config(events: &crate::config::EventsSettings) -> RelayConfig {
    let mut config = RelayConfig::new(&events.nats_url);
    config.stream = events.stream.clone();
    config.subject_prefix = events.subject_prefix.clone();
    config
}

/// A bound, ready-to-run service. Tests build it on port 0 and read [`Application::port`].
pub struct Application {
    listener: TcpListener,
    grace: Duration,
    purge: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    backend: Opened,
    router: axum::Router,
    limits: connections::Limits,
    /// The event relay, when events are configured.
    relay: Option<Relay>,
}

impl Application {
    /// Opens the store (migrating it) and binds the listener.
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        let backend = Opened::open(settings).await?;
        let relay = settings.events.as_ref().map(|events| Relay::start(backend.outbox(), relay_config(events)));
        let state = AppState::new(Shared {
            store: Arc::new(Instrumented(backend.port())),
            request_timeout: settings.request_timeout,
            // Renewed every third of it while the run is alive (see api::idempotency), so it bounds only how
            // long a key stays taken after its holder died.
            idempotency_lease: settings.request_timeout.max(Duration::from_secs(1)),
            idempotency_ttl: settings.idempotency_ttl,
            api_keys: Arc::new(settings.api_keys.clone()),
            rate_limit: settings.rate_limit.map(|(rate, burst)| api::overload::rate_limiter(rate, burst)),
            in_flight: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight)),
            events: relay.as_ref().map(Relay::status_handle),
        });
        observability::handle();
        let purge = housekeeping(state.store.clone(), settings.idempotency_ttl);
        let router = api::router(state);
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartError::Bind { addr: settings.listen, source })?;
        let limits = connections::Limits {
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
            max_connections: settings.max_connections,
        };
        Ok(Self { listener, backend, router, grace: settings.shutdown_grace, purge, limits, relay })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` completes, then stops accepting, finishes the requests in flight, and
    /// drains the store.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Self { listener, backend, router, grace, purge, limits, relay } = self;
        let purger = tokio::spawn(purge);
        tracing::info!(address = %listener.local_addr()?, "listening");
        let (stopping, mut stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stopping.send(true);
        });
        let watching = stopped.clone();
        let server = async move {
            connections::serve(listener, router, limits, watching).await;
            Ok(())
        };
        let deadline = async move {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            served = server => {
                tracing::info!("stopped accepting; requests in flight finished");
                served
            }
            _ = deadline => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "requests still in flight after the grace period; closing");
                Ok(())
            }
        };
        purger.abort();
        let _ = purger.await;
        if let Some(relay) = relay {
            relay.stop().await;
        }
        backend.shutdown().await;
        served
    }
}

/// Now and then (every tenth of the idempotency keys' lifetime, at most every 10 minutes): deletes the expired
/// keys, and folds what the writes added to the reports' daily counts (where a backend keeps them apart).
fn housekeeping(store: Arc<dyn Backend>, ttl: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    let every = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    Box::pin(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match store.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired idempotency keys deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot purge expired idempotency keys"),
            }
            match store.fold().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(folded = n, "reports' daily counts folded"),
                Err(e) => tracing::warn!(error = %e, "cannot fold the reports' daily counts"),
            }
        }
    })
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
