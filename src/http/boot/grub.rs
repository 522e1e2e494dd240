//! The signed chain's boot configuration (`boot_chain: signed`, for Secure Boot).
//!
//! DHCP hands such a node Microsoft-signed shim; shim loads Debian's signed
//! network GRUB from beside it, and that GRUB, built with the prefix `/grub` and
//! only TFTP (Debian's `grubnetx64.efi` has no `http` module, and under Secure
//! Boot it loads none), reads `(tftp,<server>)/grub/grub.cfg`. Everything it asks
//! for is served here, over TFTP, none of it from `ipxe/`:
//!
//! - `grub/grub.cfg`: the same for every node: it asks for the node's own config
//!   by the MAC GRUB booted from (`$net_default_mac`).
//! - `grub/node-<mac>.cfg`: the node's config, rendered as `/boot.ipxe` renders its
//!   script, by the same code (`start_boot`): the same trust rules (a node DHCP
//!   knows, asking from the address DHCP bound to its MAC), the planner's decision,
//!   a fresh per-boot token on the kernel command line. A refusal is a config that
//!   says why and reboots later.
//! - `artifacts/sha256/<digest>/<name>`: stage one's kernel and initrd, from the
//!   content-addressed store, as over HTTP.
//! - GRUB's and shim's optional probes (`grub/<platform>/*.lst`, `*.mod`,
//!   shim's `revocations_*.efi`): answered "not found" quietly.
//!
//! GRUB under shim verifies the kernel's signature (shim_lock); the initrd and the
//! image are verified by ramboot's own SHA-256 checks, not by Secure Boot.

use super::{start_boot, AppState, Started, StartedBoot, ASK_AGAIN_SECS};
use crate::tftp::{Generated, GeneratedFiles, GeneratedFuture};
use askama::Template;
use ramboot_core::node::MacAddr;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the signed chain's node config is called in logs and the timeline.
pub const GRUB_CONFIG: &str = "GRUB config";

/// The config GRUB reads first (its built-in prefix is `/grub`).
pub const BOOTSTRAP_NAME: &str = "grub/grub.cfg";
/// A node's own config: `grub/node-<mac>.cfg`.
const NODE_PREFIX: &str = "grub/node-";

/// The same for every node: GRUB names the MAC it booted from.
const BOOTSTRAP: &str = "\
# ramboot: the signed chain's first config, the same for every node.
if [ -z \"$net_default_mac\" ]; then
  echo 'ramboot: GRUB found no network interface it booted from; rebooting in 60 seconds'
  sleep 60
  reboot
fi
configfile $prefix/node-${net_default_mac}.cfg
# Only when that config could not be read (a busy or unreachable server): GRUB
# would otherwise wait at its prompt for ever.
echo 'ramboot: could not read the config of this node; rebooting in 30 seconds'
sleep 30
reboot
";

mod filters {
    /// One GRUB word: as it is when only safe characters, else single-quoted (a
    /// quote inside closes, escapes and reopens), so no value can add a command or
    /// expand a variable.
    pub fn grub<T: std::fmt::Display>(value: T, _: &dyn askama::Values) -> askama::Result<String> {
        Ok(super::grub_word(&value.to_string()))
    }
}

pub(crate) fn grub_word(value: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "._,:=/+-@()".contains(c);
    if !value.is_empty() && value.chars().all(safe) {
        return value.to_string();
    }
    // Control characters never reach GRUB's console or parser.
    let printable: String = value.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    format!("'{}'", printable.replace('\'', "'\\''"))
}

/// One server's stage one, as GRUB names the files: over TFTP on its host.
pub struct GrubSource {
    /// What the console shows before this server is tried.
    pub announce: String,
    pub kernel: String,
    pub initrd: String,
}

#[derive(Template)]
#[template(path = "boot.grub", escape = "none")]
pub struct GrubConfig<'a> {
    pub node_id: i64,
    pub boot_id: i64,
    pub mac: MacAddr,
    pub profile: &'a str,
    /// The console's first line: who boots what.
    pub intro: String,
    pub sources: Vec<GrubSource>,
    pub args: Vec<String>,
    /// The console's line when every server failed.
    pub give_up: String,
    pub retry_secs: u32,
}

#[derive(Template)]
#[template(path = "refuse.grub", escape = "none")]
pub struct RefuseGrub {
    pub line: String,
    pub retry_secs: u32,
}

