//! The chunking rule (protocol.md §3.3), pure.
//!
//! Each entry adds `len + 1` bytes to a running total; when adding an entry makes the total
//! reach the threshold, a chunk boundary falls right *after* that entry and the total restarts
//! at zero. So a chunk may exceed the threshold by one entry. The same rule cuts snapshot rows
//! and change entries; because it depends only on the entry lengths and the threshold (which
//! log files store in their header), replaying a log reproduces identical boundaries.

/// Running state of the chunking rule for one log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunker {
    threshold: u64,
    /// Bytes (sum of `len + 1`) of the entries of the open chunk.
    running: u64,
}

impl Chunker {
    pub(crate) fn new(threshold: u64) -> Chunker {
        Chunker {
            threshold,
            running: 0,
        }
    }

    /// Counts one entry of `len` bytes; returns true when the chunk ends after it.
    pub(crate) fn add(&mut self, len: usize) -> bool {
        self.running = self.running.saturating_add(len as u64 + 1);
        if self.running >= self.threshold {
            self.running = 0;
            true
        } else {
            false
        }
    }

    /// The state after `running` bytes of an open chunk (as recorded by `running`).
    pub(crate) fn resume(threshold: u64, running: u64) -> Chunker {
        Chunker { threshold, running }
    }

    /// Bytes of the open chunk so far.
    pub(crate) fn running(&self) -> u64 {
        self.running
    }

    pub(crate) fn threshold(&self) -> u64 {
        self.threshold
    }

    /// Closes the open chunk regardless of size (end of the snapshot).
    pub(crate) fn reset(&mut self) {
        self.running = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_after_the_row_that_reaches_the_threshold() {
        let mut c = Chunker::new(10);
        assert!(!c.add(3)); // 4
        assert!(!c.add(4)); // 9
        assert!(c.add(0)); // 10 >= 10
        assert!(!c.add(2)); // restarted: 3
        assert!(c.add(100)); // one big row overshoots and seals
    }
}
