//! Dates, times, timestamps and intervals as Postgres stores and computes them: dates as days
//! and timestamps as microseconds since 2000-01-01 (±infinity at the ends of the range), times
//! as microseconds since midnight, intervals as (months, days, microseconds). Calendar
//! arithmetic follows `timestamp.c` / `datetime.c` (month addition clamps to the month's last
//! day, `date_trunc`, `interval * float8` cascading fractions down, interval comparison on a
//! 30-day month).
//!
//! shapesync's sessions run with `TimeZone=UTC`, `DateStyle=ISO` and `IntervalStyle=iso_8601`,
//! so `timestamptz` values arrive and compute in UTC; named time zones (`AT TIME ZONE`,
//! `timezone()`) come from the IANA database compiled into `chrono-tz`.

use std::str::FromStr;

use chrono::{Offset, TimeZone};

/// Microseconds per day.
pub const DAY: i64 = 86_400_000_000;
/// `date2j(2000, 1, 1)`.
const EPOCH_J: i64 = 2_451_545;
/// Infinite dates.
pub const DATE_NEG_INF: i32 = i32::MIN;
pub const DATE_POS_INF: i32 = i32::MAX;
/// Infinite timestamps.
pub const TS_NEG_INF: i64 = i64::MIN;
pub const TS_POS_INF: i64 = i64::MAX;
/// Postgres' valid timestamp range: 4714-11-24 BC to 294277-01-01 (exclusive).
const MIN_TS: i64 = -211_813_488_000_000_000;
const END_TS: i64 = 9_223_371_331_200_000_000;
/// Valid dates: Julian day 0 to 2147483494 (exclusive).
const DATE_END_J: i64 = 2_147_483_494;
/// Unix epoch in Postgres' epoch (seconds).
const UNIX_OFFSET: i64 = 946_684_800;

/// An interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

impl Interval {
    /// Its length for comparisons: a month is 30 days, a day 24 hours.
    pub fn span(&self) -> i128 {
        (i128::from(self.months) * 30 + i128::from(self.days)) * i128::from(DAY)
            + i128::from(self.micros)
    }

    pub fn neg(&self) -> Option<Interval> {
        Some(Interval {
            months: self.months.checked_neg()?,
            days: self.days.checked_neg()?,
            micros: self.micros.checked_neg()?,
        })
    }

    pub fn add(&self, o: &Interval) -> Option<Interval> {
        Some(Interval {
            months: self.months.checked_add(o.months)?,
            days: self.days.checked_add(o.days)?,
            micros: self.micros.checked_add(o.micros)?,
        })
    }

    /// `interval * float8` (Postgres' `interval_mul`).
    pub fn mul(&self, factor: f64) -> Option<Interval> {
        let ts_round = |v: f64| (v * 1e6).round_ties_even() / 1e6;
        let m = f64::from(self.months) * factor;
        let d = f64::from(self.days) * factor;
        if m.is_nan()
            || d.is_nan()
            || m.abs() > f64::from(i32::MAX)
            || d.abs() > f64::from(i32::MAX)
        {
            return None;
        }
        let months = m as i32;
        let mut days = d as i32;
        let month_rem_days = ts_round((f64::from(self.months) * factor - f64::from(months)) * 30.0);
        let mut sec_rem = ts_round(
            (f64::from(self.days) * factor - f64::from(days) + month_rem_days
                - f64::from(month_rem_days as i32))
                * 86_400.0,
        );
        if sec_rem.abs() >= 86_400.0 {
            days = days.checked_add((sec_rem / 86_400.0) as i32)?;
            sec_rem -= f64::from((sec_rem / 86_400.0) as i32) * 86_400.0;
        }
        days = days.checked_add(month_rem_days as i32)?;
        let t = (self.micros as f64 * factor + sec_rem * 1e6).round_ties_even();
        if t.is_nan() || !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&t) {
            return None;
        }
        Some(Interval {
            months,
            days,
            micros: t as i64,
        })
    }

    /// Text Postgres reads back as the same interval.
    pub fn input_text(&self) -> String {
        let sign = if self.micros < 0 { "-" } else { "" };
        let m = self.micros.unsigned_abs();
        let secs = m / 1_000_000;
        format!(
            "{} mons {} days {sign}{}:{:02}:{:02}.{:06}",
            self.months,
            self.days,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            m % 1_000_000
        )
    }
}

