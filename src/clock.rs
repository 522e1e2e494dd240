//! The server's one wall clock. The pure cores (`ramboot-core`) never read it: they
//! take `now` as an argument, so their tests run on any time they like. The I/O
//! layers read it here, once per request or datagram, and pass it in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the store's timestamps.
pub fn now_ms() -> i64 {
    since_epoch().as_millis() as i64
}

/// Seconds since the Unix epoch: DHCP lease times.
pub fn now_secs() -> u64 {
    since_epoch().as_secs()
}

fn since_epoch() -> std::time::Duration {
    // A clock before 1970 is a broken host; 0 keeps every comparison defined.
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}
