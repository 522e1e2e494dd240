//! Rows, manifests and profiles into the API's own types (`ramboot_api`).
//!
//! The server's types describe storage and files; `ramboot_api` describes the
//! contract. Each conversion destructures its source completely, so a new column or
//! field fails to compile here until someone decides whether the API shows it.

use crate::images::{Artifact, ImageKind, Manifest};
use crate::profiles::LoadedProfile;
use crate::store::{Actor, AuditRecord, Boot, Event, Lease, Lease6, Node, Role, TokenInfo, Volume};
use crate::yaml::SourceError;
use ramboot_api as api;

/// `From` for a view with the same fields, each moved (or `into`ed) across. The
/// destructuring names every field, so a new one in the source fails to compile here.
impl From<Actor> for api::Actor {
    fn from(actor: Actor) -> Self {
        match actor {
            Actor::Token { name } => api::Actor::Token { name },
            Actor::File { path, revision } => api::Actor::File { path, revision },
            Actor::Server { name } => api::Actor::Server { name },
        }
    }
}

macro_rules! same_fields {
    ($from:path => $to:path { $($field:ident),* $(,)? }) => {
        impl From<$from> for $to {
            fn from(value: $from) -> Self {
                let $from { $($field),* } = value;
                Self { $($field: $field.into()),* }
            }
        }
    };
}

same_fields!(Node => api::Node {
    id, mac, hostname, ip, profile, state, state_since_ms, current_boot_id, inventory, labels, arch, failures,
    maintenance_reason, reserved_ip, client_uuid, approved, ip_seen_at_ms, bmc, boot_chain, declared_in,
    declared_fields, created_at_ms, updated_at_ms,
});
same_fields!(Boot => api::Boot {
    id, node_id, profile, image, started_at_ms, finished_at_ms, outcome, bound_ip, plan_released_at_ms,
    overlay_released_at_ms, reports,
});
same_fields!(Event => api::Event { id, node_id, boot_id, at_ms, kind, state, phase_ms, message });
same_fields!(Lease => api::Lease { ip, mac, expires_at, state });
same_fields!(Lease6 => api::Lease6 { address, duid, iaid, mac, expires_at, state });
same_fields!(AuditRecord => api::AuditRecord { id, at_ms, actor, action, target_kind, target, node_id, before, after });
same_fields!(Volume => api::Volume { id, name, size_bytes, node_id, lun, created_at_ms });
same_fields!(TokenInfo => api::TokenInfo { name, role, created_at_ms, expires_at_ms });

// The API shows the store's closed sets of names as plain strings.
impl From<crate::store::EventKind> for String {
    fn from(kind: crate::store::EventKind) -> String {
        kind.as_str().to_string()
    }
}

impl From<crate::store::LeaseState> for String {
    fn from(state: crate::store::LeaseState) -> String {
        state.as_str().to_string()
    }
}

impl From<Role> for api::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Read => api::Role::Read,
            Role::Admin => api::Role::Admin,
        }
    }
}

impl From<api::Role> for Role {
    fn from(r: api::Role) -> Self {
        match r {
            api::Role::Read => Role::Read,
            api::Role::Admin => Role::Admin,
        }
    }
}

impl From<Manifest> for api::Manifest {
    fn from(m: Manifest) -> Self {
        let Manifest { name, kind, built_at_ms, artifacts, inputs } = m;
        let artifacts = artifacts.into_iter().map(|(role, a)| (role, a.into())).collect();
        api::Manifest { name, kind: kind.into(), built_at_ms, artifacts, inputs }
    }
}

impl From<ImageKind> for api::ImageKind {
    fn from(k: ImageKind) -> Self {
        match k {
            ImageKind::Stage1 => api::ImageKind::Stage1,
            ImageKind::Rootfs => api::ImageKind::Rootfs,
        }
    }
}

impl From<Artifact> for api::Artifact {
    fn from(a: Artifact) -> Self {
        let Artifact { digest, size, format } = a;
        // `Digest` displays as it serializes: 64 lowercase hex digits.
        api::Artifact { digest: digest.to_string(), size, format }
    }
}

impl From<SourceError> for api::SourceError {
    fn from(e: SourceError) -> Self {
        let SourceError { file, line, column, message } = e;
        // Lossy rather than failing the whole list over one oddly named file.
        api::SourceError { file: file.display().to_string(), line, column, message }
    }
}

/// A loaded profile as the API shows it: the profile, its file and its revision.
pub fn profile_view(p: &LoadedProfile) -> api::ProfileView {
    api::ProfileView { file: p.file.display().to_string(), revision: p.revision.clone(), profile: p.profile.clone() }
}

