//! A stack's live shapes, found by definition (one live shape per definition, created at most
//! once even when many requests ask for it at the same moment) and by handle.

use std::sync::Arc;

use dashmap::DashMap;
use shapesync_storage::ShapeLogStore;
use tokio::sync::OnceCell;

use super::definition::{ShapeDefinition, ShapeHandle};
use super::{Lifecycle, Shape};

pub struct Registry {
    /// Definition → the shape being created or live. A `OnceCell` so concurrent first requests
    /// share one creation; a failed creation leaves it empty for the next request to retry.
    by_def: DashMap<ShapeDefinition, Arc<OnceCell<Arc<Shape>>>>,
    by_handle: DashMap<ShapeHandle, Arc<Shape>>,
    store: Arc<dyn ShapeLogStore>,
    /// Handles whose copies in the object-store tier must be deleted too (drained by the
    /// lifecycle task, which also uploads: deletions are ordered after uploads that way).
    tier_cleanup: Option<tokio::sync::mpsc::UnboundedSender<ShapeHandle>>,
    /// Removed shapes whose bucket copy is not deleted yet: never served from the bucket.
    deleting: dashmap::DashSet<ShapeHandle>,
}

impl Registry {
    pub fn new(store: Arc<dyn ShapeLogStore>) -> Self {
        Registry {
            by_def: DashMap::new(),
            by_handle: DashMap::new(),
            store,
            tier_cleanup: None,
            deleting: dashmap::DashSet::new(),
        }
    }

    /// A registry whose removed shapes are also queued for deletion from the object store.
    pub fn with_tier_cleanup(
        store: Arc<dyn ShapeLogStore>,
        cleanup: tokio::sync::mpsc::UnboundedSender<ShapeHandle>,
    ) -> Self {
        Registry {
            tier_cleanup: Some(cleanup),
            ..Registry::new(store)
        }
    }

    pub fn store(&self) -> &Arc<dyn ShapeLogStore> {
        &self.store
    }

    pub fn get(&self, handle: &ShapeHandle) -> Option<Arc<Shape>> {
        self.by_handle.get(handle).map(|s| Arc::clone(s.value()))
    }

    /// The live shape for `def`, if one exists already.
    pub fn live(&self, def: &ShapeDefinition) -> Option<Arc<Shape>> {
        let cell = self.by_def.get(def).map(|c| Arc::clone(c.value()))?;
        cell.get().filter(|s| s.is_active()).cloned()
    }

    /// The creation cell for `def` (shared by concurrent creators).
    pub fn cell(&self, def: &ShapeDefinition) -> Arc<OnceCell<Arc<Shape>>> {
        let entry = self.by_def.entry(def.clone()).or_default();
        Arc::clone(entry.value())
    }

    /// Make a created (or restored) shape findable by handle and definition.
    pub fn insert(&self, shape: &Arc<Shape>) {
        self.by_handle
            .insert(shape.handle.clone(), Arc::clone(shape));
        let cell = self.cell(&shape.def);
        let _ = cell.set(Arc::clone(shape));
    }

    /// Take a shape out of service: waiters wake with `state`, new requests no longer find it,
    /// and its log (and its copy in the object store, if any) is deleted in the background.
    pub fn remove(&self, handle: &ShapeHandle, state: Lifecycle) {
        if self.take_out(handle, state) {
            if let Some(cleanup) = &self.tier_cleanup {
                self.deleting.insert(handle.clone());
                let _ = cleanup.send(handle.clone());
            }
        }
    }

    /// Like `remove`, but the shape's copy in the object store stays: its sealed chunks keep
    /// being served from there (the caller archived it first).
    pub fn archive(&self, handle: &ShapeHandle) {
        self.take_out(handle, Lifecycle::Gone);
    }

    /// Was `handle` removed here with its bucket copy still being deleted?
    pub fn is_being_deleted(&self, handle: &ShapeHandle) -> bool {
        self.deleting.contains(handle)
    }

    /// The bucket copy of `handle` is deleted (called by the lifecycle task).
    pub fn deleted_from_tier(&self, handle: &ShapeHandle) {
        self.deleting.remove(handle);
    }

    /// The active shape requested least recently, other than `except`.
    pub fn least_recently_used(&self, except: Option<&ShapeHandle>) -> Option<Arc<Shape>> {
        self.by_handle
            .iter()
            .filter(|s| Some(s.key()) != except && s.is_active())
            .min_by_key(|s| s.last_used_micros())
            .map(|s| Arc::clone(s.value()))
    }

    /// Removes `handle` from the maps and deletes its local log; false if it was not there.
    fn take_out(&self, handle: &ShapeHandle, state: Lifecycle) -> bool {
        let Some((_, shape)) = self.by_handle.remove(handle) else {
            return false;
        };
        self.by_def.remove_if(&shape.def, |_, cell| {
            cell.get().map(|s| s.handle == *handle).unwrap_or(false)
        });
        shape.set_state(state);
        let store = Arc::clone(&self.store);
        let id = handle.to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.remove(&id) {
                tracing::warn!(handle = %id, error = %e, "removing a shape log failed");
            }
        });
        true
    }

    pub fn len(&self) -> usize {
        self.by_handle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_handle.is_empty()
    }

    pub fn shapes(&self) -> Vec<Arc<Shape>> {
        self.by_handle
            .iter()
            .map(|s| Arc::clone(s.value()))
            .collect()
    }

    pub fn handles(&self) -> Vec<ShapeHandle> {
        self.by_handle.iter().map(|s| s.key().clone()).collect()
    }

    pub fn handles_on_table(&self, oid: u32) -> Vec<ShapeHandle> {
        self.by_handle
            .iter()
            .filter(|s| s.table.oid == oid)
            .map(|s| s.handle.clone())
            .collect()
    }
}