/// Julian day of a (astronomical) year, month and day (Postgres' `date2j`).
fn date2j(y: i64, m: i64, d: i64) -> i64 {
    let (mut y, mut m) = (y, m);
    if m > 2 {
        m += 1;
        y += 4800;
    } else {
        m += 13;
        y += 4799;
    }
    let century = y.div_euclid(100);
    let mut j = y * 365 - 32167;
    j += y.div_euclid(4) - century + century.div_euclid(4);
    j += 7834 * m / 256 + d;
    j
}

/// Year, month, day of a Julian day (Postgres' `j2date`).
fn j2date(jd: i64) -> (i64, i64, i64) {
    let mut julian = jd + 32044;
    let mut quad = julian.div_euclid(146_097);
    let extra = (julian - quad * 146_097) * 4 + 3;
    julian += 60 + quad * 3 + extra.div_euclid(146_097);
    quad = julian.div_euclid(1461);
    julian -= quad * 1461;
    let mut y = julian * 4 / 1461;
    julian = if y != 0 {
        (julian + 305) % 365
    } else {
        (julian + 306) % 366
    } + 123;
    y += quad * 4;
    let year = y - 4800;
    let q = julian * 2141 / 65536;
    let day = julian - 7834 * q / 256;
    let month = (q + 10) % 12 + 1;
    (year, month, day)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
    }
}

/// Days since 2000-01-01 of a valid calendar date.
fn days_of(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let j = date2j(y, m, d);
    (0..DATE_END_J).contains(&j).then_some(j - EPOCH_J)
}

/// A date (days since 2000-01-01) if it is in Postgres' range.
pub fn valid_date(days: i64) -> Option<i32> {
    let j = days + EPOCH_J;
    if (0..DATE_END_J).contains(&j) {
        i32::try_from(days).ok()
    } else {
        None
    }
}

/// A timestamp if it is in Postgres' range (infinities pass).
pub fn valid_ts(t: i64) -> Option<i64> {
    (t == TS_NEG_INF || t == TS_POS_INF || (MIN_TS..END_TS).contains(&t)).then_some(t)
}

/// Broken-down timestamp: (year, month, day, micros into the day).
fn split_ts(t: i64) -> (i64, i64, i64, i64) {
    let days = t.div_euclid(DAY);
    let (y, m, d) = j2date(days + EPOCH_J);
    (y, m, d, t.rem_euclid(DAY))
}

fn join_ts(y: i64, m: i64, d: i64, micros: i64) -> Option<i64> {
    let days = date2j(y, m, d) - EPOCH_J;
    valid_ts(days.checked_mul(DAY)?.checked_add(micros)?)
}

pub fn date_to_ts(d: i32) -> Option<i64> {
    match d {
        DATE_NEG_INF => Some(TS_NEG_INF),
        DATE_POS_INF => Some(TS_POS_INF),
        d => valid_ts(i64::from(d) * DAY),
    }
}

/// `date ± integer`.
pub fn date_add_days(d: i32, n: i64) -> Option<i32> {
    if d == DATE_NEG_INF || d == DATE_POS_INF {
        return Some(d);
    }
    valid_date(i64::from(d).checked_add(n)?)
}

/// `timestamp + interval` (months first, clamped to the month's end; then days; then time).
pub fn ts_add(t: i64, iv: &Interval) -> Option<i64> {
    if t == TS_NEG_INF || t == TS_POS_INF {
        return Some(t);
    }
    let mut t = t;
    if iv.months != 0 {
        let (y, m, d, us) = split_ts(t);
        let total = y * 12 + (m - 1) + i64::from(iv.months);
        let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
        let nd = d.min(days_in_month(ny, nm));
        t = join_ts(ny, nm, nd, us)?;
    }
    if iv.days != 0 {
        let (y, m, d, us) = split_ts(t);
        let j = date2j(y, m, d) + i64::from(iv.days);
        let (ny, nm, nd) = j2date(j);
        t = join_ts(ny, nm, nd, us)?;
    }
    valid_ts(t.checked_add(iv.micros)?)
}

