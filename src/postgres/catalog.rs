//! Table metadata read from the Postgres catalog (the model itself, `TableInfo`, is the
//! where-clause crate's, `shapesync_filter::table`): columns in the order pgoutput sends them (attnum
//! order, without dropped and generated columns), types, type modifiers and the primary key, and
//! the `electric-schema` header built from them (protocol.md §7).

use shapesync_filter::ident::quote_ident;
use shapesync_filter::table::{ColumnInfo, Leaf, TableInfo, TextLocale};

/// Errors looking up a table.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("Table {0} does not exist. If the table name contains capitals or special characters you must quote it.")]
    NotFound(String),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

const TABLE_SQL: &str =
    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

const COLUMNS_SQL: &str = "SELECT a.attname::text, a.atttypid, a.atttypmod, a.attnotnull, a.attndims, \
            t.typname::text, t.typcategory::text, coalesce(et.typname::text, ''), \
            coalesce(array_position(i.indkey::int2[], a.attnum) - array_lower(i.indkey::int2[], 1) + 1, 0), \
            CASE WHEN a.attcollation = 0 THEN '' \
                 ELSE (SELECT co.collname::text FROM pg_collation co WHERE co.oid = a.attcollation) END, \
            CASE WHEN t.typtype = 'd' \
                 THEN (SELECT bt.typname::text FROM pg_type bt WHERE bt.oid = t.typbasetype) \
                 ELSE '' END, \
            CASE WHEN t.typtype = 'e' OR et.typtype = 'e' \
                      OR (t.typtype = 'd' AND (SELECT bt.typtype FROM pg_type bt WHERE bt.oid = t.typbasetype) = 'e') \
                 THEN (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e \
                       WHERE e.enumtypid = CASE WHEN t.typcategory = 'A' THEN t.typelem \
                                                WHEN t.typtype = 'd' THEN t.typbasetype \
                                                ELSE t.oid END) \
                 ELSE '{}' END \
     FROM pg_attribute a \
     JOIN pg_type t ON t.oid = a.atttypid \
     LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
     LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
     ORDER BY a.attnum";

/// The database's locale; `datlocprovider` read through jsonb so that servers before 15
/// (without the column) answer too. It never changes for a database: callers that load many
/// tables load it once ([`load_table_in`]).
const LOCALE_SQL: &str = "SELECT d.datcollate::text, d.datctype::text, \
     coalesce(to_jsonb(d) ->> 'datlocprovider', '') FROM pg_database d \
     WHERE d.datname = current_database()";

pub async fn load_locale(client: &tokio_postgres::Client) -> Result<TextLocale, CatalogError> {
    let r = client.query_one(LOCALE_SQL, &[]).await?;
    Ok(TextLocale {
        collate: r.get(0),
        ctype: r.get(1),
        provider: r.get(2),
    })
}

/// Load a table's metadata (and the database's locale). Identifiers are bound as parameters,
/// never spliced into SQL.
pub async fn load_table(
    client: &tokio_postgres::Client,
    schema: &str,
    name: &str,
) -> Result<TableInfo, CatalogError> {
    let locale = load_locale(client).await?;
    load_table_in(client, schema, name, locale).await
}

/// [`load_table`] with the database's locale already known.
pub async fn load_table_in(
    client: &tokio_postgres::Client,
    schema: &str,
    name: &str,
    locale: TextLocale,
) -> Result<TableInfo, CatalogError> {
    let rows = client.query(TABLE_SQL, &[&schema, &name]).await?;
    let Some(row) = rows.first() else {
        return Err(CatalogError::NotFound(format!(
            "{}.{}",
            quote_ident(schema),
            quote_ident(name)
        )));
    };
    let oid: u32 = row.get(0);
    let mut table = load_columns(client, oid, schema.to_string(), name.to_string()).await?;
    table.locale = locale;
    Ok(table)
}

const TABLE_BY_OID_SQL: &str = "SELECT n.nspname::text, c.relname::text FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1 AND c.relkind IN ('r', 'p')";

/// The table with this oid as it is now, or `None` if it was dropped.
pub async fn load_table_by_oid(
    client: &tokio_postgres::Client,
    oid: u32,
) -> Result<Option<TableInfo>, CatalogError> {
    let rows = client.query(TABLE_BY_OID_SQL, &[&oid]).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(
        load_columns(client, oid, row.get(0), row.get(1)).await?,
    ))
}

/// A relation's partitioned ancestors, nearest first (empty for a table that is not a
/// partition), or `None` if no relation has this oid any more.
pub async fn partition_ancestors(
    client: &tokio_postgres::Client,
    oid: u32,
) -> Result<Option<Vec<u32>>, CatalogError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = $1), \
               ARRAY(SELECT a.relid::oid FROM pg_partition_ancestors($1::oid::regclass) \
                     WITH ORDINALITY AS a(relid, n) WHERE a.relid::oid <> $1 ORDER BY a.n)",
            &[&oid],
        )
        .await?;
    let exists: bool = row.get(0);
    Ok(exists.then(|| row.get(1)))
}

