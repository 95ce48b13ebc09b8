//! Postgres `numeric` arithmetic, exact: arbitrary-precision decimals that keep their display
//! scale (digits after the point) and follow Postgres' rules for the scale of each result, its
//! rounding (half away from zero) and its special values (`NaN`, `±Infinity`).
//!
//! The display scale matters beyond printing: Postgres chooses the scale of a quotient from the
//! operands' scales and magnitudes (`select_div_scale` in `numeric.c`), so `(x * 1.0) / 3` and
//! `x / 3` may round differently. The rules implemented here are those of Postgres 15.

use std::cmp::Ordering;

use num_bigint::{BigInt, Sign};
use num_integer::Integer;
use num_traits::{One, Signed, Zero};

/// Digits of significance a quotient gets at least (`NUMERIC_MIN_SIG_DIGITS`).
const MIN_SIG_DIGITS: i64 = 16;
/// The largest display scale Postgres chooses for a computed result.
const MAX_DISPLAY_SCALE: i64 = 1000;
/// Exponents beyond this in input are refused (Postgres accepts up to ±1000 too).
const MAX_INPUT_EXPONENT: i64 = 1000;

/// A `numeric` value: `m / 10^s` with `s` its display scale, or a special value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Num {
    NaN,
    PosInf,
    NegInf,
    Fin { m: BigInt, s: u32 },
}

/// A Postgres error raised while computing (division by zero, out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fail;

fn pow10(n: u32) -> BigInt {
    num_traits::pow(BigInt::from(10u8), n as usize)
}

impl Num {
    pub fn from_i64(v: i64) -> Num {
        Num::Fin {
            m: BigInt::from(v),
            s: 0,
        }
    }

    /// Postgres `numeric` input (and output) syntax: sign, digits with an optional point, an
    /// optional exponent, or `NaN` / `Infinity` / `inf` in any case, surrounding spaces allowed.
    pub fn parse(text: &str) -> Option<Num> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "nan" => return Some(Num::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Some(Num::PosInf),
            "-infinity" | "-inf" => return Some(Num::NegInf),
            _ => {}
        }
        let (neg, rest) = match t.as_bytes().first()? {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        if exp.unsigned_abs() > MAX_INPUT_EXPONENT as u64 {
            return None;
        }
        let (int, frac) = match mantissa.find('.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, ""),
        };
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let digits: String = int.chars().chain(frac.chars()).collect();
        let mut m: BigInt = digits.parse().ok()?;
        if neg {
            m = -m;
        }
        // value = digits × 10^(exp − frac); the display scale is max(0, frac − exp).
        let shift = exp - frac.len() as i64;
        Some(if shift >= 0 {
            Num::Fin {
                m: m * pow10(shift as u32),
                s: 0,
            }
        } else {
            Num::Fin {
                m,
                s: (-shift) as u32,
            }
        })
    }

    pub fn is_zero(&self) -> bool {
        matches!(self, Num::Fin { m, .. } if m.is_zero())
    }

    /// -1, 0 or 1; NaN has no sign (0).
    fn signum(&self) -> i32 {
        match self {
            Num::NaN => 0,
            Num::PosInf => 1,
            Num::NegInf => -1,
            Num::Fin { m, .. } => match m.sign() {
                Sign::Minus => -1,
                Sign::NoSign => 0,
                Sign::Plus => 1,
            },
        }
    }

    /// Both mantissas at the larger scale.
    fn aligned(m1: &BigInt, s1: u32, m2: &BigInt, s2: u32) -> (BigInt, BigInt, u32) {
        let s = s1.max(s2);
        (m1 * pow10(s - s1), m2 * pow10(s - s2), s)
    }