/// `timestamp - timestamp` (days split off the time, as `interval_justify_hours`).
pub fn ts_diff(a: i64, b: i64) -> Option<Interval> {
    if [a, b].iter().any(|t| *t == TS_NEG_INF || *t == TS_POS_INF) {
        return None;
    }
    let diff = a.checked_sub(b)?;
    let mut days = diff / DAY;
    let mut micros = diff % DAY;
    if days > 0 && micros < 0 {
        micros += DAY;
        days -= 1;
    } else if days < 0 && micros > 0 {
        micros -= DAY;
        days += 1;
    }
    Some(Interval {
        months: 0,
        days: i32::try_from(days).ok()?,
        micros,
    })
}

/// `date_trunc(field, timestamp)`; None for an unknown field.
pub fn trunc(field: &str, t: i64) -> Option<Option<i64>> {
    let field = field.to_ascii_lowercase();
    let known = [
        "microseconds",
        "milliseconds",
        "second",
        "minute",
        "hour",
        "day",
        "week",
        "month",
        "quarter",
        "year",
        "decade",
        "century",
        "millennium",
    ];
    if !known.contains(&field.as_str()) {
        return None;
    }
    if t == TS_NEG_INF || t == TS_POS_INF {
        return Some(Some(t));
    }
    let (y, m, d, us) = split_ts(t);
    let unit = |u: i64| us - us % u;
    Some(match field.as_str() {
        "microseconds" => Some(t),
        "milliseconds" => join_ts(y, m, d, unit(1000)),
        "second" => join_ts(y, m, d, unit(1_000_000)),
        "minute" => join_ts(y, m, d, unit(60_000_000)),
        "hour" => join_ts(y, m, d, unit(3_600_000_000)),
        "day" => join_ts(y, m, d, 0),
        "week" => {
            // j2day: 0 = Sunday; back to the Monday of the ISO week.
            let j = date2j(y, m, d);
            let (ny, nm, nd) = j2date(j - ((j + 1).rem_euclid(7) + 6) % 7);
            join_ts(ny, nm, nd, 0)
        }
        "month" => join_ts(y, m, 1, 0),
        "quarter" => join_ts(y, 3 * ((m - 1) / 3) + 1, 1, 0),
        "year" => join_ts(y, 1, 1, 0),
        "decade" => {
            let ny = if y > 0 {
                (y / 10) * 10
            } else {
                -((8 - (y - 1)) / 10) * 10
            };
            join_ts(ny, 1, 1, 0)
        }
        "century" => {
            let ny = if y > 0 {
                ((y + 99) / 100) * 100 - 99
            } else {
                -((99 - (y - 1)) / 100) * 100 + 1
            };
            join_ts(ny, 1, 1, 0)
        }
        _ => {
            let ny = if y > 0 {
                ((y + 999) / 1000) * 1000 - 999
            } else {
                -((999 - (y - 1)) / 1000) * 1000 + 1
            };
            join_ts(ny, 1, 1, 0)
        }
    })
}

/// A time zone: a numeric offset (`-03:00`, `+05`) or an IANA name (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    /// Seconds east of UTC.
    Fixed(i64),
    Named(chrono_tz::Tz),
}

impl Zone {
    /// A zone as `AT TIME ZONE` / `timezone()` read it: a numeric offset there is a POSIX
    /// zone, whose sign counts hours *west* of Greenwich (`'-03:00'` is three hours east).
    pub fn parse_posix(s: &str) -> Option<Zone> {
        match Zone::parse(s)? {
            Zone::Fixed(secs) => Some(Zone::Fixed(-secs)),
            named => Some(named),
        }
    }

    /// A zone as timestamp input reads it: a numeric offset is ISO 8601 (east of UTC).
    pub fn parse(s: &str) -> Option<Zone> {
        let t = s.trim();
        if let Some(rest) = t.strip_prefix(['+', '-']) {
            let sign = if t.starts_with('-') { -1 } else { 1 };
            let secs = parse_offset_digits(rest)?;
            return Some(Zone::Fixed(sign * secs));
        }
        chrono_tz::Tz::from_str_insensitive(t)
            .ok()
            .or_else(|| chrono_tz::Tz::from_str(t).ok())
            .map(Zone::Named)
    }

    /// Offset east of UTC (seconds) at a UTC instant.
    fn offset_at_utc(&self, utc_micros: i64) -> Option<i64> {
        match self {
            Zone::Fixed(s) => Some(*s),
            Zone::Named(tz) => {
                let secs = utc_micros.div_euclid(1_000_000) + UNIX_OFFSET;
                let dt = chrono::DateTime::from_timestamp(secs, 0)?.naive_utc();
                Some(i64::from(
                    tz.offset_from_utc_datetime(&dt).fix().local_minus_utc(),
                ))
            }
        }
    }

