//! Child processes the lab started, stopped by PID: SIGTERM, then SIGKILL after a
//! grace period. A [`Proc`] does that when dropped, so a failure or a Ctrl-C that
//! unwinds the lab never leaves its QEMU, server or tgtd behind. Processes the lab
//! did not start are never signalled.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long a dropped [`Proc`] gets between SIGTERM and SIGKILL.
pub const DROP_GRACE: Duration = Duration::from_secs(3);

/// SIGTERM, then SIGKILL if the process has not exited after `grace`; reaps it.
/// Returns how it ended (`None` if it could not be reaped).
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    if let Some(status) = wait_until(child, Instant::now() + grace) {
        return Some(status);
    }
    let _ = kill(pid, Signal::SIGKILL);
    child.wait().ok()
}

/// Poll `child` until it exits or `deadline` passes.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A named child process, terminated (see [`terminate`]) when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    pub fn new(name: impl Into<String>, child: Child) -> Proc {
        Proc { name: name.into(), child }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// How it ended, if it has.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait up to `timeout` for it to exit on its own.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(&mut self.child, Instant::now() + timeout)
    }

    /// SIGKILL at once (a crash, not a shutdown) and reap it.
    pub fn kill(mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// SIGTERM, SIGKILL after `grace` (saying so); how it ended.
    pub fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        self.stop_in_place(grace)
    }

    fn stop_in_place(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        if let Some(status) = wait_until(&mut self.child, Instant::now() + grace) {
            return Some(status);
        }
        eprintln!("{} did not stop on SIGTERM within {grace:?}; killing it", self.name);
        terminate(&mut self.child, Duration::ZERO)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop_in_place(DROP_GRACE);
    }
}
