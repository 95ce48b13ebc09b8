//! A where clause in disjunctive normal form, numbered as the reference server numbers it: the
//! structure that a subquery shape's `tags`, `active_conditions` and move patterns refer to.
//!
//! `NOT` is pushed down to the leaves (De Morgan; double negation cancels), `AND` distributes
//! over `OR`, and an `OR` lists its operands' disjuncts left first. A leaf is any other
//! expression (a comparison, `LIKE`, `IS NULL`, a membership `IN (SELECT …)`…); an `IN` list
//! and `BETWEEN` are the `OR`/`AND` of comparisons they are typed as. Positions number the
//! leaves of every disjunct in order, disjunct after disjunct, so a leaf in two disjuncts takes
//! two positions. Kleene's logic keeps De Morgan's and the distributive laws, so a row is in the
//! clause exactly when some disjunct has all its positions true ([`Dnf::includes`]).

use crate::error::{Loc, WhereError, WhereErrorKind};
use crate::eval::eval;
use crate::expr::Expr;
use crate::row::Row;
use crate::view::KeyKind;

/// The most disjuncts a clause with subqueries may have.
pub const MAX_DISJUNCTS: u128 = 100;

/// One literal of the normal form.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub leaf: Expr,
    /// A `NOT` landed on the leaf.
    pub negated: bool,
    /// The disjunct it belongs to.
    pub disjunct: usize,
}

impl Position {
    /// The subquery the position tests membership in (the clause's dependency number).
    pub fn dep(&self) -> Option<usize> {
        match &self.leaf {
            Expr::InSubquery { dep, .. } => Some(*dep),
            _ => None,
        }
    }

    /// The outer column names a membership position compares (for the row form's hash).
    fn link_names(&self) -> Vec<String> {
        match &self.leaf {
            Expr::InSubquery { names, .. } => names.to_vec(),
            _ => Vec::new(),
        }
    }

    /// The outer columns a membership position compares.
    pub fn link_columns(&self) -> Option<&[usize]> {
        match &self.leaf {
            Expr::InSubquery { columns, .. } => Some(columns),
            _ => None,
        }
    }

    /// The key kinds of the link columns' values (a membership position).
    fn kinds(&self) -> Vec<KeyKind> {
        match &self.leaf {
            Expr::InSubquery { sub, .. } => sub
                .columns
                .iter()
                .map(|c| KeyKind::of(&sub.table, *c))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The position's effective truth for `row` (polarity applied): only TRUE counts.
    pub fn holds(&self, row: &dyn Row) -> bool {
        let v = eval(&self.leaf, row);
        if self.negated {
            v == Ok(Some(false))
        } else {
            v == Ok(Some(true))
        }
    }
}

/// A clause in normal form.
#[derive(Debug, Clone, PartialEq)]
pub struct Dnf {
    pub positions: Vec<Position>,
    /// Per disjunct, its positions (ascending, contiguous).
    pub disjuncts: Vec<Vec<usize>>,
}

/// How many disjuncts `e` expands to (saturating), without expanding it.
fn count(e: &Expr, negated: bool) -> u128 {
    let sum = |items: &[Expr]| {
        items
            .iter()
            .fold(0u128, |acc, i| acc.saturating_add(count(i, negated)))
    };
    let product = |items: &[Expr]| {
        items
            .iter()
            .fold(1u128, |acc, i| acc.saturating_mul(count(i, negated)))
    };
    match e {
        Expr::Or(items) if !negated => sum(items),
        Expr::Or(items) => product(items),
        Expr::And(items) if !negated => product(items),
        Expr::And(items) => sum(items),
        Expr::Not(inner) => count(inner, !negated),
        _ => 1,
    }
}

type Conj<'e> = Vec<(&'e Expr, bool)>;

fn concat<'e>(items: &'e [Expr], negated: bool) -> Vec<Conj<'e>> {
    items.iter().flat_map(|i| expand(i, negated)).collect()
}

fn cross<'e>(items: &'e [Expr], negated: bool) -> Vec<Conj<'e>> {
    let mut acc: Vec<Conj<'e>> = vec![Vec::new()];
    for i in items {
        let parts = expand(i, negated);
        let mut next = Vec::with_capacity(acc.len() * parts.len());
        for a in &acc {
            for p in &parts {
                let mut c = a.clone();
                c.extend_from_slice(p);
                next.push(c);
            }
        }
        acc = next;
    }
    acc
}

fn expand(e: &Expr, negated: bool) -> Vec<Conj<'_>> {
    match e {
        Expr::Or(items) if !negated => concat(items, negated),
        Expr::Or(items) => cross(items, negated),
        Expr::And(items) if !negated => cross(items, negated),
        Expr::And(items) => concat(items, negated),
        Expr::Not(inner) => expand(inner, !negated),
        leaf => vec![vec![(leaf, negated)]],
    }
}