    /// timestamptz → local timestamp in this zone.
    pub fn local_of(&self, utc: i64) -> Option<i64> {
        if utc == TS_NEG_INF || utc == TS_POS_INF {
            return Some(utc);
        }
        valid_ts(utc.checked_add(self.offset_at_utc(utc)? * 1_000_000)?)
    }

    /// Local timestamp in this zone → timestamptz. A time skipped by a transition takes the
    /// offset in force before it; a repeated one the offset after it (as Postgres).
    pub fn utc_of(&self, local: i64) -> Option<i64> {
        if local == TS_NEG_INF || local == TS_POS_INF {
            return Some(local);
        }
        let off = match self {
            Zone::Fixed(s) => *s,
            Zone::Named(tz) => {
                let secs = local.div_euclid(1_000_000) + UNIX_OFFSET;
                let naive = chrono::DateTime::from_timestamp(secs, 0)?.naive_utc();
                match tz.offset_from_local_datetime(&naive) {
                    chrono::LocalResult::Single(o) => i64::from(o.fix().local_minus_utc()),
                    chrono::LocalResult::Ambiguous(_, later) => {
                        i64::from(later.fix().local_minus_utc())
                    }
                    chrono::LocalResult::None => self.offset_at_utc(local - 12 * 3_600_000_000)?,
                }
            }
        };
        valid_ts(local.checked_sub(off * 1_000_000)?)
    }
}

/// `HH`, `HHMM`, `HH:MM`, `HH:MM:SS` → seconds.
fn parse_offset_digits(s: &str) -> Option<i64> {
    let parts: Vec<&str> = if s.contains(':') {
        s.split(':').collect()
    } else if s.len() == 4 {
        vec![&s[..2], &s[2..]]
    } else {
        vec![s]
    };
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut secs = 0;
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let v: i64 = p.parse().ok()?;
        secs += v * [3600, 60, 1][i];
    }
    (secs <= 15 * 3600 + 59 * 60 + 59).then_some(secs)
}

/// `HH:MM[:SS[.ffffff]]` → microseconds (24:00:00 allowed).
fn parse_time_of_day(s: &str) -> Option<i64> {
    let mut parts = s.split(':');
    let h: i64 = digits(parts.next()?)?;
    let m: i64 = digits(parts.next()?)?;
    let us = match parts.next() {
        Some(sec) => parse_seconds(sec)?,
        None => 0,
    };
    if parts.next().is_some() || m > 59 || us >= 60_000_000 {
        return None;
    }
    let t = h * 3_600_000_000 + m * 60_000_000 + us;
    (t <= DAY).then_some(t)
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `SS[.ffffff…]` → microseconds (rounded to the microsecond).
fn parse_seconds(s: &str) -> Option<i64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let secs = digits(int)?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut us: i64 = 0;
    for (i, b) in frac.bytes().take(6).enumerate() {
        us += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
    }
    if frac.len() > 6 && frac.as_bytes()[6] >= b'5' {
        us += 1;
    }
    Some(secs * 1_000_000 + us)
}

/// `YYYY-MM-DD` with an optional ` BC` → days since 2000-01-01.
fn parse_ymd(s: &str, bc: bool) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y = digits(it.next()?)?;
    let m = digits(it.next()?)?;
    let d = digits(it.next()?)?;
    if y == 0 {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    days_of(y, m, d)
}

fn strip_bc(s: &str) -> (&str, bool) {
    let t = s.trim();
    let cut = t.len().saturating_sub(3);
    match t.get(cut..) {
        Some(tail) if t.len() > 3 && tail.eq_ignore_ascii_case(" bc") => {
            (t[..cut].trim_end(), true)
        }
        Some(tail) if t.len() > 3 && tail.eq_ignore_ascii_case(" ad") => {
            (t[..cut].trim_end(), false)
        }
        _ => (t, false),
    }
}

