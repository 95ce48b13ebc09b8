//! Function calls in where clauses: `lower upper length abs coalesce greatest least nullif
//! concat array_length cardinality date_trunc timezone`, typed the way Postgres resolves them.
//! Volatile functions (`now()`, `random()`, …) are refused: a shape's membership must not
//! change without a change to its rows.

use pg_query::Node;

use crate::error::{Loc, WhereError, WhereErrorKind};
use crate::pgtext::V;
use crate::scalar::{self, Func, Scalar};
use crate::ty::Ty;
use crate::typer::Typer;
use crate::typing::{cmp_type, common_type, no_operator, Val};

/// The typed arguments of one call, taken in order.
struct Args<'n> {
    at: Loc,
    name: &'n str,
    vals: std::vec::IntoIter<Val>,
}

impl Args<'_> {
    fn len(&self) -> usize {
        self.vals.len()
    }

    fn arity(&self, n: usize) -> Result<(), WhereError> {
        if self.len() == n {
            return Ok(());
        }
        Err(self.error(
            WhereErrorKind::Type,
            format!(
                "function {} takes {n} argument{}",
                self.name,
                if n == 1 { "" } else { "s" }
            ),
        ))
    }

    fn next(&mut self) -> Result<Val, WhereError> {
        let at = self.at;
        self.vals
            .next()
            .ok_or_else(|| WhereError::new(WhereErrorKind::Type, at, "missing argument"))
    }

    fn rest(&mut self) -> Vec<Val> {
        self.vals.by_ref().collect()
    }

    fn error(&self, kind: WhereErrorKind, message: impl Into<String>) -> WhereError {
        WhereError::new(kind, self.at, message)
    }
}