/// The TFTP host of a server's base URL (`http://host:port` → `host`); `None` for
/// a URL GRUB cannot reach over TFTP.
fn tftp_host(base: &str) -> Option<&str> {
    let rest = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        // An IPv6 literal keeps its brackets: GRUB reads `(tftp,[addr])`.
        Some(v6) => &authority[..v6.find(']')? + 2],
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// Each server's stage one over TFTP, this server first, and the arguments that
/// name the servers for the agent (as in the iPXE script).
fn grub_sources(boot: &StartedBoot) -> Vec<GrubSource> {
    boot.bases
        .iter()
        .filter_map(|base| {
            let host = tftp_host(base)?;
            let at = |digest: &str, name: &str| format!("(tftp,{host})/artifacts/sha256/{digest}/{name}");
            Some(GrubSource {
                announce: format!("ramboot: loading stage one from {base}"),
                kernel: at(&boot.stage1.kernel_digest, "vmlinuz"),
                initrd: at(&boot.stage1.initrd_digest, "initrd.img"),
            })
        })
        .collect()
}

/// The rendered config for a started boot.
pub(crate) fn render_boot(boot: StartedBoot, mac: MacAddr) -> Result<String, askama::Error> {
    let sources = grub_sources(&boot);
    GrubConfig {
        node_id: boot.node_id,
        boot_id: boot.boot_id,
        mac,
        profile: &boot.profile,
        intro: format!(
            "ramboot: {} is booting profile {} (stage one {})",
            boot.hostname, boot.profile, boot.stage1.name
        ),
        give_up: format!("ramboot: no ramboot server could load stage one ({} tried)", sources.len()),
        sources,
        args: boot.args,
        retry_secs: ASK_AGAIN_SECS,
    }
    .render()
}

pub(crate) fn render_refusal(
    mac: MacAddr,
    reason: &str,
    retry_after: Option<Duration>,
) -> Result<String, askama::Error> {
    RefuseGrub { line: format!("ramboot: not booting {mac}: {reason}"), retry_secs: super::retry_secs(retry_after) }
        .render()
}

/// The node's config for a request for `grub/node-<mac>.cfg` from `source`.
async fn node_config(state: AppState, mac: MacAddr, source: IpAddr) -> Result<Generated, String> {
    let started = start_boot(&state, mac, source, GRUB_CONFIG).await.map_err(|e| e.message)?;
    let text = match started {
        Started::Boot(boot) => render_boot(*boot, mac),
        Started::Refused(r) => render_refusal(mac, &r.reason, r.retry_after),
    }
    .map_err(|e| format!("rendering the GRUB config: {e}"))?;
    Ok(Generated::Bytes(Arc::from(text.into_bytes())))
}

/// What ramboot's TFTP server serves for the signed chain besides `ipxe/`.
pub struct SignedChainFiles {
    state: AppState,
    /// The runtime the store lives on: renders run there, not on TFTP's own.
    runtime: tokio::runtime::Handle,
}

impl SignedChainFiles {
    pub fn new(state: AppState, runtime: tokio::runtime::Handle) -> SignedChainFiles {
        SignedChainFiles { state, runtime }
    }
}

/// Names shim and GRUB try and do without: not found, not worth a warning.
fn is_optional_probe(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    (name.starts_with("grub/") && (file.ends_with(".lst") || file.ends_with(".mod") || file == "grub.cfg"))
        || (file.starts_with("revocations_") && file.ends_with(".efi"))
        || (file.starts_with("shim_certificate") && file.ends_with(".efi"))
}

impl GeneratedFiles for SignedChainFiles {
    fn open(&self, name: &str, client: IpAddr) -> Option<GeneratedFuture> {
        // GRUB asks for `/grub/...`; shim for names beside itself.
        let name = name.trim_start_matches('/');
        if name == BOOTSTRAP_NAME {
            return Some(Box::pin(async { Ok(Generated::Bytes(Arc::from(BOOTSTRAP.as_bytes()))) }));
        }
        if let Some(mac) = name.strip_prefix(NODE_PREFIX).and_then(|rest| rest.strip_suffix(".cfg")) {
            let Ok(mac) = mac.parse::<MacAddr>() else {
                let message = format!("{name}: not a MAC address");
                return Some(Box::pin(async move { Err(message) }));
            };
            let source = match client {
                IpAddr::V6(v6) => v6.to_canonical(),
                v4 => v4,
            };
            let render = self.runtime.spawn(node_config(self.state.clone(), mac, source));
            return Some(Box::pin(async move { render.await.map_err(|e| format!("GRUB config task: {e}"))? }));
        }
        if name.starts_with("artifacts/") {
            let found = super::super::artifacts::digest_in_path(&format!("/{name}"))
                .map(|digest| self.state.images.blob_path(&digest))
                .filter(|path| path.is_file());
            return Some(Box::pin(async move { found.map(Generated::File).ok_or_else(|| "no such artifact".into()) }));
        }
        if is_optional_probe(name) {
            return Some(Box::pin(async { Err("not served (an optional file)".into()) }));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_cannot_add_commands_or_expand_variables() {
        assert_eq!(grub_word("console=ttyS0,115200n8"), "console=ttyS0,115200n8");
        assert_eq!(grub_word("a b"), "'a b'");
        assert_eq!(grub_word("x; reboot"), "'x; reboot'");
        assert_eq!(grub_word("$prefix"), "'$prefix'");
        assert_eq!(grub_word("it's"), "'it'\\''s'");
        assert_eq!(grub_word("line\nbreak"), "'line?break'");
        assert_eq!(grub_word(""), "''");
    }

    #[test]
    fn tftp_hosts_of_base_urls() {
        assert_eq!(tftp_host("http://10.213.0.1:8080"), Some("10.213.0.1"));
        assert_eq!(tftp_host("http://boot.example/"), Some("boot.example"));
        assert_eq!(tftp_host("http://[fd00::1]:8080"), Some("[fd00::1]"));
        assert_eq!(tftp_host("ftp://x"), None);
    }

    #[test]
    fn optional_probes_are_recognised() {
        for name in ["grub/x86_64-efi/command.lst", "grub/x86_64-efi/http.mod", "grub/x86_64-efi/grub.cfg"] {
            assert!(is_optional_probe(name), "{name}");
        }
        for name in ["revocations_sbat.efi", "shim_certificate_0.efi"] {
            assert!(is_optional_probe(name), "{name}");
        }
        for name in ["grubx64.efi", "shimx64.efi", "snponly.efi", "grub.cfg"] {
            assert!(!is_optional_probe(name), "{name}");
        }
    }
}
