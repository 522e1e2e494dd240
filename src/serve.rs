//! `ramboot serve`: start DHCP, TFTP and HTTP on one runtime, stop them together.
//!
//! Start-up refuses a bad config or profile set (with `file:line:col`) before any
//! socket opens. On SIGINT/SIGTERM a cancellation token stops every service; HTTP
//! drains in-flight requests for up to `HTTP_DRAIN` (within the process-wide `DRAIN`)
//! before the process exits.

use crate::config::Config;
use crate::dhcp;
use crate::http::{self, AppState};
use crate::images::sync::Syncer;
use crate::images::ImageStore;
use crate::profiles::LiveProfiles;
use crate::store::Store;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

const DRAIN: Duration = Duration::from_secs(10);
/// HTTP's share of `DRAIN`: it closes its stragglers itself (and says so) before
/// `run` stops waiting for it.
const HTTP_DRAIN: Duration = Duration::from_secs(8);
/// TFTP's blocking pool beyond its sessions on threads: file reads into the cache.
const TFTP_SPARE_BLOCKING_THREADS: usize = 16;

pub async fn run(config: Config) -> Result<()> {
    // First: a SIGTERM while the server is still starting (a unit stopped at once)
    // then ends it cleanly too, instead of by the signal's default action.
    let mut signals = ShutdownSignals::register().context("installing the SIGINT/SIGTERM handlers")?;
    // Before anything counts (the first image sync may run before profiles load).
    crate::http::metrics::handle();
    let images = ImageStore::new(config.paths.images());
    let cancel = CancellationToken::new();
    // With peers, images they built are fetched from them (`images::sync`).
    let mut image_sync = (!config.cluster.peers.is_empty())
        .then(|| Syncer::new(images.clone(), config.cluster.peers.clone(), cancel.clone()));
    let profiles = load_profiles(&config, &images, &mut image_sync).await?;
    if let Some(default) = &config.default_profile {
        if profiles.current().get(default).is_none() {
            anyhow::bail!(
                "refusing to start: default_profile {default:?} is not defined in {}",
                config.paths.profiles.display()
            );
        }
    }
    // What this process creates from here on is its own (database, -wal/-shm, blobs,
    // volumes); existing paths are tightened explicitly (`files`).
    crate::files::private_umask();
    crate::files::ensure_private_dir(&config.paths.data)
        .with_context(|| format!("creating data dir {}", config.paths.data.display()))?;
    if let Some(path) = &config.secrets {
        // The same check every render makes; here it stops a bad file before boot.
        let secrets = crate::secrets::load(path).context("refusing to start")?;
        info!(path = %path.display(), count = secrets.len(), "secrets file checked");
    }
    let store = Store::connect(&config.database_url, config.database_password_file.as_deref())
        .await
        .context("opening the database")?;
    if let Some(path) = crate::http::auth::bootstrap_admin_token(
        &store,
        &config.paths.data,
        &config.cluster.actor(),
        crate::clock::now_ms(),
    )
    .await?
    {
        warn!(path = %path.display(), "first start: created an admin API token; it is in this file (mode 0600)");
    }
    info!(profiles = profiles.current().len(), database = %config.database_url, "ramboot starting");

    let dhcp_listeners = dhcp::io::bind_all(&config)?;
    let tftp_socket = std::net::UdpSocket::bind(config.tftp_listen)
        .with_context(|| format!("binding TFTP on {}", config.tftp_listen))?;
    let listener =
        bind_tcp(config.http_listen, false).with_context(|| format!("binding HTTP on {}", config.http_listen))?;
    let mut http_listeners = vec![listener];
    let mut dhcp6_socket = None;
    if let Some(v6) = &config.dhcp6 {
        // IPv6 nodes reach HTTP on the same port, on a socket of its own (v6 only).
        let at = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, config.http_listen.port()));
        http_listeners.push(bind_tcp(at, true).with_context(|| format!("binding HTTP on {at}"))?);
        dhcp6_socket = Some(dhcp::io6::bind(&config.interface, dhcp::io6::SERVER_PORT)?);
        info!(interface = %config.interface, server = %v6.server_address, "listening on IPv6 (DHCPv6, HTTP)");
    }
    info!(http = %config.http_listen, tftp = %config.tftp_listen, dhcp = ?config.dhcp.interfaces, "listening");

    let config = Arc::new(config);
    let profiles = Arc::new(profiles);
    let volumes = match &config.iscsi {
        Some(cfg) => {
            let backend = crate::iscsi::tgt::Tgt { control_port: cfg.tgt_control_port };
            let service = crate::iscsi::service::Volumes { backend, config: cfg.clone(), store: store.clone() };
            // Drift is repaired, never fatal: nodes still boot if the target is down.
            match service.reconcile().await {
                Ok(repaired) => info!(repaired = repaired.len(), "iSCSI exports reconciled"),
                Err(e) => error!(error = %e, "iSCSI reconcile failed; volumes may be unreachable until it succeeds"),
            }
            Some(Arc::new(service))
        }
        None => None,
    };
    let inventory = Arc::new(crate::inventory::LiveInventory::new(&config.paths.inventory));
    let power = Arc::new(crate::bmc::service::Power::from_config(&config));
    let reboot = crate::rollout::bmc_reboot(power.clone());
    let rollouts = crate::rollout::Driver::new(store.clone(), config.clone(), Some(reboot));
    let state = AppState {
        config: config.clone(),
        store: store.clone(),
        images: images.clone(),
        profiles: profiles.clone(),
        inventory: inventory.clone(),
        rollouts: rollouts.clone(),
        volumes,
        limits: Default::default(),
        power: power.clone(),
        shutdown: cancel.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    {
        let cancel = cancel.clone();
        tasks.spawn(async move {
            rollouts.run(cancel).await;
            Ok(())
        });
    }
    {
        let (profiles, store, config, cancel) = (profiles.clone(), store.clone(), config.clone(), cancel.clone());
        tasks.spawn(async move {
            crate::watch::watch_inventory(inventory, profiles, store, config, cancel).await.map_err(anyhow::Error::from)
        });
    }
    {
        // Every BMC's power state, for the API's last view and `ramboot_bmc_nodes`.
        let (store, cancel) = (store.clone(), cancel.clone());
        tasks.spawn(async move {
            crate::bmc::service::poll(power, store, cancel.clone()).await;
            Ok(())
        });
    }
    {
        let (profiles, cancel) = (profiles.clone(), cancel.clone());
        tasks.spawn(async move {
            crate::watch::watch_profiles(profiles, images, cancel).await.map_err(anyhow::Error::from)
        });
    }
    if let Some(syncer) = image_sync {
        let every = config.cluster.image_sync;
        tasks.spawn(async move {
            crate::images::sync::run(syncer, every).await;
            Ok(())
        });
    }
    {
        let (store, lifecycle, cancel) = (store.clone(), config.lifecycle.clone(), cancel.clone());
        tasks.spawn(async move {
            crate::watchdog::run(store, lifecycle, cancel).await;
            Ok(())
        });
    }
    {
        let (store, retention, cancel) = (store.clone(), config.retention, cancel.clone());
        tasks.spawn(async move {
            crate::retention::run(store, retention, cancel.clone()).await;
            // With nothing to prune it returns at once; it must not read as a failed service.
            cancel.cancelled().await;
            Ok(())
        });
    }
    {
        let (store, cancel) = (store.clone(), cancel.clone());
        tasks.spawn(async move {
            // Other servers' changes (PostgreSQL); on SQLite it returns at once.
            store.listen(cancel.clone()).await;
            cancel.cancelled().await;
            Ok(())
        });
    }
    {
        // Where the event metrics start: read now, before anything is served.
        let after = store.last_event_id().await.context("reading the event log")?;
        let (store, cancel) = (store.clone(), cancel.clone());
        tasks.spawn(async move {
            crate::http::metrics::follow_events(store, after, cancel).await;
            Ok(())
        });
    }
    {
        let (cfg, store, profiles, cancel) = (config.clone(), store.clone(), profiles.clone(), cancel.clone());
        tasks.spawn(async move {
            dhcp::io::serve(&cfg, dhcp_listeners, store, profiles, cancel).await.map_err(anyhow::Error::from)
        });
    }
    {
        let (root, limits, cancel) = (config.paths.ipxe.clone(), config.tftp_limits, cancel.clone());
        // The signed chain's GRUB configs and stage-one files (`http::boot::grub`),
        // rendered on this runtime, where the store lives.
        let signed: Arc<dyn crate::tftp::GeneratedFiles> =
            Arc::new(http::boot::grub::SignedChainFiles::new(state.clone(), tokio::runtime::Handle::current()));
        // TFTP gets a thread and a single-threaded runtime of its own: a session is a
        // ping-pong of small packets, answered sooner without cross-thread wake-ups,
        // and an HTTP storm on the main runtime cannot delay a PXE ROM's next block.
        tasks.spawn(async move {
            tokio::task::spawn_blocking(move || {
                // A session on a thread blocks a pool thread (`tftp::SessionSocket`):
                // room for all of them, and for a file read into the cache.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(limits.threaded_sessions + TFTP_SPARE_BLOCKING_THREADS)
                    .build()?;
                runtime
                    .block_on(crate::tftp::serve_with(&root, tftp_socket, limits, Some(signed), cancel))
                    .map_err(anyhow::Error::from)
            })
            .await?
        });
    }
    if let Some(socket) = dhcp6_socket {
        let (cfg, store, profiles, cancel) = (config.clone(), store.clone(), profiles.clone(), cancel.clone());
        tasks.spawn(async move {
            dhcp::io6::serve(&cfg, socket, store, profiles, cancel).await.map_err(anyhow::Error::from)
        });
    }
    if config.ipv6_ra || config.dhcp6.is_some() {
        // With dhcp6: the prefix as on-link and the M and O flags; without: an RA
        // that configures nothing (see `ra`).
        let advert = match &config.dhcp6 {
            Some(v6) => crate::ra::Advertisement::Managed { prefix: v6.prefix },
            None => crate::ra::Advertisement::Empty,
        };
        let (interface, cancel) = (config.interface.clone(), cancel.clone());
        tasks.spawn(async move { crate::ra::serve(&interface, advert, cancel).await.map_err(anyhow::Error::from) });
    }
    {
        let cancel = cancel.clone();
        // Artifact bodies go out with sendfile(2); see `http::sendfile`.
        let artifacts = Some(http::sendfile::Artifacts { images: state.images.clone() });
        let app = http::router(state);
        // Header/idle timeout, connection cap, TCP_USER_TIMEOUT: see `http::server`.
        let limits = http::server::ServerLimits {
            drain: HTTP_DRAIN,
            max_connections_per_source: config.http_limits.max_connections_per_source,
            ..Default::default()
        };
        tasks.spawn(async move {
            http::server::serve_all(http_listeners, app, artifacts, limits, cancel).await;
            Ok(())
        });
    }

    // Every socket was bound before the services started (they queue what
    // arrives until read): DHCP, TFTP and HTTP are listening.
    crate::sd_notify::notify("READY=1\nSTATUS=serving DHCP, TFTP and HTTP");
    if let Some(interval) = crate::sd_notify::watchdog_interval() {
        info!(?interval, "systemd watchdog: pinging at half the interval");
        let cancel = cancel.clone();
        tasks.spawn(async move {
            crate::sd_notify::keep_watchdog_fed(interval, cancel).await;
            Ok(())
        });
    }

    let mut failure = None;
    tokio::select! {
        _ = signals.recv() => info!("shutting down"),
        Some(result) = tasks.join_next() => {
            // A service ended on its own: that is a failure; take the rest down.
            let err = match result {
                Ok(Ok(())) => anyhow::anyhow!("a service stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a service panicked: {e}"),
            };
            error!(error = %err, "service failed, shutting down");
            failure = Some(err);
        }
    }
    crate::sd_notify::notify("STOPPING=1");
    cancel.cancel();
    let drained = tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        error!("services did not stop within {DRAIN:?}; exiting anyway");
    }
    store.close().await;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The profiles, checked against the images. A server with peers that lacks an