impl Typer<'_> {
    /// A function call by name.
    pub(crate) fn call(&self, at: Loc, name: &str, args: &[Node]) -> Result<Scalar, WhereError> {
        if is_volatile(name) {
            return Err(WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                format!(
                    "function {name} is not allowed in where clauses (its result changes between evaluations)"
                ),
            ));
        }
        let vals = args
            .iter()
            .map(|a| self.value(a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut args = Args {
            at,
            name,
            vals: vals.into_iter(),
        };
        match name {
            "lower" => self.case_map(&mut args, Func::Lower),
            "upper" => self.case_map(&mut args, Func::Upper),
            "length" | "char_length" | "character_length" => self.length(&mut args),
            "abs" => abs(&mut args),
            "coalesce" => self.common(&mut args, Func::Coalesce),
            "greatest" => self.common(&mut args, Func::Greatest),
            "least" => self.common(&mut args, Func::Least),
            "nullif" => self.nullif(&mut args),
            "concat" => self.concat_fn(&mut args),
            "cardinality" => self.array_size(&mut args, Func::Cardinality),
            "array_length" => self.array_size(&mut args, Func::ArrayLength),
            "date_trunc" => self.date_trunc(&mut args),
            "timezone" => self.timezone(&mut args),
            other => Err(WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                format!("function {other} is not supported in where clauses"),
            )),
        }
    }

    /// `lower(text)`, `upper(text)`: need a C/POSIX character classification.
    fn case_map(&self, args: &mut Args, f: Func) -> Result<Scalar, WhereError> {
        args.arity(1)?;
        let a = self.settle(args.next()?, Ty::Text)?;
        if !a.ty().is_text() {
            return Err(args.error(
                WhereErrorKind::Type,
                format!("function {}({}) does not exist", args.name, a.ty().name()),
            ));
        }
        self.check_fold(args.at, &a)?;
        Ok(Scalar::Func {
            f,
            args: vec![a.conv(Ty::Text)],
            ty: Ty::Text,
        })
    }

    /// `length(text)` and its aliases, in characters.
    fn length(&self, args: &mut Args) -> Result<Scalar, WhereError> {
        args.arity(1)?;
        let a = self.settle(args.next()?, Ty::Text)?;
        if !a.ty().is_text() {
            return Err(args.error(
                WhereErrorKind::Unsupported,
                format!("function {}({}) is not supported", args.name, a.ty().name()),
            ));
        }
        Ok(Scalar::Func {
            f: Func::Length,
            args: vec![a],
            ty: Ty::Int4,
        })
    }

    /// `coalesce`, `greatest`, `least`: the arguments' common type; `greatest` and `least` of
    /// text need one byte-order collation.
    fn common(&self, args: &mut Args, f: Func) -> Result<Scalar, WhereError> {
        let vals = args.rest();
        if vals.is_empty() {
            return Err(args.error(
                WhereErrorKind::Type,
                format!("{} needs arguments", args.name),
            ));
        }
        let known: Vec<Ty> = vals.iter().filter_map(Val::known_ty).collect();
        let ty = if known.is_empty() {
            Ty::Text
        } else {
            common_type(&known).ok_or_else(|| {
                args.error(
                    WhereErrorKind::Unsupported,
                    format!("{} arguments of these types cannot be matched", args.name),
                )
            })?
        };
        let converted = vals
            .into_iter()
            .map(|v| self.settle(v, ty).map(|s| s.conv(ty)))
            .collect::<Result<Vec<_>, _>>()?;
        if f != Func::Coalesce && ty.is_text() {
            let refs: Vec<&Scalar> = converted.iter().collect();
            self.check_collation(args.at, &refs, true)?;
        }
        Ok(Scalar::Func {
            f,
            args: converted,
            ty,
        })
    }

    /// `nullif(a, b)`: compared the way `a = b` would be; the result has the type of the left
    /// operand of the `=` Postgres picks (unchanged across integer widths or float widths, else
    /// the comparison type).
    fn nullif(&self, args: &mut Args) -> Result<Scalar, WhereError> {
        args.arity(2)?;
        let (a, b) = self.pair(args.next()?, args.next()?)?;
        let (ta, tb) = (a.ty(), b.ty());
        let cmp = cmp_type(ta, tb).ok_or_else(|| no_operator(args.at, ta, "=", tb))?;
        let ty = if (ta.is_int() && tb.is_int()) || (ta.is_float() && tb.is_float()) {
            ta
        } else {
            cmp
        };
        if cmp.is_text() {
            self.check_collation(args.at, &[&a, &b], false)?;
        }
        Ok(Scalar::Func {
            f: Func::Nullif { cmp },
            args: vec![a.conv(ty), b],
            ty,
        })
    }

    /// `concat(…)`: every argument as text, NULLs skipped. Floats are refused (their text form
    /// depends on `extra_float_digits`).
    fn concat_fn(&self, args: &mut Args) -> Result<Scalar, WhereError> {
        let mut out = Vec::new();
        for v in args.rest() {
            let s = self.settle(v, Ty::Text)?;
            if s.ty().is_float() {
                return Err(args.error(
                    WhereErrorKind::Unsupported,
                    "concat of floating-point values is not supported yet",
                ));
            }
            out.push(s);
        }
        Ok(Scalar::Func {
            f: Func::Concat,
            args: out,
            ty: Ty::Text,
        })
    }

    /// `cardinality(array)`, `array_length(array, dimension)`.
    fn array_size(&self, args: &mut Args, f: Func) -> Result<Scalar, WhereError> {
        args.arity(if f == Func::Cardinality { 1 } else { 2 })?;
        let a = match args.next()? {
            Val::Known(s) if matches!(s.ty(), Ty::Array(_)) => s,
            _ => {
                return Err(args.error(
                    WhereErrorKind::Type,
                    format!("{} needs an array", args.name),
                ))
            }
        };
        let mut call = vec![a];
        if f == Func::ArrayLength {
            let d = self.settle(args.next()?, Ty::Int4)?;
            if !d.ty().is_int() {
                return Err(args.error(
                    WhereErrorKind::Type,
                    "array_length needs an integer dimension",
                ));
            }
            call.push(d);
        }
        Ok(Scalar::Func {
            f,
            args: call,
            ty: Ty::Int4,
        })
    }

    /// `date_trunc(unit, timestamp[tz])` with a constant unit; dates are truncated as
    /// timestamptz, like Postgres.
    fn date_trunc(&self, args: &mut Args) -> Result<Scalar, WhereError> {
        let (first, unit, x) = self.text_and_time(args)?;
        if !scalar::date_trunc_field_ok(&unit) {
            return Err(args.error(
                WhereErrorKind::InvalidValue,
                format!("unit \"{unit}\" not recognized for type {}", x.ty().name()),
            ));
        }
        let ty = x.ty();
        Ok(Scalar::Func {
            f: Func::DateTrunc,
            args: vec![first, x],
            ty,
        })
    }

    /// `timezone(zone, timestamp[tz])` (also `x AT TIME ZONE zone`) with a constant IANA zone:
    /// timestamp becomes timestamptz and back.
    fn timezone(&self, args: &mut Args) -> Result<Scalar, WhereError> {
        let (first, zone, x) = self.text_and_time(args)?;
        if !scalar::zone_ok(&zone) {
            return Err(args.error(
                WhereErrorKind::InvalidValue,
                format!("time zone \"{zone}\" not recognized"),
            ));
        }
        let ty = if x.ty() == Ty::Timestamp {
            Ty::Timestamptz
        } else {
            Ty::Timestamp
        };
        Ok(Scalar::Func {
            f: Func::Timezone,
            args: vec![first, x],
            ty,
        })
    }

    /// The `(constant text, timestamp or timestamptz)` arguments of `date_trunc` and `timezone`.
    fn text_and_time(&self, args: &mut Args) -> Result<(Scalar, String, Scalar), WhereError> {
        args.arity(2)?;
        let first = self.settle(args.next()?, Ty::Text)?;
        let Scalar::Const {
            v: V::Text(text), ..
        } = &first
        else {
            return Err(args.error(
                WhereErrorKind::Type,
                format!("{} needs a constant as its first argument", args.name),
            ));
        };
        let text = text.to_string();
        let x = self.settle(args.next()?, Ty::Timestamptz)?;
        let x = if x.ty() == Ty::Date {
            x.conv(Ty::Timestamptz)
        } else {
            x
        };
        if !matches!(x.ty(), Ty::Timestamp | Ty::Timestamptz) {
            return Err(args.error(
                WhereErrorKind::Unsupported,
                format!(
                    "function {}(text, {}) is not supported",
                    args.name,
                    x.ty().name()
                ),
            ));
        }
        Ok((first, text, x))
    }
}

/// `abs(number)`, of the number's own type.
fn abs(args: &mut Args) -> Result<Scalar, WhereError> {
    args.arity(1)?;
    let a = match args.next()? {
        Val::Known(s) if s.ty().num_rank().is_some() => s,
        _ => return Err(args.error(WhereErrorKind::Type, "abs needs a number")),
    };
    let ty = a.ty();
    Ok(Scalar::Func {
        f: Func::Abs,
        args: vec![a],
        ty,
    })
}

/// Functions whose result changes between evaluations.
fn is_volatile(name: &str) -> bool {
    matches!(
        name,
        "now"
            | "random"
            | "clock_timestamp"
            | "statement_timestamp"
            | "timeofday"
            | "current_timestamp"
            | "transaction_timestamp"
            | "gen_random_uuid"
            | "nextval"
    )
}