    /// Postgres' order: -Infinity < finite < Infinity < NaN, NaN equal to itself.
    pub fn cmp_total(&self, other: &Num) -> Ordering {
        let rank = |n: &Num| match n {
            Num::NegInf => 0,
            Num::Fin { .. } => 1,
            Num::PosInf => 2,
            Num::NaN => 3,
        };
        match (self, other) {
            (Num::Fin { m: m1, s: s1 }, Num::Fin { m: m2, s: s2 }) => {
                let (a, b, _) = Num::aligned(m1, *s1, m2, *s2);
                a.cmp(&b)
            }
            _ => rank(self).cmp(&rank(other)),
        }
    }

    pub fn neg(&self) -> Num {
        match self {
            Num::NaN => Num::NaN,
            Num::PosInf => Num::NegInf,
            Num::NegInf => Num::PosInf,
            Num::Fin { m, s } => Num::Fin { m: -m, s: *s },
        }
    }

    pub fn abs(&self) -> Num {
        match self {
            Num::NegInf => Num::PosInf,
            Num::Fin { m, s } => Num::Fin { m: m.abs(), s: *s },
            other => other.clone(),
        }
    }

    pub fn add(&self, other: &Num) -> Num {
        match (self, other) {
            (Num::NaN, _) | (_, Num::NaN) => Num::NaN,
            (Num::PosInf, Num::NegInf) | (Num::NegInf, Num::PosInf) => Num::NaN,
            (Num::PosInf, _) | (_, Num::PosInf) => Num::PosInf,
            (Num::NegInf, _) | (_, Num::NegInf) => Num::NegInf,
            (Num::Fin { m: m1, s: s1 }, Num::Fin { m: m2, s: s2 }) => {
                let (a, b, s) = Num::aligned(m1, *s1, m2, *s2);
                Num::Fin { m: a + b, s }
            }
        }
    }

    pub fn sub(&self, other: &Num) -> Num {
        self.add(&other.neg())
    }

    pub fn mul(&self, other: &Num) -> Num {
        match (self, other) {
            (Num::NaN, _) | (_, Num::NaN) => Num::NaN,
            (Num::Fin { m: m1, s: s1 }, Num::Fin { m: m2, s: s2 }) => Num::Fin {
                m: m1 * m2,
                s: s1 + s2,
            },
            _ => match self.signum() * other.signum() {
                0 => Num::NaN,
                1 => Num::PosInf,
                _ => Num::NegInf,
            },
        }
    }

    /// Division with the quotient's scale chosen as Postgres chooses it, rounded half away
    /// from zero; division by zero fails.
    pub fn div(&self, other: &Num) -> Result<Num, Fail> {
        match (self, other) {
            (Num::NaN, _) | (_, Num::NaN) => Ok(Num::NaN),
            (Num::PosInf | Num::NegInf, Num::PosInf | Num::NegInf) => Ok(Num::NaN),
            (Num::PosInf | Num::NegInf, d) => match d.signum() {
                0 => Err(Fail),
                s if s * self.signum() > 0 => Ok(Num::PosInf),
                _ => Ok(Num::NegInf),
            },
            (Num::Fin { .. }, Num::PosInf | Num::NegInf) => Ok(Num::Fin {
                m: BigInt::zero(),
                s: 0,
            }),
            (Num::Fin { m: m1, s: s1 }, Num::Fin { m: m2, s: s2 }) => {
                if m2.is_zero() {
                    return Err(Fail);
                }
                let rscale = div_scale(m1, *s1, m2, *s2);
                // (m1 / 10^s1) / (m2 / 10^s2) × 10^rscale
                let n = m1 * pow10(s2 + rscale);
                let d = m2 * pow10(*s1);
                Ok(Num::Fin {
                    m: div_round(&n, &d),
                    s: rscale,
                })
            }
        }
    }