/// A `date` in ISO form, `epoch` or `±infinity`.
pub fn parse_date(s: &str) -> Option<i32> {
    let (t, bc) = strip_bc(s);
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Some(DATE_POS_INF),
        "-infinity" => return Some(DATE_NEG_INF),
        "epoch" => return Some(-10_957),
        _ => {}
    }
    // A date may carry a time (ignored), as Postgres accepts `'2020-01-01 10:00'::date`.
    let day_part = t.split([' ', 'T']).next()?;
    i32::try_from(parse_ymd(day_part, bc)?).ok()
}

/// A `time`: `HH:MM[:SS[.f]]`.
pub fn parse_time(s: &str) -> Option<i64> {
    parse_time_of_day(s.trim())
}

/// A `timestamp` (`with_zone`: timestamptz, where a missing zone is UTC) in ISO form, `epoch`
/// or `±infinity`. For a timestamp without time zone, a zone in the text is ignored.
pub fn parse_timestamp(s: &str, with_zone: bool) -> Option<i64> {
    let (t, bc) = strip_bc(s);
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Some(TS_POS_INF),
        "-infinity" => return Some(TS_NEG_INF),
        "epoch" => return Some(-UNIX_OFFSET * 1_000_000),
        _ => {}
    }
    let (date, rest) = match t.find([' ', 'T', 't']) {
        Some(i) => (&t[..i], t[i + 1..].trim()),
        None => (t, ""),
    };
    let days = parse_ymd(date, bc)?;
    // The time runs up to a zone: `+hh[:mm]`, `-hh[:mm]`, `Z`, or ` name`.
    let (time, zone) = match rest.find(['+', '-', 'Z', 'z', ' ']) {
        Some(i) => (&rest[..i], Some(rest[i..].trim())),
        None => (rest, None),
    };
    let us = if time.is_empty() {
        0
    } else {
        parse_time_of_day(time)?
    };
    let local = days.checked_mul(DAY)?.checked_add(us)?;
    let t = match zone {
        Some(z) if with_zone => {
            let zone = if z.eq_ignore_ascii_case("z") {
                Zone::Fixed(0)
            } else {
                Zone::parse(z)?
            };
            zone.utc_of(local)?
        }
        Some(z) => {
            Zone::parse(if z.eq_ignore_ascii_case("z") {
                "+00"
            } else {
                z
            })?;
            local
        }
        None => local,
    };
    valid_ts(t)
}

