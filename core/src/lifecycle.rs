//! The node lifecycle's timing rules: phase timeouts and the retry back-off after
//! failed boots. (Which report may move a node where is `node::NodeState`.)

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub booting_timeout: Duration,
    pub stage1_timeout: Duration,
    pub loading_timeout: Duration,
    pub handoff_timeout: Duration,
    /// Consecutive failed boots after which the node is no longer retried.
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

impl Lifecycle {
    /// How long a node that failed `failures` times in a row waits before retrying
    /// (exponential), or `None` once it has used up its retries.
    pub fn retry_delay(&self, failures: u32) -> Option<Duration> {
        if failures == 0 {
            return Some(Duration::ZERO);
        }
        if failures > self.max_retries {
            return None;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        Some(self.retry_backoff.saturating_mul(factor).min(self.retry_backoff_max))
    }
}
