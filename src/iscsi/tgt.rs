//! The tgt back-end: Linux's userspace iSCSI target, driven through `tgtadm`.
//!
//! tgtd needs no kernel configfs, so it runs anywhere (this machine, CI, a container).
//! In production it runs as Debian's `tgt.service`; ramboot then talks to its default
//! control socket. Tests and the lab start their own tgtd with a private control port
//! (`tgtd -f -C N --iscsi portal=ADDR:PORT`), because `/var/run/tgtd` is shared by
//! every network namespace.
//!
//! What to run is decided by pure functions ([`plan`], [`parse_show`]) so it is unit
//! tested without a tgtd; [`Tgt`] only executes the commands.

use super::{valid_chap_secret, valid_iqn, Backend, Export, IscsiError, Lun, Repair, TargetState};
use std::path::PathBuf;
use tokio::process::Command;

/// Parse `tgtadm --op show --mode target`.
pub fn parse_show(text: &str) -> Vec<TargetState> {
    #[derive(PartialEq)]
    enum Section {
        Other,
        Luns,
        Accounts,
        Acl,
    }
    let mut targets: Vec<TargetState> = vec![];
    let mut section = Section::Other;
    let mut lun: Option<u32> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = line.strip_prefix("Target ") {
            if let Some((tid, iqn)) = rest.split_once(": ") {
                if let Ok(tid) = tid.parse() {
                    targets.push(TargetState { tid, iqn: iqn.trim().to_string(), ..Default::default() });
                    section = Section::Other;
                    continue;
                }
            }
        }
        let Some(target) = targets.last_mut() else { continue };
        // Section headers are indented four spaces; their entries eight.
        let indent = line.len() - line.trim_start().len();
        if indent == 4 && trimmed.ends_with(':') {
            section = match trimmed {
                "LUN information:" => Section::Luns,
                "Account information:" => Section::Accounts,
                "ACL information:" => Section::Acl,
                _ => Section::Other,
            };
            continue;
        }
        match section {
            Section::Luns => {
                if let Some(n) = trimmed.strip_prefix("LUN: ") {
                    lun = n.parse().ok();
                } else if let Some(path) = trimmed.strip_prefix("Backing store path: ") {
                    if let Some(number) = lun.filter(|n| *n > 0) {
                        target.luns.push(Lun { number, backing: PathBuf::from(path) });
                    }
                }
            }
            Section::Accounts if indent >= 8 && !trimmed.is_empty() => {
                target.accounts.push(trimmed.trim_end_matches(" (outgoing)").to_string())
            }
            Section::Acl if indent >= 8 && !trimmed.is_empty() => target.initiators.push(trimmed.to_string()),
            _ => {}
        }
    }
    targets
}

/// The `tgtadm` argument lists (after `--lld iscsi`) that bring `current` (the
/// target as it is, if it exists) to `export`, and what they repair.
pub fn plan(export: &Export, current: Option<&TargetState>, free_tid: u32) -> (Vec<Vec<String>>, Repair) {
    let mut cmds: Vec<Vec<String>> = vec![];
    let mut repair = Repair::default();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let tid = match current {
        Some(t) => t.tid,
        None => {
            cmds.push(s(&[
                "--op",
                "new",
                "--mode",
                "target",
                "--tid",
                &free_tid.to_string(),
                "-T",
                &export.target_iqn,
            ]));
            repair.created_target = true;
            free_tid
        }
    };
    let tid_s = tid.to_string();
    let have = current.cloned().unwrap_or_default();
    for lun in &export.luns {
        if !have.luns.iter().any(|l| l.number == lun.number) {
            let backing = lun.backing.display().to_string();
            cmds.push(s(&[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                &tid_s,
                "--lun",
                &lun.number.to_string(),
                "-b",
                &backing,
            ]));
            repair.added_luns.push(lun.number);
        }
    }
    if !have.initiators.contains(&export.initiator_iqn) {
        // By name: `-I` would bind an initiator *address*.
        cmds.push(s(&["--op", "bind", "--mode", "target", "--tid", &tid_s, "--initiator-name", &export.initiator_iqn]));
        repair.bound_initiator = true;
    }
    if !have.accounts.contains(&export.chap.user) {
        // (Re)create the account: a leftover one may carry an old secret.
        cmds.push(s(&["--op", "delete", "--mode", "account", "--user", &export.chap.user]));
        cmds.push(s(&[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            &export.chap.user,
            "--password",
            &export.chap.secret,
        ]));
        cmds.push(s(&["--op", "bind", "--mode", "account", "--tid", &tid_s, "--user", &export.chap.user]));
        if let Some(m) = &export.mutual_chap {
            cmds.push(s(&["--op", "delete", "--mode", "account", "--user", &m.user]));
            cmds.push(s(&["--op", "new", "--mode", "account", "--user", &m.user, "--password", &m.secret]));
            cmds.push(s(&["--op", "bind", "--mode", "account", "--tid", &tid_s, "--user", &m.user, "--outgoing"]));
        }
        repair.bound_account = true;
    }
    (cmds, repair)
}