/// An interval in Postgres' verbose input (`1 year 2 mons 3 days 04:05:06.7`, `-1 day`, `0`,
/// `@ 1 hour ago`), ISO 8601 (`P1Y2M3DT4H5M6.7S`, also how shapesync's sessions print them).
pub fn parse_interval(s: &str) -> Option<Interval> {
    let t = s.trim();
    if let Some(iso) = t.strip_prefix(['P', 'p']) {
        return parse_iso_interval(iso);
    }
    let mut months: f64 = 0.0;
    let mut iv = Interval {
        months: 0,
        days: 0,
        micros: 0,
    };
    let mut frac_micros: f64 = 0.0;
    let tokens: Vec<&str> = t.split_whitespace().filter(|w| *w != "@").collect();
    if tokens.is_empty() {
        return None;
    }
    let mut ago = false;
    let mut i = 0;
    while i < tokens.len() {
        let tok = tokens[i];
        if tok.eq_ignore_ascii_case("ago") {
            ago = true;
            i += 1;
            continue;
        }
        if tok.contains(':') {
            let (neg, body) = match tok.strip_prefix('-') {
                Some(b) => (true, b),
                None => (false, tok.strip_prefix('+').unwrap_or(tok)),
            };
            let mut parts = body.split(':');
            let h = digits(parts.next()?)?;
            let m = digits(parts.next()?)?;
            let us = match parts.next() {
                Some(sec) => parse_seconds(sec)?,
                None => 0,
            };
            if parts.next().is_some() || m > 59 || us >= 60_000_000 {
                return None;
            }
            let v = h
                .checked_mul(3_600_000_000)?
                .checked_add(m * 60_000_000 + us)?;
            iv.micros = iv.micros.checked_add(if neg { -v } else { v })?;
            i += 1;
            continue;
        }
        let num: f64 = tok.parse().ok()?;
        if !num.is_finite() {
            return None;
        }
        let unit = tokens.get(i + 1).map(|u| u.to_ascii_lowercase());
        let (scale_micros, unit_months, unit_days, used) = match unit.as_deref() {
            Some("microsecond" | "microseconds" | "us" | "usec" | "usecs") => (1.0, 0.0, 0.0, true),
            Some("millisecond" | "milliseconds" | "ms" | "msec" | "msecs") => (1e3, 0.0, 0.0, true),
            Some("second" | "seconds" | "s" | "sec" | "secs") => (1e6, 0.0, 0.0, true),
            Some("minute" | "minutes" | "m" | "min" | "mins") => (6e7, 0.0, 0.0, true),
            Some("hour" | "hours" | "h" | "hr" | "hrs") => (3.6e9, 0.0, 0.0, true),
            Some("day" | "days" | "d") => (0.0, 0.0, 1.0, true),
            Some("week" | "weeks" | "w") => (0.0, 0.0, 7.0, true),
            Some("mon" | "mons" | "month" | "months") => (0.0, 1.0, 0.0, true),
            Some("year" | "years" | "y" | "yr" | "yrs") => (0.0, 12.0, 0.0, true),
            Some("decade" | "decades") => (0.0, 120.0, 0.0, true),
            Some("century" | "centuries") => (0.0, 1200.0, 0.0, true),
            Some("millennium" | "millennia" | "millenniums") => (0.0, 12000.0, 0.0, true),
            // A bare number is seconds.
            None => (1e6, 0.0, 0.0, false),
            Some(_) => return None,
        };
        if unit_months != 0.0 {
            let whole = num.trunc();
            months += whole * unit_months;
            let frac_months = (num - whole) * unit_months;
            if unit_months >= 12.0 {
                months += frac_months.round();
            } else {
                let fd = frac_months * 30.0;
                iv.days = iv.days.checked_add(fd.trunc() as i32)?;
                frac_micros += (fd - fd.trunc()) * 86_400e6;
            }
        } else if unit_days != 0.0 {
            let v = num * unit_days;
            iv.days = iv.days.checked_add(v.trunc() as i32)?;
            frac_micros += (v - v.trunc()) * 86_400e6;
        } else {
            frac_micros += num * scale_micros;
        }
        i += if used { 2 } else { 1 };
    }
    iv.months = i32::try_from(months as i64).ok()?;
    let fm = frac_micros.round();
    if fm.abs() > 9.2e18 {
        return None;
    }
    iv.micros = iv.micros.checked_add(fm as i64)?;
    if ago {
        iv = iv.neg()?;
    }
    Some(iv)
}

/// ISO 8601 with designators, after the `P`: `1Y2M3DT4H5M6.7S` (signed numbers allowed).
fn parse_iso_interval(s: &str) -> Option<Interval> {
    let mut iv = Interval {
        months: 0,
        days: 0,
        micros: 0,
    };
    let mut in_time = false;
    let mut num = String::new();
    let mut any = false;
    for c in s.chars() {
        match c {
            'T' | 't' if num.is_empty() => in_time = true,
            '0'..='9' | '.' | '-' | '+' => num.push(c),
            _ => {
                let u = c.to_ascii_uppercase();
                if num.is_empty() {
                    return None;
                }
                any = true;
                if in_time {
                    let us = parse_signed_seconds(&num)?;
                    let mult = match u {
                        'H' => 3600,
                        'M' => 60,
                        'S' => 1,
                        _ => return None,
                    };
                    iv.micros = iv.micros.checked_add(us.checked_mul(mult)?)?;
                } else {
                    let v: i64 = num.parse().ok()?;
                    match u {
                        'Y' => {
                            iv.months = iv
                                .months
                                .checked_add(i32::try_from(v.checked_mul(12)?).ok()?)?
                        }
                        'M' => iv.months = iv.months.checked_add(i32::try_from(v).ok()?)?,
                        'W' => {
                            iv.days = iv
                                .days
                                .checked_add(i32::try_from(v.checked_mul(7)?).ok()?)?
                        }
                        'D' => iv.days = iv.days.checked_add(i32::try_from(v).ok()?)?,
                        _ => return None,
                    }
                }
                num.clear();
            }
        }
    }
    (num.is_empty() && any).then_some(iv)
}

fn parse_signed_seconds(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = parse_seconds(body)?;
    Some(if neg { -v } else { v })
}