    /// `%`: the remainder of the truncated quotient, at the larger scale; `x % 0` fails.
    pub fn rem(&self, other: &Num) -> Result<Num, Fail> {
        match (self, other) {
            (Num::NaN, _) | (_, Num::NaN) => Ok(Num::NaN),
            (Num::PosInf | Num::NegInf, d) => {
                if d.is_zero() {
                    Err(Fail)
                } else {
                    Ok(Num::NaN)
                }
            }
            (Num::Fin { .. }, Num::PosInf | Num::NegInf) => Ok(self.clone()),
            (Num::Fin { m: m1, s: s1 }, Num::Fin { m: m2, s: s2 }) => {
                if m2.is_zero() {
                    return Err(Fail);
                }
                let (a, b, s) = Num::aligned(m1, *s1, m2, *s2);
                Ok(Num::Fin { m: a % b, s })
            }
        }
    }

    /// `x ^ n` for a small non-negative integer exponent, as Postgres computes it: the exact
    /// power rounded to max(16, scale of x) digits.
    pub fn pow_int(&self, n: u32) -> Num {
        let rscale = (MIN_SIG_DIGITS.max(self.scale() as i64)).min(MAX_DISPLAY_SCALE) as u32;
        match self {
            _ if n == 0 => Num::Fin {
                m: pow10(rscale),
                s: rscale,
            },
            Num::NaN => Num::NaN,
            Num::PosInf => Num::PosInf,
            Num::NegInf => {
                if n.is_multiple_of(2) {
                    Num::PosInf
                } else {
                    Num::NegInf
                }
            }
            Num::Fin { m, s } => {
                let exact = num_traits::pow(m.clone(), n as usize);
                Num::Fin { m: exact, s: s * n }.round(rscale)
            }
        }
    }

    fn scale(&self) -> u32 {
        match self {
            Num::Fin { s, .. } => *s,
            _ => 0,
        }
    }

    /// Rounded (half away from zero) or extended to `scale` digits after the point.
    pub fn round(&self, scale: u32) -> Num {
        match self {
            Num::Fin { m, s } if *s > scale => Num::Fin {
                m: div_round(m, &pow10(s - scale)),
                s: scale,
            },
            Num::Fin { m, s } => Num::Fin {
                m: m * pow10(scale - s),
                s: scale,
            },
            other => other.clone(),
        }
    }

    /// The value as float8, as Postgres converts it (through its text form, correctly rounded).
    pub fn to_f64(&self) -> f64 {
        match self {
            Num::NaN => f64::NAN,
            Num::PosInf => f64::INFINITY,
            Num::NegInf => f64::NEG_INFINITY,
            fin => fin.to_string().parse().unwrap_or(f64::NAN),
        }
    }

    /// The value as float4 (through its text form, like Postgres).
    pub fn to_f32(&self) -> Result<f32, Fail> {
        let v = match self {
            Num::NaN => f32::NAN,
            Num::PosInf => f32::INFINITY,
            Num::NegInf => f32::NEG_INFINITY,
            fin => {
                let v: f32 = fin.to_string().parse().map_err(|_| Fail)?;
                if v.is_infinite() {
                    return Err(Fail);
                }
                v
            }
        };
        Ok(v)
    }
}

/// Postgres' text output: all digits, exactly `s` of them after the point.
impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::NaN => f.write_str("NaN"),
            Num::PosInf => f.write_str("Infinity"),
            Num::NegInf => f.write_str("-Infinity"),
            Num::Fin { m, s } => {
                let digits = m.abs().to_string();
                let s = *s as usize;
                if m.is_negative() {
                    f.write_str("-")?;
                }
                if s == 0 {
                    return f.write_str(&digits);
                }
                let padded = if digits.len() <= s {
                    format!("{}{digits}", "0".repeat(s + 1 - digits.len()))
                } else {
                    digits
                };
                let (int, frac) = padded.split_at(padded.len() - s);
                write!(f, "{int}.{frac}")
            }
        }
    }
}

/// `n / d` rounded half away from zero.
fn div_round(n: &BigInt, d: &BigInt) -> BigInt {
    let (q, r) = n.div_rem(d);
    if (r.abs() * 2u8) >= d.abs() {
        if n.is_negative() != d.is_negative() {
            q - BigInt::one()
        } else {
            q + BigInt::one()
        }
    } else {
        q
    }
}