/// Whether transaction `xid` (as pgoutput's Begin names it: 32 bits) is visible to a new
/// snapshot, i.e. whether catalog rows it wrote can be read. A committed transaction can be
/// decoded and sent by the walsender a moment before the committing backend makes it visible
/// to other sessions; a lookup in that moment would not see what the transaction created.
pub async fn xact_visible(client: &tokio_postgres::Client, xid: u32) -> Result<bool, CatalogError> {
    let row = client
        .query_one(
            "WITH s AS (SELECT pg_current_snapshot() AS snap), \
                  m AS (SELECT pg_snapshot_xmax(snap)::text::int8 AS xmax FROM s) \
             SELECT pg_visible_in_snapshot( \
                 ((((m.xmax >> 32) - CASE WHEN $1 >= (m.xmax & 4294967295) THEN 1 ELSE 0 END) << 32) \
                   | $1)::text::xid8, s.snap) \
             FROM s, m",
            &[&i64::from(xid)],
        )
        .await?;
    Ok(row.get(0))
}

/// The leaf partitions of a partitioned table (foreign tables included), ascending (empty for
/// any other table), each with the links that attach it ([`Leaf::link`]).
pub async fn leaf_partitions(
    client: &tokio_postgres::Client,
    oid: u32,
) -> Result<Vec<Leaf>, CatalogError> {
    let rows = client
        .query(
            "SELECT t.relid::oid, coalesce((SELECT string_agg(i.xmin::text, '.' ORDER BY a.n) \
                 FROM pg_partition_ancestors(t.relid) WITH ORDINALITY AS a(relid, n) \
                 JOIN pg_inherits i ON i.inhrelid = a.relid \
                 WHERE a.relid <> $1::oid::regclass \
                   AND a.relid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass))), '') \
             FROM pg_partition_tree($1::oid::regclass) t \
             WHERE t.isleaf AND t.relid::oid <> $1 ORDER BY 1",
            &[&oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Leaf {
            oid: r.get(0),
            link: r.get(1),
        })
        .collect())
}

