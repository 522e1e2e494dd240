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

use super::{valid_chap_secret, valid_iqn, AclEntry, Backend, Chap, Export, IscsiError, Lun, Repair, TargetState};
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
            Section::Accounts if indent >= 8 && !trimmed.is_empty() => match trimmed.strip_suffix(" (outgoing)") {
                Some(user) => target.outgoing_account = Some(user.to_string()),
                None => target.accounts.push(trimmed.to_string()),
            },
            Section::Acl if indent >= 8 && !trimmed.is_empty() => target.initiators.push(trimmed.to_string()),
            _ => {}
        }
    }
    targets
}

/// The `tgtadm` argument lists (after `--lld iscsi`) that bring `current` (the
/// target as it is, if it exists) to `export`, and what they repair.
///
/// Removals come before additions, so the target never holds more than `export`
/// allows, not even for a moment: a LUN is the same only if both its number and
/// its backing file are (a number reused for another volume is deleted, then added
/// over the right file), and a stale ACL entry (an old address) is unbound before
/// the new one is bound.
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

    for lun in have.luns.iter().filter(|l| !export.luns.contains(l)) {
        cmds.push(s(&["--op", "delete", "--mode", "logicalunit", "--tid", &tid_s, "--lun", &lun.number.to_string()]));
        repair.removed_luns.push(lun.number);
    }
    for lun in export.luns.iter().filter(|l| !have.luns.contains(l)) {
        cmds.push(new_lun(&tid_s, lun));
        repair.added_luns.push(lun.number);
    }

    let acl = export.acl();
    for entry in have.initiators.iter().map(|e| AclEntry::parse(e)).filter(|e| !acl.contains(e)) {
        cmds.push(acl_command("unbind", &tid_s, &entry));
        repair.unbound_initiators.push(entry.as_str().to_string());
    }
    for entry in acl.iter().filter(|e| !have.initiators.iter().any(|h| h == e.as_str())) {
        cmds.push(acl_command("bind", &tid_s, entry));
        repair.bound_initiator = true;
    }

    for user in have.accounts.iter().filter(|u| **u != export.chap.user) {
        cmds.push(s(&["--op", "unbind", "--mode", "account", "--tid", &tid_s, "--user", user]));
        repair.unbound_accounts.push(user.clone());
    }
    if !have.accounts.contains(&export.chap.user) {
        cmds.extend(new_account(&export.chap));
        cmds.push(s(&["--op", "bind", "--mode", "account", "--tid", &tid_s, "--user", &export.chap.user]));
        repair.bound_account = true;
    }
    let want_out = export.mutual_chap.as_ref();
    if let Some(out) = have.outgoing_account.as_ref().filter(|u| want_out.is_none_or(|m| m.user != **u)) {
        cmds.push(s(&["--op", "unbind", "--mode", "account", "--tid", &tid_s, "--user", out, "--outgoing"]));
        // Accounts are global in tgt: one left behind would keep its secret.
        cmds.push(s(&["--op", "delete", "--mode", "account", "--user", out]));
        repair.mutual_chap = Some(false);
    }
    if let Some(m) = want_out.filter(|m| have.outgoing_account.as_deref() != Some(m.user.as_str())) {
        cmds.extend(new_account(m));
        cmds.push(s(&["--op", "bind", "--mode", "account", "--tid", &tid_s, "--user", &m.user, "--outgoing"]));
        repair.mutual_chap = Some(true);
    }
    (cmds, repair)
}

fn new_lun(tid: &str, lun: &Lun) -> Vec<String> {
    let (number, backing) = (lun.number.to_string(), lun.backing.display().to_string());
    ["--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", &number, "-b", &backing].map(String::from).to_vec()
}

/// (Re)create an account: a leftover one of the same name may carry an old secret.
fn new_account(chap: &Chap) -> [Vec<String>; 2] {
    [
        ["--op", "delete", "--mode", "account", "--user", &chap.user].map(String::from).to_vec(),
        ["--op", "new", "--mode", "account", "--user", &chap.user, "--password", &chap.secret]
            .map(String::from)
            .to_vec(),
    ]
}