/// Weight (in base-10000 digits) and first base-10000 digit of a nonzero `m / 10^s`, as
/// Postgres stores numerics; (0, 0) for zero.
fn weight_and_first(m: &BigInt, s: u32) -> (i64, BigInt) {
    if m.is_zero() {
        return (0, BigInt::zero());
    }
    let a = m.abs();
    let decimal_digits = a.to_string().len() as i64;
    // floor(log10 |value|)
    let k = decimal_digits - 1 - s as i64;
    let weight = k.div_euclid(4);
    let shift = s as i64 + 4 * weight;
    let first = if shift >= 0 {
        a / pow10(shift as u32)
    } else {
        a * pow10((-shift) as u32)
    };
    (weight, first)
}

/// The scale Postgres gives a quotient (`select_div_scale`): at least 16 significant digits,
/// and no less than either operand's scale.
fn div_scale(m1: &BigInt, s1: u32, m2: &BigInt, s2: u32) -> u32 {
    let (w1, f1) = weight_and_first(m1, s1);
    let (w2, f2) = weight_and_first(m2, s2);
    let mut qweight = w1 - w2;
    if f1 <= f2 {
        qweight -= 1;
    }
    let rscale = (MIN_SIG_DIGITS - qweight * 4)
        .max(s1 as i64)
        .max(s2 as i64)
        .clamp(0, MAX_DISPLAY_SCALE);
    rscale as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Num {
        Num::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints_with_display_scale() {
        assert_eq!(n("1.50").to_string(), "1.50");
        assert_eq!(n("-0.000001").to_string(), "-0.000001");
        assert_eq!(n("1e3").to_string(), "1000");
        assert_eq!(n("1.5e-3").to_string(), "0.0015");
        assert_eq!(n(" 7.000 ").to_string(), "7.000");
        assert_eq!(n("nan"), Num::NaN);
        assert!(Num::parse("1.2.3").is_none() && Num::parse("").is_none());
    }

    #[test]
    fn arithmetic_follows_postgres() {
        // SELECT 1::numeric / 3  →  0.33333333333333333333
        assert_eq!(
            n("1").div(&n("3")).unwrap().to_string(),
            "0.33333333333333333333"
        );
        // SELECT 10::numeric / 4  →  2.5000000000000000
        assert_eq!(
            n("10").div(&n("4")).unwrap().to_string(),
            "2.5000000000000000"
        );
        // SELECT 123456789012345678901234567890.123456789 / 7
        assert_eq!(
            n("123456789012345678901234567890.123456789")
                .div(&n("7"))
                .unwrap()
                .to_string(),
            "17636684144620811271604938270.017636684"
        );
        assert_eq!(
            n("2").div(&n("3")).unwrap().to_string(),
            "0.66666666666666666667"
        );
        assert_eq!(
            n("-2").div(&n("3")).unwrap().to_string(),
            "-0.66666666666666666667"
        );
        assert_eq!(n("1.50").mul(&n("2")).to_string(), "3.00");
        assert_eq!(n("7.5").rem(&n("2")).unwrap().to_string(), "1.5");
        assert_eq!(n("-7").rem(&n("2")).unwrap().to_string(), "-1");
        assert_eq!(n("1.5").pow_int(2).to_string(), "2.2500000000000000");
        assert_eq!(n("2").pow_int(0).to_string(), "1.0000000000000000");
        assert!(n("1").div(&n("0")).is_err());
        assert_eq!(n("Infinity").add(&n("-Infinity")), Num::NaN);
        assert_eq!(n("Infinity").mul(&n("0")), Num::NaN);
        assert_eq!(n("5").div(&n("Infinity")).unwrap().to_string(), "0");
        assert_eq!(n("NaN").cmp_total(&n("Infinity")), Ordering::Greater);
        assert_eq!(n("1.0").cmp_total(&n("1.000")), Ordering::Equal);
    }
}