impl Dnf {
    /// The normal form of `expr`, or the reference's error when it has more than
    /// [`MAX_DISJUNCTS`] disjuncts or a subquery used both with and without `NOT`.
    pub fn of(expr: &Expr) -> Result<Dnf, WhereError> {
        let n = count(expr, false);
        if n > MAX_DISJUNCTS {
            return Err(WhereError::new(
                WhereErrorKind::Unsupported,
                Loc::NONE,
                format!(
                    "WHERE clause too complex for DNF decomposition ({n} disjuncts exceeds limit of {MAX_DISJUNCTS})"
                ),
            ));
        }
        let mut positions = Vec::new();
        let mut disjuncts = Vec::new();
        for (d, conj) in expand(expr, false).into_iter().enumerate() {
            let mut ps = Vec::with_capacity(conj.len());
            for (leaf, negated) in conj {
                ps.push(positions.len());
                positions.push(Position {
                    leaf: leaf.clone(),
                    negated,
                    disjunct: d,
                });
            }
            disjuncts.push(ps);
        }
        let dnf = Dnf {
            positions,
            disjuncts,
        };
        for p in &dnf.positions {
            if let Some(dep) = p.dep() {
                if dnf
                    .positions
                    .iter()
                    .any(|q| q.dep() == Some(dep) && q.negated != p.negated)
                {
                    return Err(WhereError::new(
                        WhereErrorKind::Unsupported,
                        Loc::NONE,
                        "a subquery dependency cannot be used with both positive and negative polarity in the same filter",
                    ));
                }
            }
        }
        Ok(dnf)
    }

    /// Each position's effective truth for `row`.
    pub fn active_conditions(&self, row: &dyn Row) -> Vec<bool> {
        self.positions.iter().map(|p| p.holds(row)).collect()
    }

    /// Is a row with these position truths in the clause (some disjunct all true)?
    pub fn includes(&self, active: &[bool]) -> bool {
        self.disjuncts
            .iter()
            .any(|d| d.iter().all(|&p| active.get(p).copied().unwrap_or(false)))
    }

    /// The positions testing membership in dependency `dep`.
    pub fn positions_of(&self, dep: usize) -> Vec<usize> {
        (0..self.positions.len())
            .filter(|&p| self.positions[p].dep() == Some(dep))
            .collect()
    }

    /// The value hash of a membership position's link values (text form, one per link
    /// column): 32 hex digits of MD5 over the salt and the canonical values (`v:<key>` or
    /// `NULL`; the row form names each outer column), so values equal in SQL hash alike
    /// whichever path (snapshot, stream, pattern) their text came from.
    pub fn value_hash(&self, salt: &str, position: usize, values: &[Option<&[u8]>]) -> String {
        let p = &self.positions[position];
        let mut input = salt.as_bytes().to_vec();
        let kinds = p.kinds();
        let names = p.link_names();
        for (i, v) in values.iter().enumerate() {
            if names.len() > 1 {
                input.extend_from_slice(names[i].as_bytes());
                input.push(b':');
            }
            match (v, kinds.get(i)) {
                (Some(v), Some(k)) => {
                    input.extend_from_slice(b"v:");
                    input.extend_from_slice(&k.key(v));
                }
                (Some(v), None) => {
                    input.extend_from_slice(b"v:");
                    input.extend_from_slice(v);
                }
                (None, _) => input.extend_from_slice(b"NULL"),
            }
        }
        format!("{:x}", md5::compute(&input))
    }

    /// A row's tags: one string per disjunct of [`Self::positions`]`.len()` slots joined by
    /// `/`: the value hash for a membership of this disjunct, `1` for another literal of it,
    /// empty for the other disjuncts' positions. `links[p]` holds a membership position's
    /// link values.
    pub fn tags(&self, salt: &str, links: &[Option<Vec<Option<&[u8]>>>]) -> Vec<String> {
        self.disjuncts
            .iter()
            .enumerate()
            .map(|(d, _)| {
                let mut tag = String::new();
                for (p, pos) in self.positions.iter().enumerate() {
                    if p > 0 {
                        tag.push('/');
                    }
                    if pos.disjunct != d {
                        continue;
                    }
                    match links.get(p).and_then(Option::as_ref) {
                        Some(values) if pos.dep().is_some() => {
                            tag.push_str(&self.value_hash(salt, p, values))
                        }
                        _ => tag.push('1'),
                    }
                }
                tag
            })
            .collect()
    }

    /// Is dependency `dep` used under `NOT` (a value entering it moves rows out)?
    pub fn negated(&self, dep: usize) -> bool {
        self.positions
            .iter()
            .any(|p| p.dep() == Some(dep) && p.negated)
    }
}
