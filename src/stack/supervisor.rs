//! The replication supervisor of a stack: one session at a time (publication and slot set up,
//! then streamed by `replication::stream`), reconnecting with backoff when one fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::config::StackConfig;
use super::ctx::StackCtx;
use super::status::Status;
use crate::metrics::IntegrityEvent;
use crate::postgres::connect::SourceDb;
use crate::replication::stream;
use crate::shape::writer::{Command, Writer};

/// The replication task: connect, stream, and on failure reconnect with backoff. Each
/// session first makes sure the publication and slot exist and can be used: a publication
/// created anew (it was dropped) or a slot that is gone, has lost WAL, or was left behind by a
/// dropped publication means changes were not streamed, so the slot is created again and every
/// shape rotated.
pub(super) async fn replicate(
    stack: Arc<StackCtx>,
    cfg: StackConfig,
    mut writer: Writer,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let slot = cfg.slot.clone();
    let mut shutdown = stack.shutdown_signal();
    let mut backoff = Duration::from_millis(200);
    // The previous session failed because the slot's history predates the publication.
    let mut slot_unusable = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let attempt = async {
            let admin = stack.admin().await?;
            if stack.identity.get().is_none() {
                if let Ok(id) = SourceDb::identity(&admin).await {
                    let _ = stack.identity.set(id);
                }
            }
            let new_publication = stack.publication.create_if_missing(&admin).await?;
            if new_publication {
                stack.publication.reset().await;
                if !stack.registry.is_empty() {
                    tracing::warn!(stack = %stack.id, publication = stack.publication.name(), "the publication was gone: created it again");
                    stack.stats.integrity.note(IntegrityEvent::PublicationRecreated);
                }
            }
            // A slot older than its publication cannot decode the WAL before it.
            let new_slot =
                stream::ensure_slot(&admin, &slot, new_publication || slot_unusable).await?;
            slot_unusable = false;
            if new_slot && !stack.registry.is_empty() {
                tracing::warn!(stack = %stack.id, slot = %slot, "replication slot was recreated: rotating every shape (changes may have been missed)");
                stack.stats.integrity.note(IntegrityEvent::SlotRecreated);
                for h in stack.registry.handles() {
                    stack.invalidate(&h);
                }
            }
            stream::run(
                &cfg.db,
                &slot,
                stack.publication.name(),
                &stack.stats,
                &mut writer,
                &mut commands,
                (&mut shutdown, &stack.restart),
                stack.status_sender(),
            )
            .await
        }
        .await;
        match attempt {
            Ok(stream::End::Shutdown) => break,
            Err(e) => {
                if stack.status() == Status::Active {
                    // The session had been streaming: this is a new failure, not a retry.
                    backoff = Duration::from_millis(200);
                }
                let msg = format!("{e:#}");
                if stream::publication_missing(&msg) {
                    slot_unusable = true;
                }
                tracing::warn!(stack = %stack.id, database = %stack.db.redacted(), error = %msg, retry_in_ms = backoff.as_millis() as u64, "replication down");
                stack.status_sender().send_replace(Status::Down(msg));
                writer.reset_after_disconnect();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    stack
        .status_sender()
        .send_replace(Status::Down("stopped".into()));
}
