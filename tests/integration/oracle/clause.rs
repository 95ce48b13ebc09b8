//! The clause tree the oracle generates, and the feature groups its parts belong to. Every
//! clause is kept as a tree of atoms under AND/OR/NOT/IS tests so a failure can be shrunk, and
//! carries its text twice: for the engine (with `$n`) and for Postgres (values inlined).

/// One feature of issue 7 §3's grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// `col op const` (either side, optional cast) on int2/4/8, numeric (NaN, ±Infinity),
    /// bool, text/varchar/bpchar and uuid.
    Core,
    /// AND / OR / NOT.
    Logic,
    /// IS [NOT] NULL, IS [NOT] TRUE/FALSE/UNKNOWN, bare boolean columns.
    NullTests,
    /// `$n` in place of constants.
    Params,
    /// `< <= > >=` (and BETWEEN, greatest/least) on text: byte order under the C collation
    /// the embedded cluster uses.
    TextOrder,
    /// Expressions on both sides (`col op col`, `expr op expr`).
    ColumnCompare,
    /// `+ - * / % ^` and unary minus.
    Arithmetic,
    /// `||` on text.
    Concat,
    /// [NOT] LIKE, with ESCAPE.
    Like,
    /// [NOT] ILIKE (case folding depends on the database collation).
    ILike,
    /// IS [NOT] DISTINCT FROM.
    Distinct,
    /// [NOT] IN (list).
    InList,
    /// [NOT] BETWEEN [SYMMETRIC].
    Between,
    /// `op ANY/ALL (array)`.
    AnyAll,
    /// Array `= <> @> <@ && ||`.
    Arrays,
    /// lower upper coalesce nullif greatest least concat length array_length cardinality abs.
    Functions,
    /// date, time, timestamp, timestamptz, interval; their arithmetic, date_trunc, timezone.
    DateTime,
    /// float4/float8 (NaN, ±Infinity, -0, widening of float4 constants).
    Floats,
    Bytea,
    /// Enum values in declared order.
    Enums,
    /// A domain over int4.
    Domains,
    /// jsonb `-> ->> #>> @> ? ?| ?&` and equality.
    Jsonb,
    /// Explicit casts of expressions (`(x)::type`): narrowing numbers, to and from text,
    /// timestamps to dates.
    Casts,
}

impl Group {
    pub const ALL: &'static [Group] = &[
        Group::Core,
        Group::Logic,
        Group::NullTests,
        Group::Params,
        Group::TextOrder,
        Group::ColumnCompare,
        Group::Arithmetic,
        Group::Concat,
        Group::Like,
        Group::ILike,
        Group::Distinct,
        Group::InList,
        Group::Between,
        Group::AnyAll,
        Group::Arrays,
        Group::Functions,
        Group::DateTime,
        Group::Floats,
        Group::Bytea,
        Group::Enums,
        Group::Domains,
        Group::Jsonb,
        Group::Casts,
    ];

    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }

    pub fn set(groups: &[Group]) -> u32 {
        groups.iter().fold(0, |acc, g| acc | g.bit())
    }

    pub fn names(set: u32) -> Vec<Group> {
        Group::ALL
            .iter()
            .copied()
            .filter(|g| set & g.bit() != 0)
            .collect()
    }
}

/// SQL text twice: as the engine gets it (`$n`) and as Postgres evaluates it (values inlined
/// as untyped literals, which resolve exactly like a parameter typed by its context).
#[derive(Debug, Clone)]
pub struct S {
    pub eng: String,
    pub pg: String,
}

impl S {
    pub fn plain(s: impl Into<String>) -> S {
        let s = s.into();
        S {
            eng: s.clone(),
            pg: s,
        }
    }
}

/// A generated clause: boolean structure over atoms, kept as a tree so it can be shrunk.
#[derive(Debug, Clone)]
pub enum Clause {
    Atom(S),
    And(Vec<Clause>),
    Or(Vec<Clause>),
    Not(Box<Clause>),
    /// `(c) IS [NOT] TRUE|FALSE|UNKNOWN`.
    Test(Box<Clause>, &'static str),
}

impl Clause {
    pub fn render(&self, engine: bool) -> String {
        match self {
            Clause::Atom(s) => (if engine { &s.eng } else { &s.pg }).clone(),
            Clause::And(items) | Clause::Or(items) => {
                let sep = if matches!(self, Clause::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                let parts: Vec<String> = items.iter().map(|c| paren(c, engine)).collect();
                parts.join(sep)
            }
            Clause::Not(c) => format!("NOT {}", paren(c, engine)),
            Clause::Test(c, test) => format!("{} {test}", paren(c, engine)),
        }
    }

    /// Smaller clauses to try when shrinking a failure: each sub-clause alone, and each AND/OR
    /// without one of its items.
    pub fn shrinks(&self) -> Vec<Clause> {
        let mut out = Vec::new();
        match self {
            Clause::Atom(_) => {}
            Clause::Not(c) | Clause::Test(c, _) => {
                out.push((**c).clone());
                for s in c.shrinks() {
                    out.push(match self {
                        Clause::Not(_) => Clause::Not(Box::new(s)),
                        Clause::Test(_, t) => Clause::Test(Box::new(s), t),
                        _ => unreachable!(),
                    });
                }
            }
            Clause::And(items) | Clause::Or(items) => {
                let rebuild = |v: Vec<Clause>| match self {
                    Clause::And(_) => Clause::And(v),
                    _ => Clause::Or(v),
                };
                out.extend(items.iter().cloned());
                for i in 0..items.len() {
                    if items.len() > 2 {
                        let mut v = items.clone();
                        v.remove(i);
                        out.push(rebuild(v));
                    }
                    for s in items[i].shrinks() {
                        let mut v = items.clone();
                        v[i] = s;
                        out.push(rebuild(v));
                    }
                }
            }
        }
        out
    }
}

fn paren(c: &Clause, engine: bool) -> String {
    format!("({})", c.render(engine))
}
