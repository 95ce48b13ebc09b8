//! Admission control: at most N concurrent initial (`offset=-1`) and M concurrent other shape
//! requests; past that, 503 with `retry-after` (protocol.md §8.3), so a request storm cannot
//! exhaust the server. The guard releases the slot when the request ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::error::ApiError;

#[derive(Debug)]
pub struct Admission {
    initial_limit: usize,
    existing_limit: usize,
    initial: Arc<AtomicUsize>,
    existing: Arc<AtomicUsize>,
}

/// Holds one admitted request.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(initial_limit: usize, existing_limit: usize) -> Self {
        Admission {
            initial_limit,
            existing_limit,
            initial: Arc::new(AtomicUsize::new(0)),
            existing: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn enter(&self, initial: bool) -> Result<Admitted, ApiError> {
        let (counter, limit, kind) = if initial {
            (&self.initial, self.initial_limit, "initial")
        } else {
            (&self.existing, self.existing_limit, "existing")
        };
        let before = counter.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(Arc::clone(counter));
        if before >= limit {
            drop(admitted);
            return Err(ApiError::Overloaded {
                message: format!(
                    "Concurrent {kind} request limit exceeded (limit: {limit}), please retry"
                ),
                retry_after: rand::random_range(6..=10),
            });
        }
        Ok(admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_concurrent_requests_per_kind() {
        let a = Admission::new(1, 2);
        let first = a.enter(true).unwrap();
        assert!(matches!(a.enter(true), Err(ApiError::Overloaded { .. })));
        let _e1 = a.enter(false).unwrap();
        let _e2 = a.enter(false).unwrap();
        assert!(a.enter(false).is_err());
        drop(first);
        assert!(a.enter(true).is_ok(), "released on drop");
    }
}
