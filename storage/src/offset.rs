//! `LogOffset`: a position in a shape log, as defined by protocol.md §3.1.
//!
//! An offset is either the virtual "before everything" position (`-1`) or a pair
//! `<tx>_<op>` where `op` may be infinite (`<tx>_inf`). `tx = 0` is the snapshot part of the
//! log (chunk `k` ends at `0_k`, the whole snapshot ends at `0_inf`); `tx > 0` is the commit LSN
//! of a replicated transaction. Ordering is lexicographic on `(tx, op)` with `inf` above every
//! finite op, and `-1` below everything. The text form round-trips through `Display`/`FromStr`.

use std::fmt;
use std::str::FromStr;

/// A position in a shape log. See the module docs for the text form and ordering.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogOffset {
    pos: Pos,
}

/// Private representation. The derived `Ord` on enums compares the variant first (in
/// declaration order), then the fields, which gives exactly the protocol ordering.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Pos {
    BeforeAll,
    At { tx: u64, op: Op },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Finite(u64),
    Inf,
}

impl LogOffset {
    /// `-1`: before every entry of the log; sorts first.
    pub const BEFORE_ALL: LogOffset = LogOffset {
        pos: Pos::BeforeAll,
    };
    /// `0_inf`: the end of the snapshot part, and the latest offset of a log without changes.
    pub const LAST_BEFORE_REAL: LogOffset = LogOffset::tx_inf(0);

    /// `<tx>_<op>`.
    pub const fn new(tx: u64, op: u64) -> LogOffset {
        LogOffset {
            pos: Pos::At {
                tx,
                op: Op::Finite(op),
            },
        }
    }

    /// `0_k`: the end of snapshot chunk `k`.
    pub const fn snapshot_chunk(k: u64) -> LogOffset {
        LogOffset::new(0, k)
    }

    /// `<tx>_inf`: after every op of transaction `tx`.
    pub const fn tx_inf(tx: u64) -> LogOffset {
        LogOffset {
            pos: Pos::At { tx, op: Op::Inf },
        }
    }

    /// The transaction part; 0 for `BEFORE_ALL` and for snapshot offsets.
    pub fn tx(&self) -> u64 {
        match self.pos {
            Pos::BeforeAll => 0,
            Pos::At { tx, .. } => tx,
        }
    }

    /// The op part; `None` when it is `inf`, and for `BEFORE_ALL`.
    pub fn op(&self) -> Option<u64> {
        match self.pos {
            Pos::At {
                op: Op::Finite(op), ..
            } => Some(op),
            _ => None,
        }
    }

    pub fn is_before_all(&self) -> bool {
        matches!(self.pos, Pos::BeforeAll)
    }

    /// True for `0_k` and `0_inf` (the snapshot part), false for `BEFORE_ALL`.
    pub fn is_snapshot(&self) -> bool {
        matches!(self.pos, Pos::At { tx: 0, .. })
    }
}

impl fmt::Display for LogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Pos::BeforeAll => f.write_str("-1"),
            Pos::At {
                tx,
                op: Op::Finite(op),
            } => write!(f, "{tx}_{op}"),
            Pos::At { tx, op: Op::Inf } => write!(f, "{tx}_inf"),
        }
    }
}

/// The text was not a valid offset (`-1`, `-1_0`, `<dec>_<dec>` or `<dec>_inf`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid log offset {0:?}")]
pub struct ParseOffsetError(pub String);

/// Strictly decimal digits (no sign, no spaces), leading zeros allowed, no overflow.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl FromStr for LogOffset {
    type Err = ParseOffsetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "-1" || s == "-1_0" {
            return Ok(LogOffset::BEFORE_ALL);
        }
        let err = || ParseOffsetError(s.to_owned());
        let (tx, op) = s.split_once('_').ok_or_else(err)?;
        let tx = parse_decimal(tx).ok_or_else(err)?;
        if op == "inf" {
            return Ok(LogOffset::tx_inf(tx));
        }
        let op = parse_decimal(op).ok_or_else(err)?;
        Ok(LogOffset::new(tx, op))
    }
}