/// The names of the leaf partitions of a partitioned table that are not plain tables (foreign
/// tables: Postgres does not replicate their changes).
pub async fn unreplicated_partitions(
    client: &tokio_postgres::Client,
    oid: u32,
) -> Result<Vec<String>, CatalogError> {
    let rows = client
        .query(
            "SELECT c.oid::regclass::text FROM pg_partition_tree($1::oid::regclass) t \
             JOIN pg_class c ON c.oid = t.relid \
             WHERE t.isleaf AND c.relkind <> 'r' ORDER BY 1",
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn load_columns(
    client: &tokio_postgres::Client,
    oid: u32,
    schema: String,
    name: String,
) -> Result<TableInfo, CatalogError> {
    let rows = client.query(COLUMNS_SQL, &[&oid]).await?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut collations = Vec::with_capacity(rows.len());
    let mut base_types = Vec::with_capacity(rows.len());
    let mut enum_labels = Vec::with_capacity(rows.len());
    for r in &rows {
        collations.push(r.get::<_, String>(9));
        base_types.push(r.get::<_, String>(10));
        enum_labels.push(r.get::<_, Vec<String>>(11));
        let category: String = r.get(6);
        let is_array = category == "A";
        let elem: String = r.get(7);
        // 1-based position in the key (int2vector subscripts start at 0, hence the lower bound).
        let pk_pos: i32 = r.get(8);
        let dims: i32 = r.get(4);
        columns.push(ColumnInfo {
            name: r.get(0),
            type_oid: r.get(1),
            type_mod: r.get(2),
            not_null: r.get(3),
            dims: if is_array { dims.max(1) } else { 0 },
            type_name: if is_array { elem } else { r.get(5) },
            pk_index: (pk_pos > 0).then(|| (pk_pos - 1) as usize),
        });
    }
    let mut table = TableInfo::new(oid, schema, name, columns);
    table.collations = collations;
    table.base_types = base_types;
    table.enum_labels = enum_labels;
    let kind = client
        .query_one("SELECT relkind::text FROM pg_class WHERE oid = $1", &[&oid])
        .await?;
    table.partitioned = kind.get::<_, String>(0) == "p";
    if table.partitioned {
        table.leaves = leaf_partitions(client, oid).await?;
    }
    Ok(table)
}

/// The `electric-schema` header value for the selected columns (indexes into `table.columns`).
pub fn schema_header(table: &TableInfo, selected: &[usize]) -> String {
    let mut obj = serde_json::Map::new();
    for &i in selected {
        let c = &table.columns[i];
        let mut info = serde_json::Map::new();
        info.insert("type".into(), c.type_name.clone().into());
        if c.dims > 0 {
            info.insert("dims".into(), c.dims.into());
        }
        if let Some(p) = c.pk_index {
            info.insert("pk_index".into(), p.into());
        }
        if c.not_null {
            info.insert("not_null".into(), true.into());
        }
        type_mod_info(&c.type_name, c.type_mod, &mut info);
        obj.insert(c.name.clone(), serde_json::Value::Object(info));
    }
    serde_json::Value::Object(obj).to_string()
}

fn type_mod_info(
    type_name: &str,
    type_mod: i32,
    info: &mut serde_json::Map<String, serde_json::Value>,
) {
    if type_mod < 0 {
        return;
    }
    match type_name {
        "varchar" | "text" => {
            info.insert("max_length".into(), (type_mod - 4).into());
        }
        "bpchar" => {
            info.insert("length".into(), (type_mod - 4).into());
        }
        "bit" | "varbit" => {
            info.insert("length".into(), type_mod.into());
        }
        "time" | "timetz" | "timestamp" | "timestamptz" => {
            info.insert("precision".into(), type_mod.into());
        }
        "interval" => {
            let precision = type_mod & 0xFFFF;
            if precision != 0xFFFF {
                info.insert("precision".into(), precision.into());
            }
            if let Some(fields) = interval_fields((type_mod >> 16) & 0x7FFF) {
                info.insert("fields".into(), fields.into());
            }
        }
        "numeric" => {
            let m = type_mod - 4;
            info.insert("precision".into(), ((m >> 16) & 0xFFFF).into());
            // The scale is an 11-bit signed number in PG 15+.
            let scale = ((m & 0x7FF) ^ 0x400) - 0x400;
            info.insert("scale".into(), scale.into());
        }
        _ => {
            info.insert("type_mod".into(), type_mod.into());
        }
    }
}

/// The `fields` restriction of an interval type modifier (`INTERVAL_RANGE` bits).
fn interval_fields(range: i32) -> Option<&'static str> {
    const MONTH: i32 = 1 << 1;
    const YEAR: i32 = 1 << 2;
    const DAY: i32 = 1 << 3;
    const HOUR: i32 = 1 << 10;
    const MINUTE: i32 = 1 << 11;
    const SECOND: i32 = 1 << 12;
    Some(match range {
        YEAR => "YEAR",
        MONTH => "MONTH",
        DAY => "DAY",
        HOUR => "HOUR",
        MINUTE => "MINUTE",
        SECOND => "SECOND",
        r if r == YEAR | MONTH => "YEAR TO MONTH",
        r if r == DAY | HOUR => "DAY TO HOUR",
        r if r == DAY | HOUR | MINUTE => "DAY TO MINUTE",
        r if r == DAY | HOUR | MINUTE | SECOND => "DAY TO SECOND",
        r if r == HOUR | MINUTE => "HOUR TO MINUTE",
        r if r == HOUR | MINUTE | SECOND => "HOUR TO SECOND",
        r if r == MINUTE | SECOND => "MINUTE TO SECOND",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, type_mod: i32, pk: Option<usize>, not_null: bool) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            type_oid: 0,
            type_name: ty.into(),
            dims: 0,
            type_mod,
            not_null,
            pk_index: pk,
        }
    }

    #[test]
    fn schema_header_matches_reference_shape() {
        let mut ints = col("ints2", "int8", -1, None, false);
        ints.dims = 2;
        let t = TableInfo::new(
            1,
            "public".into(),
            "t".into(),
            vec![
                col("id", "int8", -1, Some(0), true),
                ints,
                col("name", "varchar", 127, None, true),
                col("price", "numeric", ((10 << 16) | 2) + 4, None, false),
                col("c", "bpchar", 9, None, false),
            ],
        );
        let h: serde_json::Value =
            serde_json::from_str(&schema_header(&t, &[0, 1, 2, 3, 4])).unwrap();
        assert_eq!(
            h["id"],
            serde_json::json!({"type":"int8","pk_index":0,"not_null":true})
        );
        assert_eq!(h["ints2"], serde_json::json!({"type":"int8","dims":2}));
        assert_eq!(
            h["name"],
            serde_json::json!({"type":"varchar","max_length":123,"not_null":true})
        );
        assert_eq!(
            h["price"],
            serde_json::json!({"type":"numeric","precision":10,"scale":2})
        );
        assert_eq!(h["c"], serde_json::json!({"type":"bpchar","length":5}));
    }

    #[test]
    fn key_without_pk_is_all_columns_by_name() {
        let t = TableInfo::new(
            1,
            "public".into(),
            "t".into(),
            vec![
                col("b", "int4", -1, None, false),
                col("a", "int4", -1, None, false),
            ],
        );
        assert_eq!(t.key, vec![1, 0]);
        assert!(!t.has_pk);
    }

    #[test]
    fn interval_fields_decode() {
        assert_eq!(
            interval_fields((1 << 3) | (1 << 10) | (1 << 11) | (1 << 12)),
            Some("DAY TO SECOND")
        );
        assert_eq!(interval_fields(0x7FFF), None);
    }
}
