//! Prometheus metrics. Counters and histograms are recorded where things happen
//! (DHCP decisions, TFTP sessions, artifact bytes, phase moves, profile reloads);
//! node counts by state are read from the store at scrape time, and the event log
//! is followed ([`follow_events`]), so every server sharing a database counts every
//! node's moves, whichever server took them.
//!
//! Names follow Prometheus conventions: `ramboot_` prefix, base units (seconds,
//! bytes), `_total` for counters.

use super::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ramboot_core::node::NodeState;
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Boot phases last seconds to minutes under TCG or on real iron.
pub(crate) const PHASE_BUCKETS: &[f64] = &[0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0];

/// A script, a plan or an agent report takes a millisecond or two when nothing
/// waits; a storm shows in the upper buckets.
pub(crate) const REQUEST_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Install the process-wide recorder once; later calls reuse it (tests start many servers).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let phases = Matcher::Full("ramboot_boot_phase_duration_seconds".into());
        let requests = Matcher::Full("ramboot_http_request_duration_seconds".into());
        // Only an empty bucket list is refused, and ours are non-empty constants.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(phases, PHASE_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(requests, REQUEST_BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist (a test harness); ours still renders what it recorded.
        let _ = metrics::set_global_recorder(recorder);
        metrics::gauge!("ramboot_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(
        "ramboot_http_boot_file_requests_total",
        "iPXE binaries asked for over HTTP (UEFI HTTP Boot), by result: ok, not_found, refused (the name left ipxe/)"
    );
    metrics::describe_counter!(
        "ramboot_events_total",
        "Events in the shared event log since this server started, by kind (all servers' nodes)"
    );
    metrics::describe_counter!(
        "ramboot_node_transitions_total",
        "Node lifecycle moves in the shared event log since this server started, by the state entered"
    );
    metrics::describe_counter!(
        "ramboot_dhcp_leases_learned_total",
        "Lease rows other servers sharing the database committed, applied to this server's pools"
    );
    metrics::describe_counter!(
        "ramboot_db_listener_failures_total",
        "Times this server lost the database's change notices (it resyncs when they return)"
    );
    metrics::describe_counter!(
        "ramboot_image_sync_blobs_total",
        "Blobs fetched from peers by image sync, by outcome (fetched; bad_digest, bad_size, peer_error, \
         transfer_error, local_error: discarded and tried again next round)"
    );
    metrics::describe_counter!("ramboot_image_sync_bytes_total", "Bytes of verified blobs fetched from peers");
    metrics::describe_counter!("ramboot_image_sync_images_total", "Image manifests fetched from peers");
    metrics::describe_counter!(
        "ramboot_image_sync_peer_errors_total",
        "Image sync rounds in which a peer's manifest list could not be read"
    );
    metrics::describe_counter!("ramboot_dhcp_messages_total", "DHCP messages handled, by request type and outcome");
    metrics::describe_counter!(
        "ramboot_dhcp_relay_info_disregarded_total",
        "Relay-supplied options ignored because the packet came from no trusted relay, by option"
    );
    metrics::describe_counter!(
        "ramboot_dhcp_boot_choices_total",
        "Boot files named in DHCP replies, by choice: the script (and how its iPXE was recognised), ramboot's \
         iPXE handed to another iPXE build, a PXE ROM or an HTTP-boot client, or none"
    );
    metrics::describe_counter!(
        "ramboot_dhcp_grants_taken_total",
        "Grants the database refused because another server holds the address (no ACK sent; the pool learns the holder)"
    );
    metrics::describe_counter!(
        "ramboot_dhcp_commit_failures_total",
        "Lease batches the database refused, by reason (unreachable, disk_full, read_only, io, busy, error): no ACKs sent, pool rolled back"
    );
    metrics::describe_counter!(
        "ramboot_tftp_sessions_total",
        "TFTP read requests, by outcome (served, busy and source_busy refusals, expired sessions, ...)"
    );
    metrics::describe_counter!("ramboot_tftp_bytes_total", "Bytes of files opened for TFTP transfer");
    metrics::describe_counter!(
        "ramboot_tftp_timeouts_total",
        "TFTP waits for a client's ACK that ran out: each resends (or, past the resend limit, ends the session)"
    );
    metrics::describe_counter!("ramboot_http_artifact_bytes_total", "Artifact bytes sent over HTTP");
    metrics::describe_gauge!("ramboot_http_artifact_downloads_in_flight", "Artifact downloads in progress");
    metrics::describe_counter!(
        "ramboot_http_connections_refused_total",
        "HTTP connections refused (503) because their address held too many, by reason"
    );
    metrics::describe_counter!(
        "ramboot_http_event_streams_refused_total",
        "Event streams refused (503), by reason (per_source, total)"
    );
    metrics::describe_gauge!("ramboot_nodes", "Nodes by lifecycle state");
    metrics::describe_histogram!("ramboot_boot_phase_duration_seconds", "Time spent in each boot phase, by profile");
    metrics::describe_histogram!(
        "ramboot_http_request_duration_seconds",
        "Time from a request's arrival to its response's start, by route template and method"
    );
    metrics::describe_histogram!(
        "ramboot_db_group_commit_writers",
        "Writes (script, agent reports, operator changes; not DHCP leases) committed together in one transaction"
    );
    metrics::describe_histogram!("ramboot_db_group_commit_seconds", "Time one group commit took (its fsync)");
    metrics::describe_counter!("ramboot_profile_reloads_total", "Profile directory reloads, by outcome");
    metrics::describe_counter!(
        "ramboot_boot_refusals_total",
        "Boot-path requests refused by the trust rules (wrong address, unknown node, secrets twice, ...), by reason"
    );
    metrics::describe_gauge!(
        "ramboot_bmc_nodes",
        "Nodes with a BMC by their last power check (on, off, unreachable, unauthorized, error)"
    );
    metrics::describe_histogram!(
        "ramboot_bmc_poll_duration_seconds",
        "Time one round of the BMC poller took (every node with a BMC)"
    );
    metrics::describe_gauge!("ramboot_build_info", "Build information (value is always 1)");
}

