//! What identifies a shape (its definition) and the handle that names one live instance of it.
//!
//! The same definition maps to the same live handle for every client; a new handle is minted only
//! when the shape is invalidated, and handles are never reused: `<definition hash>-<unix µs>`,
//! with the microseconds kept strictly increasing within the process.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// `replica=default|full` (protocol.md §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Replica {
    #[default]
    Default,
    Full,
}

/// `log=full|changes_only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogMode {
    #[default]
    Full,
    ChangesOnly,
}

/// A shape's definition as requested: equal definitions share one live shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShapeDefinition {
    pub schema: String,
    pub table: String,
    /// The where clause as written (trimmed); None for the whole table.
    pub where_clause: Option<String>,
    /// Selected columns as parsed (unquoted names); None for all columns.
    pub columns: Option<Vec<String>>,
    pub replica: Replica,
    pub log: LogMode,
    /// Values of `$1`, `$2`, … in the where clause (`params[n]`), part of the identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
    /// The caller's role's row filter with its claims bound (None without a role): ANDed to
    /// `where_clause` as a separate node, so nothing in the client's clause can widen it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_filter: Option<RowFilter>,
}

/// A role's row filter as one caller sees it: the clause and the values of the claims it uses.
/// Two callers share a shape only when both (and the rest of the definition) are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RowFilter {
    pub clause: String,
    /// Claim name → its constant text (None: SQL NULL).
    pub claims: std::collections::BTreeMap<String, Option<String>>,
}

impl shapesync_filter::ClaimSource for RowFilter {
    fn claim(&self, name: &str) -> Result<Option<String>, String> {
        self.claims
            .get(name)
            .cloned()
            .ok_or_else(|| format!("the credential has no claim {name:?}"))
    }
}

impl ShapeDefinition {
    /// A stable 32-bit hash of the definition (FNV-1a over its canonical JSON).
    pub fn hash32(&self) -> u32 {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let mut h: u32 = 0x811c_9dc5;
        for b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h
    }
}

/// An opaque shape handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShapeHandle(String);

static LAST_MICROS: AtomicU64 = AtomicU64::new(0);

impl ShapeHandle {
    /// A new handle for `def`, never equal to any handle minted before (in this process, or
    /// earlier ones as long as the clock does not run backwards past them).
    pub fn mint(def: &ShapeDefinition) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut prev = LAST_MICROS.load(Ordering::Relaxed);
        let micros = loop {
            let next = now.max(prev + 1);
            match LAST_MICROS.compare_exchange(prev, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break next,
                Err(actual) => prev = actual,
            }
        };
        ShapeHandle(format!("{}-{}", def.hash32(), micros))
    }

    /// Make sure handles minted from now on sort after `self` (called for handles found on
    /// disk at start, so a clock step backwards cannot mint a handle again).
    pub fn observe(&self) {
        if let Some(micros) = self.minted_micros() {
            LAST_MICROS.fetch_max(micros, Ordering::AcqRel);
        }
    }

    /// When it was minted (unix µs; strictly increasing across handles).
    pub fn minted_micros(&self) -> Option<u64> {
        self.0
            .rsplit('-')
            .next()
            .and_then(|m| m.parse::<u64>().ok())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShapeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Handles are `<digits>-<digits>`; anything else is not one of ours.
impl FromStr for ShapeHandle {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, b) = s.split_once('-').ok_or(())?;
        let digits =
            |x: &str| !x.is_empty() && x.len() <= 20 && x.bytes().all(|c| c.is_ascii_digit());
        if digits(a) && digits(b) {
            Ok(ShapeHandle(s.to_string()))
        } else {
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ShapeDefinition {
        ShapeDefinition {
            schema: "public".into(),
            table: "items".into(),
            where_clause: None,
            columns: None,
            replica: Replica::Default,
            log: LogMode::Full,
            params: Vec::new(),
            row_filter: None,
        }
    }

    #[test]
    fn handles_are_unique_and_round_trip() {
        let a = ShapeHandle::mint(&def());
        let b = ShapeHandle::mint(&def());
        assert_ne!(a, b);
        assert_eq!(a.as_str().split('-').next(), b.as_str().split('-').next());
        assert_eq!(a.to_string().parse::<ShapeHandle>(), Ok(a.clone()));
        assert!("nope".parse::<ShapeHandle>().is_err());
        assert!("1-2-3".parse::<ShapeHandle>().is_err());
        assert!("../x-1".parse::<ShapeHandle>().is_err());
    }

    #[test]
    fn hash_depends_on_every_part() {
        let mut other = def();
        other.replica = Replica::Full;
        assert_ne!(def().hash32(), other.hash32());
        assert_eq!(def().hash32(), def().hash32());
    }
}
