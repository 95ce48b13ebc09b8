//! One replication session: make sure the slot exists, stream from it, decode each message and
//! hand it to the [`Writer`], and acknowledge LSNs only once the writer has made them durable.
//!
//! Group commit: transactions are applied while events keep arriving; when the stream goes quiet
//! (no event waiting) or 512 transactions or 8 MiB of records (4 KiB per touched shape if that
//! is more) are pending, the writer commits every shape log touched
//! since the last commit in one batch (one group commit of the store: one write, one fsync).
//! The commit is pipelined: it runs on a blocking thread while the next events are decoded,
//! routed and appended (they belong to the next batch), and when it lands the last
//! transaction it covers is acknowledged. One commit is in flight at a time. A failed commit
//! (disk full, I/O error) is retried with backoff while the stream is paused and the stack
//! reports `Degraded`. Writer commands (new shapes, snapshot starts, removals) are handled only
//! between transactions and with no commit in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures::FutureExt;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch, Notify};

use super::pgoutput::{self, Message, Relation};
use crate::lsn::Lsn;
use crate::postgres::catalog;
use crate::postgres::connect::SourceDb;
use crate::shape::writer::{ChangeKind, Command, InFlight, Writer};
use crate::stack::status::{ReplicationStats, Status};

/// Flush after at most this many transactions even if more are waiting.
const MAX_TXNS_PER_FLUSH: usize = 512;
/// ... or this many bytes of change records: a batch of this size lands in a few milliseconds
/// while the next one is ingested (a 150 MB batch of 512 large transactions stalled the
/// pipeline on its own write, fsync and checkpoint)...
const MAX_BYTES_PER_FLUSH: usize = 8 << 20;
/// ... unless the batch touches many shapes: committing a shape's changes has a cost per shape
/// (taking its buffer, publishing, waking its readers), so a batch carries at least this much
/// per touched shape (with 100,000 shapes each hit by one row of 1,000-row transactions, 8 MiB
/// batches cost a third of the throughput of 512-transaction ones).
const MIN_BYTES_PER_LOG: usize = 4 << 10;

/// Make sure the logical replication slot exists and can be used; with `recreate`, or when it
/// has lost WAL it needs (`wal_status` lost), drop it first. Returns true if it was created now
/// (changes before this moment are not in it).
pub async fn ensure_slot(
    client: &tokio_postgres::Client,
    slot: &str,
    recreate: bool,
) -> anyhow::Result<bool> {
    let status: Option<String> = client
        .query_opt(
            "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .map(|r| r.get(0));
    match status.as_deref() {
        None => {}
        Some("lost") => {
            tracing::warn!(
                slot,
                "the replication slot lost WAL it needs: creating it again"
            );
            drop_slot(client, slot).await?;
        }
        Some(_) if recreate => drop_slot(client, slot).await?,
        Some(_) => return Ok(false),
    }
    client
        .query_one(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')::text",
            &[&slot],
        )
        .await
        .with_context(|| format!("creating replication slot {slot}"))?;
    Ok(true)
}

/// Drop the slot, waiting (up to 10 s) for the walsender of a session that just ended to
/// release it.
pub async fn drop_slot(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "slot still active; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("dropping slot {slot}"))),
        }
    }
}

/// Did a session fail because the publication does not exist where the slot decodes (it was
/// dropped, or created again after the slot)? The slot must then be created again.
pub fn publication_missing(error: &str) -> bool {
    error.contains("publication") && error.contains("does not exist")
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    Shutdown,
}