/// image its profiles name (a new server beside the one that built it) fetches
/// the peers' images once and checks again before refusing to start.
async fn load_profiles(config: &Config, images: &ImageStore, sync: &mut Option<Syncer>) -> Result<LiveProfiles> {
    let refuse = |e| anyhow::anyhow!("refusing to start: invalid profiles:\n{e}");
    let first = LiveProfiles::load(&config.paths.profiles, images);
    match (first, sync.take()) {
        (Ok(profiles), syncer) => {
            *sync = syncer;
            Ok(profiles)
        }
        (Err(e), None) => Err(refuse(e)),
        (Err(_), Some(syncer)) => {
            info!("profiles do not load; fetching the peers' images before checking them again");
            let (syncer, _) = crate::images::sync::round(syncer)
                .await
                .ok_or_else(|| anyhow::anyhow!("image sync failed at start"))?;
            *sync = Some(syncer);
            LiveProfiles::load(&config.paths.profiles, images).map_err(refuse)
        }
    }
}

/// SIGINT and SIGTERM, handled from the moment they are registered.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn register() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

/// Connections a listener queues before it accepts them (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default). A storm's nodes connect within
/// milliseconds of each other; at the usual 128 the rest fall back to SYN
/// cookies or retry their SYN a second later.
const LISTEN_BACKLOG: i32 = 4096;

/// A TCP listener; an IPv6 one (`v6_only`) takes IPv6 only (the IPv4 listener
/// is separate), so both may use one port.
fn bind_tcp(at: std::net::SocketAddr, v6_only: bool) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))?;
    if v6_only {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&at.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}