fn acl_command(op: &str, tid: &str, entry: &AclEntry) -> Vec<String> {
    let flag = match entry {
        AclEntry::Name(_) => "--initiator-name",
        AclEntry::Address(_) => "--initiator-address",
    };
    ["--op", op, "--mode", "target", "--tid", tid, flag, entry.as_str()].map(String::from).to_vec()
}

/// The commands that make LUN `lun.number` of `target` serve `lun.backing` at its
/// current size: tgt sizes a LUN when it is created and cannot resize one, so the
/// LUN is deleted (if there is one, whatever file it serves) and created again.
pub fn refresh_plan(target: &TargetState, lun: &Lun) -> Vec<Vec<String>> {
    let tid = target.tid.to_string();
    let mut cmds = vec![];
    if target.luns.iter().any(|l| l.number == lun.number) {
        cmds.push(
            ["--op", "delete", "--mode", "logicalunit", "--tid", &tid, "--lun", &lun.number.to_string()]
                .map(String::from)
                .to_vec(),
        );
    }
    cmds.push(new_lun(&tid, lun));
    cmds
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
    if let Some(m) = &export.mutual_chap {
        // RFC 7143 §12.1.3: each direction has its own secret.
        if m.secret == export.chap.secret || m.user == export.chap.user {
            return Err(invalid("mutual CHAP", &m.user, "user and secret differ from the initiator's"));
        }
    }
    if export.luns.iter().any(|l| l.number == 0) {
        return Err(invalid("LUN", "0", "data LUNs start at 1 (LUN 0 is tgt's controller)"));
    }
    let mut numbers: Vec<u32> = export.luns.iter().map(|l| l.number).collect();
    numbers.sort_unstable();
    if numbers.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid("LUN", "(duplicate)", "one volume per LUN number"));
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
        for user in target.accounts.iter().chain(target.outgoing_account.iter()) {
            // Accounts are per node: with its target gone, nothing else uses them.
            let _ = self.tgtadm(&["--op", "delete", "--mode", "account", "--user", user].map(String::from)).await;
        }
        Ok(true)
    }

    async fn list(&self) -> Result<Vec<TargetState>, IscsiError> {
        Ok(parse_show(&self.tgtadm(&Self::show_args()).await?))
    }

    /// See [`refresh_plan`]. A target that is gone is left to `ensure_export`.
    async fn refresh_lun(&self, target_iqn: &str, lun: &Lun) -> Result<(), IscsiError> {
        let targets = self.list().await?;
        let Some(target) = targets.iter().find(|t| t.iqn == target_iqn) else { return Ok(()) };
        for cmd in refresh_plan(target, lun) {
            self.tgtadm(&cmd).await?;
        }
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

    const VM: &str = "/var/lib/ramboot/volumes/node-1-vm.img";

    fn lun(number: u32, backing: &str) -> Lun {
        Lun { number, backing: backing.into() }
    }

    fn export() -> Export {
        Export {
            target_iqn: "iqn.2026-11.io.ramboot:node-1".into(),
            initiator_iqn: "iqn.2026-11.io.ramboot:init-1".into(),
            initiator_address: None,
            chap: Chap { user: "node1".into(), secret: "abcdefghijkl".into() },
            mutual_chap: Some(Chap { user: "ramboot".into(), secret: "mnopqrstuvwx".into() }),
            luns: vec![lun(1, VM), lun(2, "/var/lib/ramboot/volumes/node-1-logs.img")],
        }
    }

    fn position(cmds: &[Vec<String>], words: &[&str]) -> usize {
        cmds.iter()
            .position(|c| words.iter().all(|w| c.iter().any(|a| a == w)))
            .unwrap_or_else(|| panic!("no command with {words:?} in {cmds:?}"))
    }

    #[test]
    fn show_output_parses_into_targets() {
        let targets = parse_show(SHOW);
        assert_eq!(targets.len(), 2);
        let t = &targets[0];
        assert_eq!((t.tid, t.iqn.as_str()), (1, "iqn.2026-11.io.ramboot:node-1"));
        assert_eq!(t.luns, vec![lun(1, VM)]);
        assert_eq!(t.accounts, ["node1"]);
        assert_eq!(t.outgoing_account.as_deref(), Some("ramboot"));
        assert_eq!(t.initiators, ["iqn.2026-11.io.ramboot:init-1"]);
        assert!(targets[1].luns.is_empty() && targets[1].accounts.is_empty() && targets[1].initiators.is_empty());
        assert!(targets[1].outgoing_account.is_none());
        assert!(parse_show("").is_empty());
    }

    #[test]
    fn acl_entries_are_names_or_addresses() {
        for address in ["10.0.0.5", "10.0.0.0/24", "ALL", "fe80::1", "[fe80::1]"] {
            assert_eq!(AclEntry::parse(address), AclEntry::Address(address.into()), "{address}");
        }
        let iqn = "iqn.2026-11.io.ramboot:node-1";
        assert_eq!(AclEntry::parse(iqn), AclEntry::Name(iqn.into()));
    }

    #[test]
    fn a_missing_target_is_built_from_scratch() {
        let (cmds, repair) = plan(&export(), None, 3);
        assert!(repair.created_target && repair.bound_initiator && repair.bound_account);
        assert_eq!(repair.mutual_chap, Some(true));
        assert_eq!(repair.added_luns, [1, 2]);
        assert_eq!(cmds[0], ["--op", "new", "--mode", "target", "--tid", "3", "-T", "iqn.2026-11.io.ramboot:node-1"]);
        position(&cmds, &["bind", "--initiator-name", "iqn.2026-11.io.ramboot:init-1"]);
        position(&cmds, &["bind", "account", "ramboot", "--outgoing"]);
    }

    #[test]
    fn an_up_to_date_target_needs_nothing_and_drift_only_the_difference() {
        let current = &parse_show(SHOW)[0];
        let (cmds, repair) = plan(&export(), Some(current), 9);
        assert_eq!(repair.added_luns, [2], "only the missing LUN");
        assert!(!repair.created_target && !repair.bound_initiator && !repair.bound_account);
        assert_eq!((repair.mutual_chap, cmds.len()), (None, 1), "{cmds:?}");
        let mut one_lun = export();
        one_lun.luns.truncate(1);
        let (cmds, repair) = plan(&one_lun, Some(current), 9);
        assert!(cmds.is_empty() && repair.is_noop(), "{cmds:?}");
    }

    /// The bug this order fixes: LUNs compared by number alone, stale ones never
    /// removed. Volumes A (1) and B (2); B detached (the target keeps LUN 2 over B's
    /// file); C attached as the next free number, 2: "LUN 2 exists", so the node wrote
    /// into B's file, which may by then be another node's volume.
    #[test]
    fn luns_match_by_number_and_file_and_stale_ones_go_first() {
        let (a, b, c) = ("/v/a.img", "/v/b.img", "/v/c.img");
        let current = TargetState { tid: 4, luns: vec![lun(1, a), lun(2, b)], ..Default::default() };
        let mut e = export();
        e.luns = vec![lun(1, a), lun(2, c)];
        let (cmds, repair) = plan(&e, Some(&current), 9);
        assert_eq!((repair.removed_luns.as_slice(), repair.added_luns.as_slice()), (&[2][..], &[2][..]));
        let delete = position(&cmds, &["delete", "logicalunit", "2"]);
        let add = position(&cmds, &["new", "logicalunit", c]);
        assert!(delete < add, "{cmds:?}");
        assert!(!cmds.iter().any(|c| c.iter().any(|a| a == b && c[1] == "new")), "B's file is never added: {cmds:?}");

        // A detached, C attached as 3: LUN 1 (A's file) goes, before C is added.
        e.luns = vec![lun(2, b), lun(3, c)];
        let (cmds, repair) = plan(&e, Some(&current), 9);
        assert_eq!((repair.removed_luns.as_slice(), repair.added_luns.as_slice()), (&[1][..], &[3][..]));
        assert!(position(&cmds, &["delete", "logicalunit", "1"]) < position(&cmds, &["new", "logicalunit", c]));

        // Every LUN gone: every LUN deleted.
        e.luns.clear();
        let (_, repair) = plan(&e, Some(&current), 9);
        assert_eq!(repair.removed_luns, [1, 2]);
    }

    #[test]
    fn the_acl_holds_the_nodes_address_alone_once_known() {
        let mut e = export();
        e.initiator_address = Some("10.0.0.9".parse().unwrap());
        // The target as an earlier boot left it: the IQN and an old address.
        let mut current = parse_show(SHOW).remove(0);
        current.initiators.push("10.0.0.5".into());
        let (cmds, repair) = plan(&e, Some(&current), 9);
        assert_eq!(repair.unbound_initiators, ["iqn.2026-11.io.ramboot:init-1", "10.0.0.5"]);
        assert!(repair.bound_initiator);
        let bind = position(&cmds, &["bind", "--initiator-address", "10.0.0.9"]);
        assert!(position(&cmds, &["unbind", "--initiator-name", "iqn.2026-11.io.ramboot:init-1"]) < bind);
        assert!(position(&cmds, &["unbind", "--initiator-address", "10.0.0.5"]) < bind);

        current.initiators = vec!["10.0.0.9".into()];
        let (cmds, repair) = plan(&e, Some(&current), 9);
        assert!(repair.unbound_initiators.is_empty() && !repair.bound_initiator, "{cmds:?}");
    }

    #[test]
    fn accounts_follow_the_export() {
        let current = &parse_show(SHOW)[0];
        let mut e = export();
        e.mutual_chap = None;
        let (cmds, repair) = plan(&e, Some(current), 9);
        assert_eq!(repair.mutual_chap, Some(false));
        let unbind = position(&cmds, &["unbind", "account", "ramboot", "--outgoing"]);
        assert!(unbind < position(&cmds, &["delete", "account", "ramboot"]), "{cmds:?}");

        let mut stray = current.clone();
        stray.accounts.push("someone".into());
        let (cmds, repair) = plan(&export(), Some(&stray), 9);
        assert_eq!(repair.unbound_accounts, ["someone"]);
        position(&cmds, &["unbind", "account", "someone"]);

        let mut renamed = export();
        renamed.mutual_chap = Some(Chap { user: "target-1".into(), secret: "mnopqrstuvwx".into() });
        let (cmds, repair) = plan(&renamed, Some(current), 9);
        assert_eq!(repair.mutual_chap, Some(true));
        assert!(
            position(&cmds, &["delete", "account", "ramboot"])
                < position(&cmds, &["bind", "account", "target-1", "--outgoing"])
        );
    }

    #[test]
    fn refreshing_a_lun_puts_the_right_file_behind_its_number() {
        let current = TargetState { tid: 2, luns: vec![lun(1, "/v/old.img")], ..Default::default() };
        let cmds = refresh_plan(&current, &lun(1, "/v/a.img"));
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0], ["--op", "delete", "--mode", "logicalunit", "--tid", "2", "--lun", "1"]);
        assert_eq!(cmds[1], ["--op", "new", "--mode", "logicalunit", "--tid", "2", "--lun", "1", "-b", "/v/a.img"]);
        assert_eq!(refresh_plan(&current, &lun(2, "/v/b.img")).len(), 1, "nothing to delete at a free number");
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
        let mut e = export();
        e.luns[1].number = 1;
        assert!(validate(&e).is_err(), "one file per LUN number");
        let mut e = export();
        e.mutual_chap = Some(e.chap.clone());
        let err = validate(&e).unwrap_err().to_string();
        assert!(!err.contains("abcdefghijkl"), "{err}");
        assert!(validate(&export()).is_ok());
    }
}