fn fmt_ymd(days: i64) -> String {
    let (y, m, d) = j2date(days + EPOCH_J);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

fn fmt_time(us: i64) -> String {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let base = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac == 0 {
        base
    } else {
        format!("{base}.{}", format!("{frac:06}").trim_end_matches('0'))
    }
}

pub fn format_date(d: i32) -> String {
    match d {
        DATE_NEG_INF => "-infinity".into(),
        DATE_POS_INF => "infinity".into(),
        d => fmt_ymd(i64::from(d)),
    }
}

pub fn format_time(t: i64) -> String {
    fmt_time(t)
}

/// ISO output of a timestamp (`with_zone`: `+00` appended, the value being UTC).
pub fn format_timestamp(t: i64, with_zone: bool) -> String {
    match t {
        TS_NEG_INF => "-infinity".into(),
        TS_POS_INF => "infinity".into(),
        t => {
            let days = t.div_euclid(DAY);
            let ymd = fmt_ymd(days);
            let (date, bc) = match ymd.strip_suffix(" BC") {
                Some(d) => (d.to_string(), " BC"),
                None => (ymd, ""),
            };
            let zone = if with_zone { "+00" } else { "" };
            format!("{date} {}{zone}{bc}", fmt_time(t.rem_euclid(DAY)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips() {
        for s in [
            "2000-01-01",
            "2024-02-29",
            "1999-12-31",
            "0044-03-15 BC",
            "0001-01-01",
        ] {
            assert_eq!(format_date(parse_date(s).unwrap()), s);
        }
        assert_eq!(parse_date("2000-01-01"), Some(0));
        assert_eq!(parse_date("epoch"), parse_date("1970-01-01"));
        assert!(parse_date("2023-02-29").is_none());
        let ts = parse_timestamp("2020-01-01 12:00:00.5", false).unwrap();
        assert_eq!(format_timestamp(ts, false), "2020-01-01 12:00:00.5");
        assert_eq!(
            parse_timestamp("2019-12-31 19:00-05", true),
            parse_timestamp("2020-01-01 00:00+00", true)
        );
        assert_eq!(
            parse_timestamp("2024-03-10 10:30Z", true),
            parse_timestamp("2024-03-10 10:30", true)
        );
    }

    #[test]
    fn interval_arithmetic_follows_postgres() {
        let iv = |s: &str| parse_interval(s).unwrap();
        assert_eq!(iv("1 day").span(), iv("24 hours").span());
        assert_eq!(iv("1 mon").span(), iv("30 days").span());
        assert_eq!(
            iv("P1Y2M3DT4H5M6.7S"),
            iv("1 year 2 mons 3 days 04:05:06.7")
        );
        assert_eq!(iv("0"), iv("PT0S"));
        assert_eq!(iv("-1 day"), iv("P-1D"));
        assert_eq!(iv("00:00:00.000001").micros, 1);
        // '1 mon'::interval * 0.5 = 15 days
        assert_eq!(iv("1 mon").mul(0.5), Some(iv("15 days")));
        // '1 day'::interval * 0.5 = 12:00:00
        assert_eq!(iv("1 day").mul(0.5), Some(iv("12 hours")));
        // 2024-01-31 + 1 month = 2024-02-29
        let t = parse_timestamp("2024-01-31", false).unwrap();
        assert_eq!(
            ts_add(t, &iv("1 mon")),
            parse_timestamp("2024-02-29", false)
        );
        let week = trunc("week", parse_timestamp("2020-01-01 10:00", false).unwrap());
        assert_eq!(week, Some(parse_timestamp("2019-12-30", false)));
    }

    #[test]
    fn zones_convert_like_postgres() {
        let ny = Zone::parse("America/New_York").unwrap();
        let utc = parse_timestamp("2020-01-01 00:00+00", true).unwrap();
        assert_eq!(ny.local_of(utc), parse_timestamp("2019-12-31 19:00", false));
        // A skipped local time takes the offset before the transition (EST).
        let gap = parse_timestamp("2024-03-10 02:30", false).unwrap();
        assert_eq!(ny.utc_of(gap), parse_timestamp("2024-03-10 07:30+00", true));
        // SELECT timezone('-03:00', '2020-01-01 00:00'::timestamp) → 2019-12-31 21:00:00+00
        let minus3 = Zone::parse_posix("-03:00").unwrap();
        assert_eq!(
            minus3.utc_of(parse_timestamp("2020-01-01 00:00", false).unwrap()),
            parse_timestamp("2019-12-31 21:00+00", true)
        );
    }
}
