//! systemd's service notification protocol (sd_notify(3)), without libsystemd:
//! `READY=1` once DHCP, TFTP and HTTP are listening (for `Type=notify`),
//! `WATCHDOG=1` pings at half of `WatchdogSec=` while the runtime is alive, and
//! `STOPPING=1` at shutdown. Outside systemd (`NOTIFY_SOCKET` unset) every call
//! does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Where systemd listens: a path, or an abstract socket (`@name`).
fn socket_address() -> Option<String> {
    std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty())
}

/// Send `state` (newline-separated `KEY=VALUE`s) to systemd; false outside it or
/// when the datagram could not be sent.
pub fn notify(state: &str) -> bool {
    let Some(address) = socket_address() else { return false };
    let sent = (|| {
        let socket = UnixDatagram::unbound()?;
        match address.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &address),
        }
    })();
    match sent {
        Ok(_) => {
            debug!(state, "told systemd");
            true
        }
        Err(e) => {
            warn!(error = %e, socket = %address, "could not notify systemd");
            false
        }
    }
}

/// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), if it
/// is meant for this process (`WATCHDOG_PID`, when set, is ours).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

pub fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(own_pid)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec))
}

/// Ping the watchdog at half its interval until `cancel`. The pings come from the
/// main runtime, so a server whose runtime is stuck stops pinging and systemd
/// restarts it.
pub async fn keep_watchdog_fed(interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                notify("WATCHDOG=1");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_ours_only_when_systemd_says_so() {
        assert_eq!(watchdog_interval_from(Some("30000000"), None, 7), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("7"), 7), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None, "another process's");
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
    }
}
