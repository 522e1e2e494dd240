//! Reboots asked of a node's agent (`nodes.reboot_requested_at_ms`,
//! `reboot_delivered_at_ms`, migration 0012): how a node without a BMC is
//! rebooted. A rollout (or an operator) records the request; stage two's agent
//! takes it on its next poll of `GET /boot/v1/command`. A request counts only for
//! a boot that started no later than it (an older request is not replayed to the
//! boot after the reboot), and is handed out once, even to racing polls.
//!
//! It owns those two columns only; the node's state and boots are `nodes`' and
//! `boots`'.

use super::audit::{self, Actor, Target};
use super::events::{self, EventKind, NewEvent};
use super::nodes::node_in;
use super::{BootId, NodeId, Store, StoreError};
use serde_json::json;

impl Store {
    /// Ask node `id`'s agent to reboot it: audited (`node.reboot`) and noted in
    /// its event log, in one transaction. The failure count is cleared, as a
    /// reprovision does, so the boot that follows is not held back by an old
    /// failure; the current boot (and its token, which the agent polls with) stays.
    pub async fn request_reboot(&self, id: NodeId, actor: &Actor, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let node = node_in(&mut tx, id).await?;
        let before: Option<i64> = tx
            .sql("SELECT reboot_requested_at_ms FROM nodes WHERE id = $1")
            .bind(id)
            .fetch_one()
            .await?
            .try_get("reboot_requested_at_ms")?;
        tx.sql(
            "UPDATE nodes SET reboot_requested_at_ms = $1, reboot_delivered_at_ms = NULL, failures = 0,
             updated_at_ms = $1 WHERE id = $2",
        )
        .bind(now_ms)
        .bind(id)
        .execute()
        .await?;
        let message = format!("reboot requested through the agent by {actor}");
        events::insert(&mut tx, &NewEvent::note(id, node.current_boot_id, EventKind::Info, &message), now_ms).await?;
        audit::record(
            &mut tx,
            actor,
            "node.reboot",
            &Target::node(id, node.mac),
            Some(&json!({ "reboot_requested_at_ms": before, "failures": node.failures, "via": null })),
            Some(&json!({ "reboot_requested_at_ms": now_ms, "failures": 0, "via": "agent" })),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Take the reboot waiting for `boot` of node `id`, if there is one: true once
    /// per request (the delivery is recorded atomically, with an event), false when
    /// there is none, it was taken already, it predates the boot (`started_at_ms`),
    /// or `boot` is not the node's current boot.
    pub async fn take_reboot(
        &self,
        id: NodeId,
        boot: BootId,
        started_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        // A read first: polls check often, and most find nothing, so they never
        // queue behind the single writer.
        let row = self
            .backend
            .sql("SELECT reboot_requested_at_ms, reboot_delivered_at_ms, current_boot_id FROM nodes WHERE id = $1")
            .bind(id)
            .fetch_optional()
            .await?;
        let Some(row) = row else { return Ok(false) };
        let requested: Option<i64> = row.try_get("reboot_requested_at_ms")?;
        let delivered: Option<i64> = row.try_get("reboot_delivered_at_ms")?;
        let current: Option<BootId> = row.try_get("current_boot_id")?;
        if !pending(requested, delivered, started_at_ms) || current != Some(boot) {
            return Ok(false);
        }
        let mut tx = self.backend.begin_write().await?;
        let taken = tx
            .sql(
                "UPDATE nodes SET reboot_delivered_at_ms = $1 WHERE id = $2 AND current_boot_id = $3
                 AND reboot_requested_at_ms >= $4 AND reboot_delivered_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(id)
            .bind(boot)
            .bind(started_at_ms)
            .execute()
            .await?;
        if taken != 1 {
            return Ok(false);
        }
        let message = "reboot request delivered to the agent";
        events::insert(&mut tx, &NewEvent::note(id, Some(boot), EventKind::Info, message), now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Is a request waiting for a boot that started at `started_at_ms`?
fn pending(requested: Option<i64>, delivered: Option<i64>, started_at_ms: i64) -> bool {
    requested.is_some_and(|r| r >= started_at_ms) && delivered.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{store, token};
    use ramboot_core::node::MacAddr;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0x0c, 1]);

    fn rollout() -> Actor {
        Actor::Server { name: "lab (rollout 1)".into() }
    }

    #[test]
    fn only_a_request_no_older_than_the_boot_and_not_yet_delivered_is_pending() {
        assert!(pending(Some(10), None, 10));
        assert!(pending(Some(11), None, 10));
        assert!(!pending(Some(9), None, 10), "asked of an earlier boot");
        assert!(!pending(Some(11), Some(12), 10), "delivered");
        assert!(!pending(None, None, 10));
    }

    #[tokio::test]
    async fn a_request_is_delivered_once_to_the_current_boot_and_audited() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 0).await.unwrap();
        let boot = s.start_boot(node.id, "tiny", None, &token("h1"), 100, "test").await.unwrap();
        assert!(!s.take_reboot(node.id, boot, 100, 150).await.unwrap(), "nothing asked");
        s.request_reboot(node.id, &rollout(), 200).await.unwrap();
        assert!(!s.take_reboot(node.id, boot + 1, 100, 250).await.unwrap(), "not the current boot");
        assert!(s.take_reboot(node.id, boot, 100, 250).await.unwrap());
        assert!(!s.take_reboot(node.id, boot, 100, 260).await.unwrap(), "once");

        // The boot after the reboot does not hear the old request.
        let next = s.start_boot(node.id, "tiny", None, &token("h2"), 300, "test").await.unwrap();
        assert!(!s.take_reboot(node.id, next, 300, 350).await.unwrap());

        let records = s.audit(&crate::store::AuditFilter { after: 0, limit: 100, ..Default::default() }).await.unwrap();
        let reboot = records.iter().find(|r| r.action == "node.reboot").expect("audited");
        assert_eq!(reboot.actor, rollout());
        assert_eq!((reboot.node_id, reboot.target.as_str()), (Some(node.id), "52:54:00:00:0c:01"));
        let notes: Vec<String> = s.events(node.id, 0, 100).await.unwrap().into_iter().map(|e| e.message).collect();
        assert!(notes.iter().any(|m| m == "reboot requested through the agent by server lab (rollout 1)"), "{notes:?}");
        assert!(notes.iter().any(|m| m == "reboot request delivered to the agent"), "{notes:?}");
    }

    #[tokio::test]
    async fn a_request_for_a_missing_node_is_an_error() {
        let (s, _d) = store().await;
        assert!(matches!(s.request_reboot(42, &rollout(), 1).await, Err(StoreError::NoSuchNode(_))));
    }
}
