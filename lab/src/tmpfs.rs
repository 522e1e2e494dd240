//! A tmpfs of a chosen size for one test: a file system whose free space (and
//! whose running out of it) the test decides, not the machine it runs on.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A tmpfs of `size` mounted on a fresh temp dir, unmounted on drop (also when an
/// assertion fails).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}: {status}", dir.path().display());
        Tmpfs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SQLite's connections close on their own threads, a moment after the pool
        // says it is closed (or never, on a panic): retry, then detach lazily so the
        // mount goes away with its last open file.
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(self.dir.path()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
        };
        for _ in 0..50 {
            if umount(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !umount(true) {
            eprintln!("could not unmount the test tmpfs at {}", self.dir.path().display());
        }
    }
}
