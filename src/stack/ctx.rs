//! What a stack's workers share with it: its identity, registry, figures, publication and slot,
//! its admin connection, how to take a shape out of service, and the signals that end or wake
//! them. The workers (replication supervisor, schema check, lifecycle task) hold this, never the
//! stack itself, so that none of them depends back on the stack that starts it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, watch, Notify};

use super::status::{ReplicationStats, ShapeError, Status};
use crate::lsn::AtomicLsn;
use crate::postgres::connect::SourceDb;
use crate::postgres::publication::Publication;
use crate::shape::definition::ShapeHandle;
use crate::shape::registry::Registry;
use crate::shape::writer::Command;
use crate::shape::Lifecycle;

pub struct StackCtx {
    /// The tenant's database id.
    pub id: String,
    pub db: SourceDb,
    pub registry: Arc<Registry>,
    pub stats: Arc<ReplicationStats>,
    pub publication: Publication,
    pub slot: String,
    /// Latest commit LSN made durable (`global_last_seen_lsn`).
    pub global_lsn: Arc<AtomicLsn>,
    /// Where the schema check keeps what it learnt about partitions.
    pub partitions_file: PathBuf,
    /// Wakes the schema check at once (a table with shapes streamed without replica identity
    /// FULL).
    pub check_now: Arc<Notify>,
    /// Requests to the writer (through the replication task).
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Sender<Status>,
    shutdown: watch::Sender<bool>,
    /// Set when the tenant is removed.
    removed: AtomicBool,
    /// Connection for catalog lookups and publication changes; reconnected when it breaks.
    admin: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    /// Ends the replication session, which then starts again (setting the publication and
    /// slot up anew).
    pub(super) restart: Notify,
    /// The database's identity ([`SourceDb::identity`]), once connected.
    pub(super) identity: OnceLock<String>,
}

/// What a [`StackCtx`] is made of (the rest it makes itself).
pub struct CtxParts {
    pub id: String,
    pub db: SourceDb,
    pub registry: Arc<Registry>,
    pub stats: Arc<ReplicationStats>,
    pub publication: String,
    pub slot: String,
    pub global_lsn: Arc<AtomicLsn>,
    pub partitions_file: PathBuf,
    pub check_now: Arc<Notify>,
    pub commands: mpsc::UnboundedSender<Command>,
}

impl StackCtx {
    pub fn new(p: CtxParts) -> StackCtx {
        StackCtx {
            id: p.id,
            db: p.db,
            registry: p.registry,
            stats: p.stats,
            publication: Publication::new(p.publication),
            slot: p.slot,
            global_lsn: p.global_lsn,
            partitions_file: p.partitions_file,
            check_now: p.check_now,
            commands: p.commands,
            status: watch::channel(Status::Starting).0,
            shutdown: watch::channel(false).0,
            removed: AtomicBool::new(false),
            admin: tokio::sync::Mutex::new(None),
            restart: Notify::new(),
            identity: OnceLock::new(),
        }
    }

    /// The admin connection (opened again if it broke).
    pub async fn admin(&self) -> Result<Arc<tokio_postgres::Client>, ShapeError> {
        let mut admin = self.admin.lock().await;
        if let Some(c) = admin.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        let client = Arc::new(
            self.db
                .connect()
                .await
                .map_err(|e| ShapeError::database("connecting to the database", e))?,
        );
        *admin = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Send a request to the writer; false once replication has stopped for good.
    pub fn command(&self, cmd: Command) -> bool {
        self.commands.send(cmd).is_ok()
    }

    /// Take a shape out of service (clients get 409 and refetch).
    pub fn invalidate(&self, handle: &ShapeHandle) {
        self.command(Command::Remove {
            handle: handle.clone(),
        });
        self.registry.remove(handle, Lifecycle::Gone);
    }

    /// Take a shape out of local service whose sealed chunks were archived to the object
    /// store: its handle keeps serving them from there.
    pub fn archive(&self, handle: &ShapeHandle) {
        self.command(Command::Remove {
            handle: handle.clone(),
        });
        self.registry.archive(handle);
    }

    /// End the replication session; the next one sets the publication and slot up anew (and
    /// rotates every shape if either had to be created again).
    pub fn restart_replication(&self) {
        // Only a session streaming now is ended (no permit is stored for a later one: the
        // schema check asks again if the next session still finds something wrong).
        self.restart.notify_waiters();
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn subscribe_status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub(super) fn status_sender(&self) -> &watch::Sender<Status> {
        &self.status
    }

    /// Has the stack been stopped (or removed)?
    pub fn is_stopped(&self) -> bool {
        *self.shutdown.borrow() || self.removed.load(Ordering::Acquire)
    }

    /// Resolves when the stack starts shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(super) fn begin_shutdown(&self) {
        // send_replace, not send: with no receiver yet (a stop right after the start, before
        // the replication task subscribed), send would leave the value unchanged and the task
        // would then run for ever.
        self.shutdown.send_replace(true);
    }

    pub(super) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// The database's identity, once it has been reached.
    pub fn identity(&self) -> Option<&str> {
        self.identity.get().map(String::as_str)
    }

    /// The latest commit LSN made durable (`global_last_seen_lsn`), as offsets carry it.
    pub fn latest_lsn(&self) -> u64 {
        self.global_lsn.load().as_u64()
    }
}
