//! What is wrong with a where clause: a kind a caller can branch on, the position in the
//! clause (characters from its start, as Postgres reports them) where it applies, and the
//! message. It prints as Postgres-style text: `At location 12: unknown reference foo`.

use std::fmt;

/// The kinds of where-clause errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhereErrorKind {
    /// Not a single boolean expression Postgres' grammar accepts.
    Syntax,
    /// A column the table does not have.
    UnknownColumn,
    /// A table (named by a subquery) the database does not have.
    UnknownTable,
    /// A function shapesync does not know.
    UnknownFunction,
    /// Valid SQL that shapesync does not evaluate (yet): refused rather than guessed.
    Unsupported,
    /// Operands of types that do not fit the operator, function or cast.
    Type,
    /// A constant that is not a valid value of its type.
    InvalidValue,
    /// A missing or invalid `$n` parameter.
    Parameter,
    /// Text ordering or case mapping under a collation shapesync cannot reproduce.
    Collation,
    /// Anything else.
    Invalid,
}

/// A where clause that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhereError {
    pub kind: WhereErrorKind,
    /// Characters from the start of the clause, when the error has a place.
    pub position: Option<usize>,
    pub message: String,
}

/// A place in the where clause (from a `pg_query` location), or none. It prints as the
/// message prefix Postgres uses (`At location 3: `).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc(pub Option<usize>);

impl Loc {
    pub const NONE: Loc = Loc(None);
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "At location {p}: "),
            None => Ok(()),
        }
    }
}

impl WhereError {
    pub fn new(kind: WhereErrorKind, at: Loc, message: impl Into<String>) -> Self {
        WhereError {
            kind,
            position: at.0,
            message: message.into(),
        }
    }

    /// The same error placed at `at`, unless it has a place already.
    pub fn at(mut self, at: Loc) -> Self {
        if self.position.is_none() {
            self.position = at.0;
        }
        self
    }
}

impl fmt::Display for WhereError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Loc(self.position), self.message)
    }
}

impl std::error::Error for WhereError {}
