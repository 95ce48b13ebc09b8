//! Random, well-typed where clauses over the oracle's table, built from feature groups. Every
//! clause records the groups it used, so the oracle knows whether the engine must accept it
//! (all its groups enabled) or may reject it (some group not claimed by the engine yet).

pub use super::clause::{Clause, Group, S};
use super::Rng;

/// `format!` over both texts of [`S`] arguments.
macro_rules! s {
    ($fmt:literal $(, $a:expr)*) => {
        S { eng: format!($fmt $(, $a.eng)*), pg: format!($fmt $(, $a.pg)*) }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Int,
    Num,
    Float,
    Bool,
    Text,
    Uuid,
    Bytea,
    Date,
    Time,
    Ts,
    Tz,
    Interval,
    Enum,
}

impl Ty {
    fn group(self) -> Group {
        match self {
            Ty::Int | Ty::Num | Ty::Bool | Ty::Text | Ty::Uuid => Group::Core,
            Ty::Float => Group::Floats,
            Ty::Bytea => Group::Bytea,
            Ty::Date | Ty::Time | Ty::Ts | Ty::Tz | Ty::Interval => Group::DateTime,
            Ty::Enum => Group::Enums,
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Ty::Int => &["id", "i2", "i4", "i8"],
            Ty::Num => &["num"],
            Ty::Float => &["f4", "f8"],
            Ty::Bool => &["b"],
            Ty::Text => &["t", "vc", "bc"],
            Ty::Uuid => &["u"],
            Ty::Bytea => &["by"],
            Ty::Date => &["d"],
            Ty::Time => &["tm"],
            Ty::Ts => &["ts"],
            Ty::Tz => &["tz"],
            Ty::Interval => &["iv"],
            Ty::Enum => &["e"],
        }
    }

    fn is_number(self) -> bool {
        matches!(self, Ty::Int | Ty::Num | Ty::Float)
    }
}

const ALL_TYPES: &[Ty] = &[
    Ty::Int,
    Ty::Num,
    Ty::Float,
    Ty::Bool,
    Ty::Text,
    Ty::Uuid,
    Ty::Bytea,
    Ty::Date,
    Ty::Time,
    Ty::Ts,
    Ty::Tz,
    Ty::Interval,
    Ty::Enum,
];

/// A constant: its SQL form and, when it may stand for a `$n` parameter, the parameter text.
struct Lit {
    sql: String,
    param: Option<String>,
}

fn lit(sql: &str) -> Lit {
    Lit {
        sql: sql.to_string(),
        param: None,
    }
}

/// A quoted constant that can also be sent as a parameter.
fn qlit(text: &str) -> Lit {
    Lit {
        sql: format!("'{}'", text.replace('\'', "''")),
        param: Some(text.to_string()),
    }
}

const OPS: &[&str] = &["=", "<>", "<", ">", "<=", ">=", "!="];
const TESTS: &[&str] = &[
    "IS TRUE",
    "IS NOT TRUE",
    "IS FALSE",
    "IS NOT FALSE",
    "IS UNKNOWN",
    "IS NOT UNKNOWN",
];

/// The generator for one clause.
pub struct Gen<'a> {
    rng: &'a mut Rng,
    allowed: u32,
    /// Groups the clause uses.
    pub used: u32,
    /// Values of `$1..$n`.
    pub params: Vec<String>,
}

impl<'a> Gen<'a> {
    pub fn new(rng: &'a mut Rng, allowed: u32) -> Self {
        Gen {
            rng,
            allowed: allowed | Group::Core.bit(),
            used: Group::Core.bit(),
            params: Vec::new(),
        }
    }

    fn has(&self, g: Group) -> bool {
        self.allowed & g.bit() != 0
    }

    fn mark(&mut self, g: Group) {
        self.used |= g.bit();
    }

