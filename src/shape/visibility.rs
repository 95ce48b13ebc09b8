//! Which replicated transactions a shape's initial snapshot already contains (pure).
//!
//! The snapshot runs in a REPEATABLE READ transaction whose first statement records
//! `pg_current_snapshot()` = (xmin, xmax, xip). A streamed transaction with id `x` is *visible*
//! in that snapshot (its rows are already in the snapshot, so its changes must be skipped) iff
//! `x < xmin`, or `x < xmax` and `x ∉ xip`. pgoutput gives 32-bit xids; they are widened to 64
//! bits relative to the snapshot's xmax (valid within ±2^31 transactions of it, which covers the
//! window in which filtering matters: once a transaction at or past xmax is seen, every later one
//! commits after the snapshot, and filtering stops).

use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

/// What to do with a streamed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Already in the snapshot: skip it.
    Skip,
    /// Not in the snapshot: apply it (filtering continues).
    Apply,
    /// Started after the snapshot: apply it and every later transaction; stop filtering.
    ApplyAndStopFiltering,
}

impl SnapshotInfo {
    /// Widen a 32-bit xid to 64 bits using xmax's epoch.
    pub fn widen(&self, xid: u32) -> u64 {
        let diff = xid.wrapping_sub(self.xmax as u32) as i32;
        (self.xmax as i64 + i64::from(diff)).max(0) as u64
    }

    pub fn verdict(&self, xid: u32) -> Verdict {
        let x = self.widen(xid);
        if x >= self.xmax {
            Verdict::ApplyAndStopFiltering
        } else if x < self.xmin || !self.xip.contains(&x) {
            Verdict::Skip
        } else {
            Verdict::Apply
        }
    }
}

/// A `pg_snapshot` text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pg_snapshot {0:?}")]
pub struct InvalidSnapshot(String);

/// Parses the text form of `pg_snapshot`: `xmin:xmax:xip1,xip2,…`.
impl FromStr for SnapshotInfo {
    type Err = InvalidSnapshot;

    fn from_str(s: &str) -> Result<Self, InvalidSnapshot> {
        let bad = || InvalidSnapshot(s.to_string());
        let mut parts = s.splitn(3, ':');
        let xmin = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let rest = parts.next().ok_or_else(bad)?;
        let xip = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(',')
                .map(|x| x.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?
        };
        Ok(SnapshotInfo { xmin, xmax, xip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_snapshot_text() {
        let s: SnapshotInfo = "100:105:100,102".parse().unwrap();
        assert_eq!(
            s,
            SnapshotInfo {
                xmin: 100,
                xmax: 105,
                xip: vec![100, 102]
            }
        );
        let s: SnapshotInfo = "7:7:".parse().unwrap();
        assert!(s.xip.is_empty());
        assert!("x:1:".parse::<SnapshotInfo>().is_err());
        assert!("1:2".parse::<SnapshotInfo>().is_err());
    }

    #[test]
    fn visibility_rule() {
        let s: SnapshotInfo = "100:105:100,102".parse().unwrap();
        assert_eq!(s.verdict(99), Verdict::Skip);
        assert_eq!(s.verdict(100), Verdict::Apply);
        assert_eq!(s.verdict(101), Verdict::Skip);
        assert_eq!(s.verdict(102), Verdict::Apply);
        assert_eq!(s.verdict(104), Verdict::Skip);
        assert_eq!(s.verdict(105), Verdict::ApplyAndStopFiltering);
        assert_eq!(s.verdict(200), Verdict::ApplyAndStopFiltering);
    }

    #[test]
    fn widens_across_the_epoch() {
        let xmax = (3u64 << 32) + 10;
        let s = SnapshotInfo {
            xmin: xmax - 20,
            xmax,
            xip: vec![],
        };
        assert_eq!(s.widen(5), (3u64 << 32) + 5);
        assert_eq!(s.widen(u32::MAX), (3u64 << 32) - 1);
        assert_eq!(s.widen(20), (3u64 << 32) + 20);
    }
}
