//! The oracle's table: one column of every type the where-clause engine supports (plus an enum,
//! a domain, int and text arrays and jsonb), filled with edge values — NULLs, zero, -1, integer
//! extremes, numerics with many digits and trailing zeros, NaN and infinities, empty and padded
//! strings, quotes and unicode, empty arrays and arrays holding NULLs, nested jsonb — and random
//! mixes of them.

use super::Rng;

pub const DDL: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TABLE t (
    id int8 PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8, b bool,
    t text, vc varchar(12), bc char(5), u uuid, by bytea,
    d date, tm time, ts timestamp, tz timestamptz, iv interval,
    e mood, dm posint, ia int4[], ta text[], j jsonb
);";

/// Column names (after `id`) and the SQL literals their values are drawn from.
pub const POOLS: &[(&str, &[&str])] = &[
    ("i2", &["0", "-1", "1", "7", "42", "100", "-32768", "32767"]),
    (
        "i4",
        &[
            "0",
            "-1",
            "1",
            "7",
            "42",
            "1000",
            "-5",
            "2147483647",
            "-2147483648",
        ],
    ),
    (
        "i8",
        &[
            "0",
            "-1",
            "7",
            "42",
            "4294967296",
            "9223372036854775807",
            "-9223372036854775808",
        ],
    ),
    (
        "num",
        &[
            "0",
            "1.5",
            "1.50",
            "-1",
            "42",
            "7.000",
            "-0.000001",
            "0.000000000000000000000000000001",
            "123456789012345678901234567890.123456789",
            "-98765432109876543210.0000",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
        ],
    ),
    (
        "f4",
        &[
            "0",
            "'-0'",
            "1.5",
            "0.1",
            "42",
            "-1",
            "3.4e38",
            "1e-45",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
        ],
    ),
    (
        "f8",
        &[
            "0",
            "'-0'",
            "1.5",
            "0.1",
            "42",
            "-1",
            "1e308",
            "5e-324",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
        ],
    ),
    ("b", &["true", "false"]),
    (
        "t",
        &[
            "''", "' '", "'a'", "'abc'", "'ABC'", "'a b '", "'it''s'", "'Ä'", "'äbc'", "'日本'",
            "'a%b'", "'a_b'", "'a\\b'", "'42'", "'zz'", "'Abc'",
        ],
    ),
    (
        "vc",
        &[
            "''", "'a'", "'abc'", "'ABC'", "'x y'", "'ok'", "'Ä'", "'a%'", "'it''s'",
        ],
    ),
    (
        "bc",
        &["''", "'ab'", "'ab  '", "'a'", "'abcde'", "' a'", "'AB'"],
    ),
    (
        "u",
        &[
            "'00000000-0000-0000-0000-000000000000'",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
            "'12345678-1234-5678-1234-567812345678'",
        ],
    ),
    (
        "by",
        &[
            "'\\x'",
            "'\\x00'",
            "'\\x00ff'",
            "'\\x41'",
            "'\\xdeadbeef'",
            "'\\x4142'",
        ],
    ),
    (
        "d",
        &[
            "'2020-01-01'",
            "'1999-12-31'",
            "'2024-02-29'",
            "'2020-01-02'",
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 BC'",
        ],
    ),
    (
        "tm",
        &[
            "'00:00'",
            "'12:34:56.789'",
            "'23:59:59.999999'",
            "'24:00:00'",
            "'12:00'",
        ],
    ),
    (
        "ts",
        &[
            "'2020-01-01 00:00'",
            "'2020-01-01 12:00:00.5'",
            "'1999-12-31 23:59:59'",
            "'2024-02-29 01:02:03'",
            "'infinity'",
            "'-infinity'",
        ],
    ),
    (
        "tz",
        &[
            "'2020-01-01 00:00+00'",
            "'2020-01-01 05:00+05'",
            "'2024-03-10 02:30-08'",
            "'1999-12-31 23:59:59.999+01'",
            "'infinity'",
        ],
    ),
    (
        "iv",
        &[
            "'0'",
            "'1 day'",
            "'24 hours'",
            "'1 mon'",
            "'30 days'",
            "'-1 day'",
            "'1 year 2 mons 3 days 04:05:06.7'",
            "'00:00:00.000001'",
        ],
    ),
    ("e", &["'sad'", "'ok'", "'happy'"]),
    ("dm", &["1", "5", "42", "2147483647"]),
    (
        "ia",
        &[
            "'{}'",
            "'{1,2,3}'",
            "'{NULL}'",
            "'{1,NULL,3}'",
            "'{-1}'",
            "'{2147483647}'",
            "'{3,2,1}'",
            "'{7}'",
        ],
    ),
    (
        "ta",
        &[
            "'{}'",
            "'{a,b}'",
            "'{\"\",NULL}'",
            "'{\"a b\",\"it''s\"}'",
            "'{Ä}'",
            "'{abc}'",
        ],
    ),
    (
        "j",
        &[
            "'{}'",
            "'[]'",
            "'null'",
            "'1'",
            "'\"x\"'",
            "'{\"a\": 1}'",
            "'{\"a\": \"x\", \"b\": [1, 2]}'",
            "'{\"a\": {\"x\": 1}, \"n\": null}'",
            "'{\"a\": 1.50}'",
            "'[1, \"a\", null]'",
            "'{\"b\": true, \"a\": \"1\"}'",
            "'{\"a\": \"Ä\", \"c\": {\"d\": [true]}}'",
        ],
    ),
];

/// `INSERT` statements for `n` rows: row 1 all NULL, then one row per pool position (so every
/// edge value appears at least once), then random rows with ~15% NULLs.
pub fn inserts(rng: &mut Rng, n: usize) -> Vec<String> {
    let longest = POOLS.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for id in 1..=n {
        let values: Vec<String> = POOLS
            .iter()
            .map(|(_, pool)| {
                if id == 1 {
                    "NULL".to_string()
                } else if id - 2 < longest {
                    pool[(id - 2) % pool.len()].to_string()
                } else if rng.below(100) < 15 {
                    "NULL".to_string()
                } else {
                    pool[rng.below(pool.len())].to_string()
                }
            })
            .collect();
        let names: Vec<&str> = POOLS.iter().map(|(c, _)| *c).collect();
        out.push(format!(
            "INSERT INTO t (id, {}) VALUES ({id}, {})",
            names.join(", "),
            values.join(", ")
        ));
    }
    out
}
