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
}

impl Registry {
    pub fn new(store: Arc<dyn ShapeLogStore>) -> Self {
        Registry {
            by_def: DashMap::new(),
            by_handle: DashMap::new(),
            store,
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
    /// and its log is deleted in the background.
    pub fn remove(&self, handle: &ShapeHandle, state: Lifecycle) {
        let Some((_, shape)) = self.by_handle.remove(handle) else {
            return;
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