/// Time each request to a route took until its response began (a download's
/// body streams after), by route template and method: where a storm's requests
/// wait, from the server's side.
pub async fn time_request(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    metrics::histogram!("ramboot_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Time a node spent in `phase` before moving on.
pub fn record_phase(profile: &str, phase: NodeState, ms: i64) {
    let profile = if profile.is_empty() { "(discovery)".to_string() } else { profile.to_string() };
    metrics::histogram!("ramboot_boot_phase_duration_seconds", "phase" => phase.as_str(), "profile" => profile)
        .record(ms.max(0) as f64 / 1000.0);
}

pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    let handle = handle();
    if let Ok(counts) = state.store.count_by_state().await {
        for s in NodeState::ALL {
            metrics::gauge!("ramboot_nodes", "state" => s.as_str()).set(counts.get(&s).copied().unwrap_or(0) as f64);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
}

/// Count the shared event log's events after id `after` (the last one when the
/// server started, read before it serves, so nothing it could cause is missed),
/// until `cancel`: the event feed hears every server's commits, so these counters
/// are the fleet's.
pub async fn follow_events(store: crate::store::Store, after: i64, cancel: tokio_util::sync::CancellationToken) {
    let mut feed = crate::store::EventFeed::new(&store, after);
    loop {
        let events = tokio::select! {
            _ = cancel.cancelled() => return,
            events = feed.next() => events,
        };
        for e in events {
            metrics::counter!("ramboot_events_total", "kind" => e.kind.as_str()).increment(1);
            if let Some(state) = e.state {
                metrics::counter!("ramboot_node_transitions_total", "state" => state.as_str()).increment(1);
            }
        }
    }
}