    fn chance(&mut self, pct: usize) -> bool {
        self.rng.below(100) < pct
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.below(items.len())]
    }

    /// A boolean clause of at most `depth` levels of AND/OR/NOT.
    pub fn clause(&mut self, depth: u32) -> Clause {
        if depth == 0 || !self.has(Group::Logic) || self.chance(35) {
            return self.atom(depth);
        }
        self.mark(Group::Logic);
        match self.rng.below(5) {
            0 | 1 => {
                let n = 2 + self.rng.below(2);
                Clause::And((0..n).map(|_| self.clause(depth - 1)).collect())
            }
            2 | 3 => {
                let n = 2 + self.rng.below(2);
                Clause::Or((0..n).map(|_| self.clause(depth - 1)).collect())
            }
            _ => Clause::Not(Box::new(self.clause(depth - 1))),
        }
    }

    fn ty(&mut self) -> Ty {
        let types: Vec<Ty> = ALL_TYPES
            .iter()
            .copied()
            .filter(|t| self.has(t.group()))
            .collect();
        let ty = self.pick(&types);
        self.mark(ty.group());
        ty
    }

    fn column(&mut self, ty: Ty) -> S {
        if ty == Ty::Int && self.has(Group::Domains) && self.chance(20) {
            self.mark(Group::Domains);
            return S::plain("dm");
        }
        S::plain(self.pick(ty.columns()))
    }

    /// A constant of `ty`, sometimes as a `$n` parameter.
    fn constant(&mut self, ty: Ty) -> S {
        let l = self.literal(ty);
        match l.param {
            Some(p) if self.has(Group::Params) && self.chance(25) => {
                self.mark(Group::Params);
                self.params.push(p);
                S {
                    eng: format!("${}", self.params.len()),
                    pg: l.sql,
                }
            }
            _ => S::plain(l.sql),
        }
    }

    fn literal(&mut self, ty: Ty) -> Lit {
        let r = self.rng.below(100);
        match ty {
            Ty::Int => match r {
                0..=39 => {
                    let v = self.pick(&["0", "-1", "1", "7", "42", "100", "-5", "1000"]);
                    Lit {
                        sql: v.to_string(),
                        param: Some(v.to_string()),
                    }
                }
                40..=59 => lit(self.pick(&[
                    "32767",
                    "-32768",
                    "2147483647",
                    "-2147483648",
                    "9223372036854775807",
                    "-9223372036854775808",
                    "4294967296",
                ])),
                60..=79 => lit(self.pick(&["1.5", "-0.5", "41.999", "7.0", "0.0"])),
                80..=89 => qlit(self.pick(&["7", "42", "-1", "0"])),
                _ => lit(self.pick(&["7::int8", "'42'::int4", "CAST(-1 AS int2)", "100::bigint"])),
            },
            Ty::Num => match r {
                0..=69 => lit(self.pick(&[
                    "0",
                    "1.5",
                    "1.50",
                    "-1",
                    "42",
                    "7",
                    "-0.000001",
                    "0.000000000000000000000000000001",
                    "123456789012345678901234567890.123456789",
                    "-98765432109876543210",
                    "1e3",
                    "9223372036854775807",
                ])),
                70..=89 => qlit(self.pick(&["NaN", "Infinity", "-Infinity", "1.500", "42", "-1"])),
                _ => lit(self.pick(&["'NaN'::numeric", "1.5::numeric", "'7.000'::decimal"])),
            },
            Ty::Float => match r {
                0..=49 => {
                    lit(self.pick(&["0", "1.5", "0.1", "42", "-1", "1e308", "3.4e38", "1e-45"]))
                }
                50..=79 => qlit(self.pick(&["NaN", "Infinity", "-Infinity", "-0", "0.1", "1.5"])),
                _ => {
                    lit(self.pick(&["'0.1'::float4", "0.1::float8", "'NaN'::float8", "1.5::real"]))
                }
            },
            Ty::Bool => match r {
                0..=59 => lit(self.pick(&["true", "false"])),
                _ => qlit(self.pick(&["t", "f", "yes", "off", "TRUE", "0"])),
            },
            Ty::Text => qlit(self.pick(&[
                "", " ", "a", "abc", "ABC", "Abc", "ab", "ab ", "ab  ", "it's", "Ä", "äbc", "日本",
                "a%b", "a\\b", "42", "zz", "x y", "ok", "abcde",
            ])),
            Ty::Uuid => qlit(self.pick(&[
                "00000000-0000-0000-0000-000000000000",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
                "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
                "a0eebc999c0b4ef8bb6d6bb9bd380a11",
                "ffffffff-ffff-ffff-ffff-ffffffffffff",
                "80000000-0000-0000-0000-000000000000",
            ])),
            Ty::Bytea => qlit(self.pick(&["\\x", "\\x00", "\\x00ff", "\\x41", "\\xDEADBEEF", "A"])),
            Ty::Date => qlit(self.pick(&[
                "2020-01-01",
                "2024-02-29",
                "1999-12-31",
                "infinity",
                "-infinity",
                "epoch",
                "2020-01-02",
            ])),
            Ty::Time => qlit(self.pick(&[
                "12:00",
                "00:00:00",
                "23:59:59.999999",
                "24:00",
                "12:34:56.789",
            ])),
            Ty::Ts => qlit(self.pick(&[
                "2020-01-01",
                "2020-01-01 12:00:00.5",
                "2024-02-29 01:02:03",
                "1999-12-31 23:59:59",
                "infinity",
            ])),
            Ty::Tz => qlit(self.pick(&[
                "2020-01-01 00:00+00",
                "2020-01-01 00:00",
                "2019-12-31 19:00-05",
                "2024-03-10 10:30Z",
                "infinity",
            ])),
            Ty::Interval => qlit(self.pick(&[
                "1 day",
                "24 hours",
                "1 mon",
                "30 days",
                "0",
                "-1 day",
                "P1D",
                "1 year",
                "00:00:00.000001",
            ])),
            Ty::Enum => qlit(self.pick(&["sad", "ok", "happy"])),
        }
    }

    /// An expression of type `ty`: a column, or (with the groups that allow it) arithmetic,
    /// a function call, concatenation or date/time arithmetic over smaller expressions.
    fn operand(&mut self, ty: Ty, depth: u32) -> S {
        if depth == 0 || self.chance(50) {
            return self.column(ty);
        }
        let mut kinds: Vec<u8> = Vec::new();
        if self.has(Group::Arithmetic) && ty.is_number() {
            kinds.push(0);
        }
        if self.has(Group::Functions) && matches!(ty, Ty::Int | Ty::Num | Ty::Text | Ty::Float) {
            kinds.push(1);
        }
        if self.has(Group::Concat) && ty == Ty::Text {
            kinds.push(2);
        }
        if self.has(Group::DateTime) && matches!(ty, Ty::Date | Ty::Ts | Ty::Tz | Ty::Interval) {
            kinds.push(3);
        }
        if self.has(Group::Casts)
            && matches!(
                ty,
                Ty::Int | Ty::Num | Ty::Float | Ty::Text | Ty::Date | Ty::Ts
            )
        {
            kinds.push(4);
        }
        if kinds.is_empty() {
            return self.column(ty);
        }
        match self.pick(&kinds) {
            4 => self.cast(ty, depth - 1),
            0 => self.arithmetic(ty, depth - 1),
            1 => self.function(ty, depth - 1),
            2 => {
                self.mark(Group::Concat);
                let a = self.operand(Ty::Text, depth - 1);
                let b = if self.chance(50) {
                    self.constant(Ty::Text)
                } else {
                    self.operand(Ty::Text, depth - 1)
                };
                s!("({} || {})", a, b)
            }
            _ => self.datetime(ty, depth - 1),
        }
    }

    fn arithmetic(&mut self, ty: Ty, depth: u32) -> S {
        self.mark(Group::Arithmetic);
        let a = self.operand(ty, depth);
        if self.chance(15) {
            return s!("(- {})", a);
        }
        let ops: &[&str] = match ty {
            Ty::Int => &["+", "-", "*", "/", "%"],
            Ty::Num => &["+", "-", "*", "/", "%", "^"],
            _ => &["+", "-", "*", "/", "^"],
        };
        let op = S::plain(self.pick(ops));
        let b = if op.eng == "^" {
            S::plain(self.pick(&["0", "1", "2", "3"]))
        } else if self.chance(50) {
            S::plain(self.pick(&["0", "1", "2", "3", "7", "-1", "10"]))
        } else {
            self.operand(ty, depth)
        };
        if self.chance(30) {
            // A third operand without parentheses: Postgres' precedence decides.
            // Not `^`: `x % 1 ^ 3` would raise integer literals to float8.
            let no_pow: Vec<&str> = ops.iter().copied().filter(|o| *o != "^").collect();
            let op2 = S::plain(self.pick(&no_pow));
            let c = S::plain(self.pick(&["1", "2", "3"]));
            return s!("({} {} {} {} {})", a, op, b, op2, c);
        }
        s!("({} {} {})", a, op, b)
    }

    fn function(&mut self, ty: Ty, depth: u32) -> S {
        self.mark(Group::Functions);
        let a = self.operand(ty, depth);
        match ty {
            Ty::Text => match self.rng.below(6) {
                0 => s!("lower({})", a),
                1 => s!("upper({})", a),
                2 => {
                    let c = self.constant(Ty::Text);
                    s!("coalesce({}, {})", a, c)
                }
                3 => {
                    let c = self.constant(Ty::Text);
                    s!("nullif({}, {})", a, c)
                }
                4 => {
                    self.ordering(Ty::Text, "<");
                    let b = self.operand(Ty::Text, depth);
                    let f = S::plain(self.pick(&["greatest", "least"]));
                    s!("{}({}, {})", f, a, b)
                }
                _ => {
                    let n = self.operand(Ty::Int, depth);
                    s!("concat({}, {})", a, n)
                }
            },
            Ty::Int => match self.rng.below(7) {
                0 => s!("abs({})", a),
                1 => s!("coalesce({}, 0)", a),
                2 => s!("nullif({}, 7)", a),
                3 => {
                    let b = self.operand(Ty::Int, depth);
                    let f = S::plain(self.pick(&["greatest", "least"]));
                    s!("{}({}, {})", f, a, b)
                }
                4 => {
                    let t = self.operand(Ty::Text, depth);
                    s!("length({})", t)
                }
                5 => S::plain("array_length(ia, 1)"),
                _ => S::plain("cardinality(ia)"),
            },
            _ => match self.rng.below(3) {
                0 => s!("abs({})", a),
                1 => s!("coalesce({}, 0)", a),
                _ => {
                    let b = self.operand(ty, depth);
                    let f = S::plain(self.pick(&["greatest", "least"]));
                    s!("{}({}, {})", f, a, b)
                }
            },
        }
    }

    fn datetime(&mut self, ty: Ty, depth: u32) -> S {
        self.mark(Group::DateTime);
        match ty {
            Ty::Date => {
                let a = self.operand(Ty::Date, depth);
                let op = S::plain(self.pick(&["+", "-"]));
                let n = S::plain(self.pick(&["1", "30", "365", "0"]));
                s!("({} {} {})", a, op, n)
            }
            Ty::Ts => match self.rng.below(5) {
                0 | 1 => {
                    let a = self.operand(Ty::Ts, depth);
                    let op = S::plain(self.pick(&["+", "-"]));
                    let i = self.interval_operand(depth);
                    s!("({} {} {})", a, op, i)
                }
                2 => {
                    let a = self.operand(Ty::Ts, depth);
                    let f = S::plain(self.pick(&["'day'", "'month'", "'hour'", "'year'"]));
                    s!("date_trunc({}, {})", f, a)
                }
                3 => {
                    let a = self.operand(Ty::Tz, depth);
                    let z = S::plain(self.pick(&["'UTC'", "'America/New_York'", "'Asia/Tokyo'"]));
                    s!("({} AT TIME ZONE {})", a, z)
                }
                _ => {
                    let a = self.operand(Ty::Date, depth);
                    s!("({} + time '06:30')", a)
                }
            },
            Ty::Tz => match self.rng.below(4) {
                0 | 1 => {
                    let a = self.operand(Ty::Tz, depth);
                    let op = S::plain(self.pick(&["+", "-"]));
                    let i = self.interval_operand(depth);
                    s!("({} {} {})", a, op, i)
                }
                2 => {
                    let a = self.operand(Ty::Tz, depth);
                    let f = S::plain(self.pick(&["'day'", "'month'", "'hour'"]));
                    s!("date_trunc({}, {})", f, a)
                }
                _ => {
                    let a = self.operand(Ty::Ts, depth);
                    let z = S::plain(self.pick(&["'UTC'", "'Europe/Berlin'", "'-03:00'"]));
                    s!("timezone({}, {})", z, a)
                }
            },
            _ => match self.rng.below(3) {
                0 => {
                    let a = self.operand(Ty::Interval, depth);
                    let n = S::plain(self.pick(&["2", "-1", "0.5"]));
                    s!("({} * {})", a, n)
                }
                1 => {
                    let a = self.operand(Ty::Ts, depth);
                    let b = self.operand(Ty::Ts, depth);
                    s!("({} - {})", a, b)
                }
                _ => {
                    let a = self.operand(Ty::Interval, depth);
                    s!("(- {})", a)
                }
            },
        }
    }

    /// `(x)::type` producing `ty` from an expression of another type.
    fn cast(&mut self, ty: Ty, depth: u32) -> S {
        self.mark(Group::Casts);
        let (src, target) = match ty {
            Ty::Int => self.pick(&[
                (Ty::Num, "int4"),
                (Ty::Num, "int8"),
                (Ty::Float, "int4"),
                (Ty::Float, "int8"),
                (Ty::Int, "int2"),
            ]),
            Ty::Num => self.pick(&[(Ty::Int, "numeric"), (Ty::Float, "numeric")]),
            Ty::Float => self.pick(&[
                (Ty::Num, "float8"),
                (Ty::Num, "real"),
                (Ty::Float, "float4"),
                (Ty::Int, "float4"),
            ]),
            Ty::Text => self.pick(&[
                (Ty::Int, "text"),
                (Ty::Num, "text"),
                (Ty::Bool, "text"),
                (Ty::Uuid, "text"),
                (Ty::Date, "text"),
                (Ty::Ts, "text"),
                (Ty::Tz, "text"),
                (Ty::Text, "varchar"),
                (Ty::Enum, "text"),
            ]),
            Ty::Date => self.pick(&[(Ty::Tz, "date"), (Ty::Ts, "date"), (Ty::Text, "date")]),
            _ => self.pick(&[(Ty::Tz, "timestamp"), (Ty::Date, "timestamp")]),
        };
        if src.group() != Group::Core {
            self.mark(src.group());
        }
        let a = if src == Ty::Text && ty == Ty::Date {
            // Text that parses as a date (other text would raise an error on every row).
            S::plain("(d::text)")
        } else {
            self.operand(src, depth)
        };
        let target = S::plain(target);
        s!("({})::{}", a, target)
    }

    fn interval_operand(&mut self, depth: u32) -> S {
        if self.chance(50) {
            self.operand(Ty::Interval, depth)
        } else {
            let l = self.literal(Ty::Interval);
            S::plain(format!("interval {}", l.sql))
        }
    }

    /// One atom: a predicate without AND/OR/NOT at its top.
    fn atom(&mut self, depth: u32) -> Clause {
        let mut kinds: Vec<Group> = vec![Group::Core; 4];
        for g in [
            Group::NullTests,
            Group::Distinct,
            Group::Like,
            Group::InList,
            Group::Between,
            Group::AnyAll,
            Group::Arrays,
            Group::Jsonb,
        ] {
            if self.has(g) {
                kinds.push(g);
            }
        }
        let kind = self.pick(&kinds);
        if kind != Group::Core {
            self.mark(kind);
        }
        let d = depth.min(2);
        Clause::Atom(match kind {
            Group::NullTests => return self.null_test(depth),
            Group::Distinct => {
                let ty = self.ty();
                let a = self.operand(ty, d);
                let b = if self.chance(30) {
                    S::plain("NULL")
                } else {
                    self.rhs(ty, d)
                };
                let not = S::plain(self.pick(&["", "NOT "]));
                s!("{} IS {}DISTINCT FROM {}", a, not, b)
            }
            Group::Like => {
                let a = self.operand(Ty::Text, d);
                let not = S::plain(self.pick(&["", "NOT "]));
                let op = S::plain(self.pick(&["LIKE", "ILIKE"]));
                if op.eng == "ILIKE" {
                    self.mark(Group::ILike);
                }
                let (pat, esc) = self.pick(&[
                    ("%", ""),
                    ("", ""),
                    ("a%", ""),
                    ("A%", ""),
                    ("%b%", ""),
                    ("a_c", ""),
                    ("_", ""),
                    ("__", ""),
                    ("%\\%%", ""),
                    ("%#%%", " ESCAPE '#'"),
                    ("a#_b", " ESCAPE '#'"),
                    ("a\\b", " ESCAPE ''"),
                    ("ab", ""),
                    ("ab  ", ""),
                    ("ä%", ""),
                    ("Ä%", ""),
                    ("%''s", ""),
                    ("%日%", ""),
                    ("abc", ""),
                ]);
                let pat = S::plain(format!("'{pat}'"));
                let esc = S::plain(esc);
                s!("{} {}{} {}{}", a, not, op, pat, esc)
            }
            Group::InList => {
                let ty = self.ty();
                let a = self.operand(ty, d);
                let n = 1 + self.rng.below(4);
                let mut items: Vec<S> = (0..n).map(|_| self.constant(ty)).collect();
                if self.chance(20) {
                    items.push(S::plain("NULL"));
                }
                let list = S {
                    eng: items
                        .iter()
                        .map(|i| i.eng.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    pg: items
                        .iter()
                        .map(|i| i.pg.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                let not = S::plain(self.pick(&["", "NOT "]));
                s!("{} {}IN ({})", a, not, list)
            }
            Group::Between => {
                let ty = self.ty();
                let a = self.operand(ty, d);
                let lo = self.rhs(ty, d);
                let hi = self.rhs(ty, d);
                let not = S::plain(self.pick(&["", "NOT "]));
                let sym = S::plain(self.pick(&["", "SYMMETRIC "]));
                self.ordering(ty, "<");
                s!("{} {}BETWEEN {}{} AND {}", a, not, sym, lo, hi)
            }
            Group::AnyAll => self.any_all(d),
            Group::Arrays => self.arrays(),
            Group::Jsonb => self.jsonb(),
            _ => {
                let ty = self.ty();
                let a = self.operand(ty, d);
                let b = self.rhs(ty, d);
                let op = S::plain(self.pick(OPS));
                self.ordering(ty, &op.eng);
                if self.chance(30) {
                    s!("{} {} {}", b, op, a)
                } else {
                    s!("{} {} {}", a, op, b)
                }
            }
        })
    }

    /// Ordering comparisons on text need the TextOrder group.
    fn ordering(&mut self, ty: Ty, op: &str) {
        if ty == Ty::Text && !matches!(op, "=" | "<>" | "!=") {
            self.mark(Group::TextOrder);
        }
    }

    /// The other side of a comparison: a constant, or another expression of a compatible type.
    fn rhs(&mut self, ty: Ty, depth: u32) -> S {
        if self.has(Group::ColumnCompare) && self.chance(35) {
            self.mark(Group::ColumnCompare);
            let other = match ty {
                Ty::Int | Ty::Num => self.pick(&[Ty::Int, Ty::Num]),
                _ => ty,
            };
            return self.operand(other, depth);
        }
        self.constant(ty)
    }

    fn null_test(&mut self, depth: u32) -> Clause {
        match self.rng.below(4) {
            0 | 1 => {
                let ty = self.ty();
                let a = self.operand(ty, depth.min(2));
                let not = S::plain(self.pick(&["", "NOT "]));
                Clause::Atom(s!("{} IS {}NULL", a, not))
            }
            2 => Clause::Atom(S::plain(self.pick(&["b", "(b)", "b IS TRUE"]))),
            _ => {
                let inner = self.clause(depth.saturating_sub(1));
                Clause::Test(Box::new(inner), self.pick(TESTS))
            }
        }
    }

    fn any_all(&mut self, depth: u32) -> S {
        let op = S::plain(self.pick(OPS));
        let q = S::plain(self.pick(&["ANY", "ALL", "SOME"]));
        if self.chance(50) {
            self.mark(Group::Core);
            let a = self.operand(Ty::Int, depth);
            let arr = S::plain(self.pick(&[
                "ia",
                "'{1,2,NULL}'::int4[]",
                "'{}'::int4[]",
                "ARRAY[1, 7, 42]",
                "'{7,42}'",
                "ARRAY[i2, 7]",
            ]));
            s!("{} {} {}({})", a, op, q, arr)
        } else {
            self.ordering(Ty::Text, &op.eng);
            let a = self.operand(Ty::Text, depth);
            let arr = S::plain(self.pick(&[
                "ta",
                "'{a,abc,NULL}'::text[]",
                "ARRAY['a', 'b']",
                "'{\"a b\",Ä}'",
                "ARRAY[vc]",
            ]));
            s!("{} {} {}({})", a, op, q, arr)
        }
    }

    fn arrays(&mut self) -> S {
        if self.chance(60) {
            let lhs = self.pick(&[
                "ia",
                "ia",
                "(ia || 7)",
                "(ia || '{1,NULL}'::int4[])",
                "(0 || ia)",
            ]);
            let op = self.pick(&["=", "<>", "@>", "<@", "&&"]);
            let rhs = self.pick(&[
                "'{}'",
                "'{1,2,3}'",
                "'{1}'",
                "'{NULL}'",
                "'{1,NULL,3}'",
                "'{3,7}'",
                "ARRAY[7]",
                "'{2147483647}'",
                "ARRAY[1,2,3,7]",
            ]);
            S::plain(format!("{lhs} {op} {rhs}"))
        } else {
            let lhs = self.pick(&["ta", "(ta || 'x'::text)", "(ta || '{a}'::text[])"]);
            let op = self.pick(&["=", "<>", "@>", "<@", "&&"]);
            let rhs = self.pick(&[
                "'{}'",
                "'{a,b}'",
                "'{a}'",
                "'{\"\",NULL}'",
                "ARRAY['abc']",
                "'{Ä,x}'",
            ]);
            S::plain(format!("{lhs} {op} {rhs}"))
        }
    }

    fn jsonb(&mut self) -> S {
        let e = match self.rng.below(9) {
            0 => {
                let k = self.pick(&["a", "b", "n", "x"]);
                let v = self.constant(Ty::Text);
                return s!("j ->> '{}' = {}", S::plain(k), v);
            }
            1 => format!(
                "(j -> '{}') = '{}'",
                self.pick(&["a", "b", "n"]),
                self.pick(&["1", "1.5", "\"x\"", "{\"x\": 1}", "null", "[1, 2]", "\"1\""])
            ),
            2 => format!(
                "j #>> '{}' = '{}'",
                self.pick(&["{a,x}", "{b,0}", "{c,d,0}", "{a}"]),
                self.pick(&["1", "x", "true", "2"])
            ),
            3 => format!(
                "j @> '{}'",
                self.pick(&[
                    "{}",
                    "{\"a\": 1}",
                    "{\"a\": \"x\"}",
                    "{\"b\": [1]}",
                    "[1]",
                    "{\"a\": {\"x\": 1}}"
                ])
            ),
            4 => format!("j ? '{}'", self.pick(&["a", "b", "n", "x", "c"])),
            5 => format!(
                "j {} array[{}]",
                self.pick(&["?|", "?&"]),
                self.pick(&["'a', 'b'", "'n'", "'a', 'zz'"])
            ),
            6 => format!(
                "(j -> {}) = '{}'",
                self.pick(&["0", "1", "-1"]),
                self.pick(&["1", "\"a\"", "null"])
            ),
            7 => format!(
                "j = '{}'",
                self.pick(&["{}", "[]", "null", "{\"a\": 1.5}", "1"])
            ),
            _ => format!(
                "(j -> 'b' ->> {}) {} '{}'",
                self.pick(&["0", "1"]),
                self.pick(&["=", "<>"]),
                self.pick(&["1", "2"])
            ),
        };
        S::plain(e)
    }
}