fn validate(export: &Export) -> Result<(), IscsiError> {
    let invalid = |what, value: &str, rule| IscsiError::Invalid { what, value: value.to_string(), rule };
    for iqn in [&export.target_iqn, &export.initiator_iqn] {
        if !valid_iqn(iqn) {
            return Err(invalid("IQN", iqn, "iqn.yyyy-mm.reversed.domain[:name], lowercase"));
        }
    }
    for chap in std::iter::once(&export.chap).chain(export.mutual_chap.iter()) {
        if !valid_chap_secret(&chap.secret) {
            return Err(invalid("CHAP secret", "(hidden)", "12-16 letters and digits"));
        }
        if chap.user.is_empty() || !chap.user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return Err(invalid("CHAP user", &chap.user, "letters, digits, '-' and '.'"));
        }
    }
    if export.luns.iter().any(|l| l.number == 0) {
        return Err(invalid("LUN", "0", "data LUNs start at 1 (LUN 0 is tgt's controller)"));
    }
    Ok(())
}

/// tgt, reached through `tgtadm` (on a private control port, if given).
#[derive(Debug, Clone, Default)]
pub struct Tgt {
    pub control_port: Option<u16>,
}

impl Tgt {
    async fn tgtadm(&self, args: &[String]) -> Result<String, IscsiError> {
        let mut cmd = Command::new("tgtadm");
        if let Some(port) = self.control_port {
            cmd.args(["-C", &port.to_string()]);
        }
        cmd.args(["--lld", "iscsi"]).args(args);
        // Never show a secret in an error message (or a log line built from one).
        let shown: Vec<&str> = args
            .iter()
            .enumerate()
            .map(|(i, a)| if i > 0 && args[i - 1] == "--password" { "(secret)" } else { a.as_str() })
            .collect();
        let command = format!("tgtadm {}", shown.join(" "));
        let out =
            cmd.output().await.map_err(|e| IscsiError::Command { command: command.clone(), message: e.to_string() })?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(IscsiError::Command { command, message });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn show_args() -> Vec<String> {
        ["--op", "show", "--mode", "target"].map(String::from).to_vec()
    }
}

impl Backend for Tgt {
    async fn ensure_export(&self, export: &Export) -> Result<Repair, IscsiError> {
        validate(export)?;
        let targets = self.list().await?;
        let current = targets.iter().find(|t| t.iqn == export.target_iqn);
        let free_tid = targets.iter().map(|t| t.tid).max().unwrap_or(0) + 1;
        let (cmds, repair) = plan(export, current, free_tid);
        for args in &cmds {
            match self.tgtadm(args).await {
                Ok(_) => {}
                // Deleting an account that does not exist is the expected first case.
                Err(_) if args[1] == "delete" && args[3] == "account" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(repair)
    }

    async fn remove_export(&self, target_iqn: &str) -> Result<bool, IscsiError> {
        let targets = self.list().await?;
        let Some(target) = targets.iter().find(|t| t.iqn == target_iqn) else { return Ok(false) };
        let tid = target.tid.to_string();
        self.tgtadm(&["--op", "delete", "--mode", "target", "--tid", &tid, "--force"].map(String::from)).await?;
        for user in &target.accounts {
            // Accounts are per node: with its target gone, nothing else uses them.
            let _ = self.tgtadm(&["--op", "delete", "--mode", "account", "--user", user].map(String::from)).await;
        }
        Ok(true)
    }

    async fn list(&self) -> Result<Vec<TargetState>, IscsiError> {
        Ok(parse_show(&self.tgtadm(&Self::show_args()).await?))
    }

    /// tgt sizes a LUN when it is created and has no update for it: re-create the LUN
    /// over the same file. I/O in flight on that LUN is retried by the initiator.
    async fn refresh_lun(&self, target_iqn: &str, lun: &Lun) -> Result<(), IscsiError> {
        let targets = self.list().await?;
        let Some(target) = targets.iter().find(|t| t.iqn == target_iqn) else { return Ok(()) };
        let (tid, number) = (target.tid.to_string(), lun.number.to_string());
        let backing = lun.backing.display().to_string();
        self.tgtadm(&["--op", "delete", "--mode", "logicalunit", "--tid", &tid, "--lun", &number].map(String::from))
            .await?;
        self.tgtadm(
            &["--op", "new", "--mode", "logicalunit", "--tid", &tid, "--lun", &number, "-b", &backing]
                .map(String::from),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tgtadm --op show --mode target` from tgt 1.0.85 (Debian bookworm).
    const SHOW: &str = "Target 1: iqn.2026-11.io.ramboot:node-1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Backing store type: null
            Backing store path: None
        LUN: 1
            Type: disk
            Size: 67 MB, Block size: 512
            Backing store type: rdwr
            Backing store path: /var/lib/ramboot/volumes/node-1-vm.img
            Backing store flags: 
    Account information:
        node1
        ramboot (outgoing)
    ACL information:
        iqn.2026-11.io.ramboot:init-1
Target 2: iqn.2026-11.io.ramboot:node-2
    System information:
        Driver: iscsi
    LUN information:
        LUN: 0
            Backing store path: None
    Account information:
    ACL information:
";

    fn export() -> Export {
        Export {
            target_iqn: "iqn.2026-11.io.ramboot:node-1".into(),
            initiator_iqn: "iqn.2026-11.io.ramboot:init-1".into(),
            chap: crate::iscsi::Chap { user: "node1".into(), secret: "abcdefghijkl".into() },
            mutual_chap: None,
            luns: vec![
                Lun { number: 1, backing: "/var/lib/ramboot/volumes/node-1-vm.img".into() },
                Lun { number: 2, backing: "/var/lib/ramboot/volumes/node-1-logs.img".into() },
            ],
        }
    }

    #[test]
    fn show_output_parses_into_targets() {
        let targets = parse_show(SHOW);
        assert_eq!(targets.len(), 2);
        let t = &targets[0];
        assert_eq!((t.tid, t.iqn.as_str()), (1, "iqn.2026-11.io.ramboot:node-1"));
        assert_eq!(t.luns, vec![Lun { number: 1, backing: "/var/lib/ramboot/volumes/node-1-vm.img".into() }]);
        assert_eq!(t.accounts, ["node1", "ramboot"]);
        assert_eq!(t.initiators, ["iqn.2026-11.io.ramboot:init-1"]);
        assert!(targets[1].luns.is_empty() && targets[1].accounts.is_empty() && targets[1].initiators.is_empty());
        assert!(parse_show("").is_empty());
    }

    #[test]
    fn a_missing_target_is_built_from_scratch() {
        let (cmds, repair) = plan(&export(), None, 3);
        assert!(repair.created_target && repair.bound_initiator && repair.bound_account);
        assert_eq!(repair.added_luns, [1, 2]);
        assert_eq!(cmds[0], ["--op", "new", "--mode", "target", "--tid", "3", "-T", "iqn.2026-11.io.ramboot:node-1"]);
        assert!(cmds.iter().any(|c| c.contains(&"--initiator-name".to_string())), "ACL by name, not address");
    }

    #[test]
    fn an_up_to_date_target_needs_nothing_and_drift_only_the_difference() {
        let current = &parse_show(SHOW)[0];
        let (cmds, repair) = plan(&export(), Some(current), 9);
        assert_eq!(repair.added_luns, [2], "only the missing LUN");
        assert!(!repair.created_target && !repair.bound_initiator && !repair.bound_account);
        assert_eq!(cmds.len(), 1);
        let mut one_lun = export();
        one_lun.luns.truncate(1);
        let (cmds, repair) = plan(&one_lun, Some(current), 9);
        assert!(cmds.is_empty() && repair.is_noop(), "{cmds:?}");
    }

    #[test]
    fn bad_exports_are_refused_before_any_command() {
        let mut e = export();
        e.initiator_iqn = "not-an-iqn".into();
        assert!(validate(&e).is_err());
        let mut e = export();
        e.chap.secret = "short".into();
        let err = validate(&e).unwrap_err().to_string();
        assert!(!err.contains("short"), "secrets never appear in errors: {err}");
        let mut e = export();
        e.luns[0].number = 0;
        assert!(validate(&e).is_err());
    }
}