/// Rows into their API views, for the list answers.
pub fn all<T, U: From<T>>(rows: Vec<T>) -> Vec<U> {
    rows.into_iter().map(U::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramboot_core::node::{MacAddr, NodeState};
    use serde::Serialize;
    use serde_json::{json, Value};

    /// The view serializes exactly as the row did when the API returned rows.
    fn same_json<T: Serialize + Clone, U: Serialize + From<T>>(row: T) {
        let before = serde_json::to_value(row.clone()).unwrap();
        assert_eq!(serde_json::to_value(U::from(row)).unwrap(), before);
    }

    fn node() -> Node {
        Node {
            id: 7,
            mac: "52:54:00:72:62:01".parse::<MacAddr>().unwrap(),
            hostname: "web-1".into(),
            ip: Some("10.213.0.20".into()),
            profile: None,
            state: NodeState::Ready,
            state_since_ms: 5,
            current_boot_id: Some(3),
            inventory: Some(json!({"cpus": 4})),
            labels: [("rack".to_string(), "r1".to_string())].into(),
            arch: Some("efi-x64".into()),
            failures: 1,
            maintenance_reason: None,
            reserved_ip: Some("10.213.0.20".into()),
            client_uuid: None,
            approved: true,
            ip_seen_at_ms: Some(4),
            bmc: Some(ramboot_core::inventory::Bmc {
                url: "https://10.0.5.7/redfish/v1/Systems/1".into(),
                credential: "bmc-r1".into(),
                fingerprint: Some("ab".repeat(32)),
            }),
            boot_chain: None,
            declared_in: Some("rack1.yaml".into()),
            declared_fields: [ramboot_core::inventory::Field::Hostname].into(),
            created_at_ms: 1,
            updated_at_ms: 2,
        }
    }

    #[test]
    fn rows_keep_their_json() {
        same_json::<_, api::Node>(node());
        let image = api::BootImage { name: "tiny".into(), digest: "ab".repeat(32), size: 9, format: "squashfs".into() };
        same_json::<_, api::Boot>(Boot {
            id: 3,
            node_id: 7,
            profile: "tiny".into(),
            image: Some(image),
            started_at_ms: 4,
            finished_at_ms: None,
            outcome: Some("ready".into()),
            bound_ip: Some("10.213.0.120".parse().unwrap()),
            plan_released_at_ms: Some(5),
            overlay_released_at_ms: None,
            reports: 2,
        });
        same_json::<_, api::Event>(Event {
            id: 1,
            node_id: 7,
            boot_id: None,
            at_ms: 4,
            kind: crate::store::EventKind::State,
            state: Some(NodeState::Booting),
            phase_ms: Some(12),
            message: "booting".into(),
        });
        same_json::<_, api::Lease>(Lease {
            ip: "10.213.0.100".parse().unwrap(),
            mac: "52:54:00:72:62:01".parse().unwrap(),
            expires_at: 99,
            state: crate::store::LeaseState::Active,
        });
        same_json::<_, api::Volume>(Volume {
            id: 2,
            name: "web-1-data".into(),
            size_bytes: 1 << 20,
            node_id: Some(7),
            lun: Some(1),
            created_at_ms: 3,
        });
        same_json::<_, api::TokenInfo>(TokenInfo {
            name: "admin".into(),
            role: Role::Admin,
            created_at_ms: 0,
            expires_at_ms: Some(1),
        });
    }

    #[test]
    fn manifests_profiles_and_errors_keep_their_json() {
        let manifest: Manifest = serde_json::from_value(json!({
            "name": "tiny", "kind": "rootfs", "built_at_ms": 1,
            "artifacts": {"rootfs": {"digest": "ab".repeat(32), "size": 3, "format": "squashfs"}},
            "inputs": {"busybox": "1.36"},
        }))
        .unwrap();
        same_json::<_, api::Manifest>(manifest);
        let error = SourceError { file: "profiles/x.yaml".into(), line: 3, column: 1, message: "unknown field".into() };
        assert_eq!(api::SourceError::from(error.clone()).to_string(), error.to_string(), "the CLI prints it the same");
        same_json::<_, api::SourceError>(error);
    }

    #[test]
    fn roles_map_both_ways() {
        for role in [Role::Read, Role::Admin] {
            let json: Value = serde_json::to_value(role).unwrap();
            assert_eq!(serde_json::to_value(api::Role::from(role)).unwrap(), json);
            assert_eq!(Role::from(api::Role::from(role)), role);
        }
    }
}