/// Stream until shutdown (Ok) or an error (Err: the caller reconnects).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    db: &SourceDb,
    slot: &str,
    publication: &str,
    stats: &ReplicationStats,
    writer: &mut Writer,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    (shutdown, restart): (&mut watch::Receiver<bool>, &Notify),
    status: &watch::Sender<Status>,
) -> anyhow::Result<End> {
    let cfg = db.replication_config(slot, publication);
    let mut client = ReplicationClient::connect(cfg)
        .await
        .map_err(|e| anyhow::Error::new(e).context("replication connect"))?;
    client.wait_started().await.map_err(|e| {
        anyhow::Error::new(e).context(format!("starting replication on slot {slot}"))
    })?;
    status.send_replace(Status::Active);
    let mut ack = |client: &ReplicationClient, lsn: Lsn| {
        client.update_applied_lsn(lsn.into());
        stats.acked(lsn);
    };
    let result = stream(
        &mut client,
        db,
        writer,
        commands,
        (shutdown, restart),
        (stats, status),
        &mut ack,
    )
    .await;
    if matches!(result, Ok(End::Shutdown)) {
        // Give the worker one status interval to report the final acknowledged position.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client.stop();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
    result
}

async fn stream(
    client: &mut ReplicationClient,
    db: &SourceDb,
    writer: &mut Writer,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    (shutdown, restart): (&mut watch::Receiver<bool>, &Notify),
    (stats, status): (&ReplicationStats, &watch::Sender<Status>),
    ack: &mut impl FnMut(&ReplicationClient, Lsn),
) -> anyhow::Result<End> {
    let mut slot: Option<InFlight> = None;
    // The session in a block of its own: however it ends (shutdown, restart, error), the
    // commit in flight is completed after it.
    let result: anyhow::Result<End> = async {
        let inflight = &mut slot;
        let mut relations: HashMap<u32, Arc<Relation>> = HashMap::new();
        let mut lookups = Lookups::new(db);
        let mut next: Option<ReplicationEvent> = None;
        // The transaction being received (its Relation messages are looked up as of its commit).
        let mut txn_xid: u32 = 0;
        loop {
            if next.is_none() && !writer.in_transaction() && writer.unflushed_transactions() > 0 {
                // Group commit: keep going while events are waiting; flush as soon as the stream
                // goes quiet (or the batch is full), before blocking on it.
                next = if writer.unflushed_transactions() >= MAX_TXNS_PER_FLUSH
                    || writer.unflushed_bytes()
                        >= MAX_BYTES_PER_FLUSH.max(writer.unflushed_logs() * MIN_BYTES_PER_LOG)
                {
                    None
                } else {
                    match client.recv().now_or_never() {
                        None => None,
                        Some(Ok(Some(ev))) => Some(ev),
                        Some(Ok(None)) => return Err(anyhow!("replication stream ended")),
                        Some(Err(e)) => return Err(anyhow::Error::new(e).context("replication stream")),
                    }
                };
                if next.is_none() {
                    // Pipelined: the commit runs while the next events are decoded and routed.
                    // One at a time: the previous one lands (and is acknowledged) first.
                    if !settle(client, writer, inflight, (shutdown, status), ack).await {
                        return Ok(End::Shutdown);
                    }
                    match writer.start_flush() {
                        Ok(Some(flight)) => *inflight = Some(flight),
                        // Nothing to take, a log too large for memory, or a failure to take:
                        // the classic commit, waited for.
                        Ok(None) | Err(_) => match flush_durably(writer, shutdown, status).await {
                            Some(Some(lsn)) => ack(client, lsn),
                            Some(None) => {}
                            None => return Ok(End::Shutdown),
                        },
                    }
                }
            }
            let event = match next.take() {
                Some(ev) => ev,
                None => {
                    let in_txn = writer.in_transaction();
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => {
                            // Landed once, not retried: `finish` makes one last attempt.
                            if let Some(mut flight) = inflight.take() {
                                let outcome = (&mut flight.task).await;
                                if let Ok(Some(lsn)) = writer.finish_flush(flight, outcome) {
                                    ack(client, lsn);
                                }
                            }
                            return finish(client, writer, ack).await;
                        }
                        _ = restart.notified() => return Err(anyhow!("replication restarted to set the publication and slot up again")),
                        outcome = landed(inflight), if inflight.is_some() => {
                            if let Some(flight) = inflight.take() {
                                match writer.finish_flush(flight, outcome) {
                                    Ok(Some(lsn)) => ack(client, lsn),
                                    Ok(None) => {}
                                    Err(e) => {
                                        tracing::warn!(error = %e, "group commit failed; retrying");
                                        match flush_durably(writer, shutdown, status).await {
                                            Some(Some(lsn)) => ack(client, lsn),
                                            Some(None) => {}
                                            None => return Ok(End::Shutdown),
                                        }
                                    }
                                }
                            }
                            continue;
                        }
                        Some(cmd) = commands.recv(), if !in_txn => {
                            // Commands (new shapes, snapshot starts, removals) see no commit in
                            // flight.
                            if !settle(client, writer, inflight, (shutdown, status), ack).await {
                                return Ok(End::Shutdown);
                            }
                            writer.command(cmd);
                            // Every command queued meanwhile too: one commit waited for, not
                            // one per command (move-in results can come by the hundred).
                            while let Ok(cmd) = commands.try_recv() {
                                writer.command(cmd);
                            }
                            continue;
                        }
                        ev = client.recv() => ev.map_err(|e| anyhow::Error::new(e).context("replication stream"))?
                            .ok_or_else(|| anyhow!("replication stream ended"))?,
                    }
                }
            };
            match event {
                ReplicationEvent::Begin { final_lsn, xid, .. } => {
                    txn_xid = xid;
                    writer.begin(final_lsn.into(), xid)
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let msg = pgoutput::decode(&data)
                        .map_err(|e| anyhow::Error::new(e).context("pgoutput"))?;
                    if let Message::Relation(r) = msg {
                        // Which partitioned tables the relation's changes also belong to: asked
                        // of the catalog each time Postgres describes it (after any change to it,
                        // attaching and detaching included).
                        let ancestors = lookups.ancestors(r.oid, txn_xid).await?;
                        tracing::debug!(oid = r.oid, name = %r.name, ?ancestors, "relation");
                        writer.relation(&r, ancestors.as_deref());
                        relations.insert(r.oid, Arc::new(r));
                    } else {
                        apply(msg, &relations, writer)?;
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let end_lsn = Lsn::from(end_lsn);
                    tracing::trace!(%end_lsn, "commit");
                    stats.server_at(end_lsn);
                    writer.commit(end_lsn);
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    let wal_end = Lsn::from(wal_end);
                    tracing::trace!(%wal_end, "keepalive");
                    stats.server_at(wal_end);
                    writer.wal_seen(wal_end);
                    if let Some(lsn) = writer.idle_ack(wal_end).filter(|_| inflight.is_none()) {
                        ack(client, lsn);
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => return Ok(End::Shutdown),
            }
        }
    }
    .await;
    // Never leave a commit running behind a reset (the writer then drops what is unflushed)
    // or a shutdown. Failed, its changes are simply replayed by the slot.
    if let Some(mut flight) = slot.take() {
        let outcome = (&mut flight.task).await;
        if let Ok(Some(lsn)) = writer.finish_flush(flight, outcome) {
            ack(client, lsn);
        }
    }
    result
}

/// Waits for the commit in flight, if any (pending for ever otherwise: a `select!` branch).
async fn landed(
    inflight: &mut Option<InFlight>,
) -> Result<Result<(), shapesync_storage::StoreError>, tokio::task::JoinError> {
    match inflight {
        Some(flight) => (&mut flight.task).await,
        None => std::future::pending().await,
    }
}

/// Completes the commit in flight, if any, and acknowledges what it made durable; if it
/// failed, retries its changes with [`flush_durably`]. `false` on shutdown (during a retry).
async fn settle(
    client: &ReplicationClient,
    writer: &mut Writer,
    inflight: &mut Option<InFlight>,
    (shutdown, status): (&mut watch::Receiver<bool>, &watch::Sender<Status>),
    ack: &mut impl FnMut(&ReplicationClient, Lsn),
) -> bool {
    let Some(mut flight) = inflight.take() else {
        return true;
    };
    let outcome = (&mut flight.task).await;
    let landed = match writer.finish_flush(flight, outcome) {
        Ok(lsn) => Some(lsn),
        Err(e) => {
            tracing::warn!(error = %e, "group commit failed; retrying");
            flush_durably(writer, shutdown, status).await
        }
    };
    match landed {
        Some(Some(lsn)) => ack(client, lsn),
        Some(None) => {}
        None => return false,
    }
    true
}

/// Shutdown: make complete transactions durable and acknowledge them; an open transaction is
/// dropped (the slot sends it again next time).
async fn finish(
    client: &mut ReplicationClient,
    writer: &mut Writer,
    ack: &mut impl FnMut(&ReplicationClient, Lsn),
) -> anyhow::Result<End> {
    if writer.in_transaction() {
        writer.reset_after_disconnect();
    } else if let Ok(Some(lsn)) = writer.flush().await {
        ack(client, lsn);
    }
    Ok(End::Shutdown)
}

/// Flush, retrying a failed group commit (disk full, I/O error) with backoff until it
/// succeeds: meanwhile the stream is not consumed, nothing is acknowledged, and the stack is
/// `Degraded` (health, metrics, and new shapes get 503). `None` on shutdown: the pending
/// batch stays unacknowledged and the slot sends it again.
async fn flush_durably(
    writer: &mut Writer,
    shutdown: &mut watch::Receiver<bool>,
    status: &watch::Sender<Status>,
) -> Option<Option<Lsn>> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match writer.flush().await {
            Ok(lsn) => {
                status.send_if_modified(|s| {
                    let degraded = matches!(s, Status::Degraded(_));
                    if degraded {
                        tracing::info!("shape log storage writable again");
                        *s = Status::Active;
                    }
                    degraded
                });
                return Some(lsn);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "group commit failed; not acknowledging, retrying");
                status.send_replace(Status::Degraded(e.to_string()));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn apply(
    msg: Message,
    relations: &HashMap<u32, Arc<Relation>>,
    writer: &mut Writer,
) -> anyhow::Result<()> {
    let rel = |oid: u32, relations: &HashMap<u32, Arc<Relation>>| {
        relations
            .get(&oid)
            .cloned()
            .ok_or_else(|| anyhow!("change for relation {oid} before its Relation message"))
    };
    match msg {
        Message::Insert { relation, new } => {
            let r = rel(relation, relations)?;
            writer.change(&r, ChangeKind::Insert, None, Some(&new));
        }
        Message::Update { relation, old, new } => {
            let r = rel(relation, relations)?;
            writer.change(&r, ChangeKind::Update, old.as_ref(), Some(&new));
        }
        Message::Delete { relation, old } => {
            let r = rel(relation, relations)?;
            writer.change(&r, ChangeKind::Delete, Some(&old), None);
        }
        Message::Truncate {
            relations: oids, ..
        } => writer.truncate(&oids),
        // Begin/Commit arrive as their own events; types, origins and logical messages do not
        // affect shapes; relations are handled by the caller.
        Message::Relation(_)
        | Message::Begin(_)
        | Message::Commit(_)
        | Message::Type { .. }
        | Message::Origin { .. }
        | Message::Message { .. } => {}
    }
    Ok(())
}

/// Catalog lookups the stream needs (a partition's ancestors), on a query connection opened on
/// first use and kept for the session.
/// How long a decoded transaction may take to become visible to a catalog lookup (it is a
/// matter of the committing backend finishing its commit; on timeout the session restarts).
const VISIBLE_WAIT: Duration = Duration::from_secs(10);

struct Lookups<'a> {
    db: &'a SourceDb,
    client: Option<tokio_postgres::Client>,
}

impl<'a> Lookups<'a> {
    fn new(db: &'a SourceDb) -> Self {
        Lookups { db, client: None }
    }

    /// The partitioned ancestors of relation `oid` as described in transaction `xid`, read
    /// once that transaction is visible to the lookup (see [`catalog::xact_visible`]).
    async fn ancestors(&mut self, oid: u32, xid: u32) -> anyhow::Result<Option<Vec<u32>>> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.db.connect().await?);
        }
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| anyhow!("no catalog connection"))?;
        let deadline = tokio::time::Instant::now() + VISIBLE_WAIT;
        while !catalog::xact_visible(client, xid)
            .await
            .map_err(|e| anyhow::Error::new(e).context("waiting for a transaction to be visible"))?
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(anyhow!(
                    "transaction {xid} was not visible {VISIBLE_WAIT:?} after it was decoded"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        catalog::partition_ancestors(client, oid)
            .await
            .map_err(|e| {
                anyhow::Error::new(e)
                    .context(format!("looking up the partitions of relation {oid}"))
            })
    }
}
