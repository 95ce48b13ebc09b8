//! Shape log messages as JSON (protocol.md §6), written directly into byte buffers from the
//! values' text bytes (no intermediate JSON tree on the hot path).
//!
//! A change message is built "open" (without its final `}}`) so the writer can add
//! `"last":true` to the headers once it knows the change was the shape's last in its transaction.

use crate::shape::definition::Replica;
use shapesync_filter::table::TableInfo;

/// One column value of a decoded row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    Null,
    Text(&'a [u8]),
    /// A TOASTed value Postgres did not send because it did not change, and that the old row
    /// could not fill in.
    Unknown,
}

impl<'a> Cell<'a> {
    pub fn bytes(self) -> Option<&'a [u8]> {
        match self {
            Cell::Text(b) => Some(b),
            _ => None,
        }
    }
}

/// A row as cells in table column order.
pub type Cells<'a> = [Cell<'a>];

/// Append `s` as a JSON string (quoted, escaped). Invalid UTF-8 is replaced, never passed on.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

fn write_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let s = match std::str::from_utf8(s) {
        Ok(_) => std::borrow::Cow::Borrowed(s),
        Err(_) => std::borrow::Cow::Owned(String::from_utf8_lossy(s).into_owned().into_bytes()),
    };
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&s[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// The parts of a shape's messages that never change, prepared once per shape.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// `"schema"."table"` (unescaped; escaped when written).
    key_prefix: Vec<u8>,
    /// `"relation":["schema","table"]`
    relation: Vec<u8>,
    /// Selected columns: table index and `"name":` ready to write.
    columns: Vec<(usize, Vec<u8>)>,
    /// Key columns (table indexes), in key order.
    key: Vec<usize>,
    /// Selected key columns: the minimal `value` of deletes and updates.
    selected_key: Vec<usize>,
    replica: Replica,
}

/// What happened to a row, as the shape sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// Position of a change in the replication log.
#[derive(Debug, Clone, Copy)]
pub struct ChangeHeaders<'a> {
    pub lsn: u64,
    pub op_position: u64,
    pub xid: u32,
    /// `key_change_to` (on the delete half) or `key_change_from` (insert half) of a PK change.
    pub key_change: Option<(&'static str, &'a [u8])>,
}

impl Encoder {
    pub fn new(table: &TableInfo, selected: &[usize], replica: Replica) -> Self {
        let mut key_prefix = Vec::new();
        for (i, part) in [&table.schema, &table.name].iter().enumerate() {
            if i > 0 {
                key_prefix.push(b'.');
            }
            key_prefix.push(b'"');
            key_prefix.extend_from_slice(part.replace('"', "\"\"").as_bytes());
            key_prefix.push(b'"');
        }
        let mut relation = b"\"relation\":[".to_vec();
        write_str(&mut relation, table.schema.as_bytes());
        relation.push(b',');
        write_str(&mut relation, table.name.as_bytes());
        relation.push(b']');
        let columns = selected
            .iter()
            .map(|&i| {
                let mut name = Vec::new();
                write_str(&mut name, table.columns[i].name.as_bytes());
                name.push(b':');
                (i, name)
            })
            .collect();
        let selected_key = table
            .key
            .iter()
            .copied()
            .filter(|k| selected.contains(k))
            .collect();
        Encoder {
            key_prefix,
            relation,
            columns,
            key: table.key.clone(),
            selected_key,
            replica,
        }
    }

    /// The row's key: `"schema"."table"/"v1"/"v2"`, `/` doubled in values, NULL as `/_`.
    pub fn key(&self, row: &Cells<'_>) -> Vec<u8> {
        let mut k = self.key_prefix.clone();
        for &i in &self.key {
            match row[i] {
                Cell::Text(v) => {
                    k.extend_from_slice(b"/\"");
                    for &b in v {
                        if b == b'/' {
                            k.push(b'/');
                        }
                        k.push(b);
                    }
                    k.push(b'"');
                }
                _ => k.extend_from_slice(b"/_"),
            }
        }
        k
    }

    /// Do two rows have the same key?
    pub fn same_key(&self, a: &Cells<'_>, b: &Cells<'_>) -> bool {
        self.key.iter().all(|&i| a[i] == b[i])
    }

    /// A snapshot row: a complete insert message.
    pub fn snapshot_row(&self, out: &mut Vec<u8>, row: &Cells<'_>) {
        self.snapshot_row_marked(out, row, None);
    }

    /// A snapshot row with more headers (written by `extra` after the relation).
    pub fn snapshot_row_with(
        &self,
        out: &mut Vec<u8>,
        row: &Cells<'_>,
        extra: impl FnOnce(&mut Vec<u8>),
    ) {
        self.insert_open(out, row);
        extra(out);
        out.extend_from_slice(b"}}");
    }

    /// An insert of the whole selected row without log position, left open after the
    /// relation header (a snapshot or move-in row).
    pub fn insert_open(&self, out: &mut Vec<u8>, row: &Cells<'_>) {
        out.extend_from_slice(b"{\"key\":");
        write_str(out, &self.key(row));
        out.extend_from_slice(b",\"value\":");
        self.value(out, row, self.columns.iter().map(|c| c.0));
        out.extend_from_slice(b",\"headers\":{\"operation\":\"insert\",");
        out.extend_from_slice(&self.relation);
    }

    /// A delete by key (value: the selected key columns), left open after `txids` (a row a
    /// move-out takes away; `row` needs only its key columns).
    pub fn delete_open(&self, out: &mut Vec<u8>, row: &Cells<'_>, xids: &[u32]) {
        out.extend_from_slice(b"{\"key\":");
        write_str(out, &self.key(row));
        out.extend_from_slice(b",\"value\":");
        self.value(out, row, self.selected_key.iter().copied());
        out.extend_from_slice(b",\"headers\":{\"operation\":\"delete\",");
        out.extend_from_slice(&self.relation);
        let xids: Vec<String> = xids.iter().map(u32::to_string).collect();
        out.extend_from_slice(format!(",\"txids\":[{}]", xids.join(",")).as_bytes());
    }

    /// An update without log position from `old` to `new` (value: the selected key and the
    /// changed columns; the whole row for `replica=full`), left open after the relation.
    pub fn update_open(&self, out: &mut Vec<u8>, old: &Cells<'_>, new: &Cells<'_>) {
        out.extend_from_slice(b"{\"key\":");
        write_str(out, &self.key(new));
        out.extend_from_slice(b",\"value\":");
        if self.replica == Replica::Full {
            self.value(out, new, self.columns.iter().map(|c| c.0));
        } else {
            let cols: Vec<usize> =
                self.selected_key
                    .iter()
                    .copied()
                    .chain(
                        self.columns.iter().map(|c| c.0).filter(|&i| {
                            changed(old[i], new[i]) && !self.selected_key.contains(&i)
                        }),
                    )
                    .collect();
            self.value(out, new, cols.into_iter());
        }
        out.extend_from_slice(b",\"headers\":{\"operation\":\"update\",");
        out.extend_from_slice(&self.relation);
    }

    /// A snapshot row; subset snapshot rows carry their snapshot's `snapshot_mark`.
    pub fn snapshot_row_marked(&self, out: &mut Vec<u8>, row: &Cells<'_>, mark: Option<u32>) {
        self.insert_open(out, row);
        if let Some(m) = mark {
            out.extend_from_slice(format!(",\"snapshot_mark\":{m}").as_bytes());
        }
        out.extend_from_slice(b"}}");
    }

    /// A change message, left open after the last header (see [`close`]).
    pub fn change(
        &self,
        out: &mut Vec<u8>,
        op: Op,
        old: Option<&Cells<'_>>,
        new: Option<&Cells<'_>>,
        h: &ChangeHeaders<'_>,
    ) {
        let all = || self.columns.iter().map(|c| c.0);
        let row = match op {
            Op::Delete => old,
            _ => new,
        };
        let Some(row) = row else { return };
        out.extend_from_slice(b"{\"key\":");
        write_str(out, &self.key(row));
        out.extend_from_slice(b",\"value\":");
        let full = self.replica == Replica::Full;
        match (op, old) {
            (Op::Insert, _) => self.value(out, row, all()),
            (Op::Delete, _) if full => self.value(out, row, all()),
            (Op::Delete, _) => self.value(out, row, self.selected_key.iter().copied()),
            (Op::Update, Some(old)) => {
                let changed: Vec<usize> = all().filter(|&i| changed(old[i], row[i])).collect();
                if full {
                    self.value(out, row, all());
                    out.extend_from_slice(b",\"old_value\":");
                    self.value(out, old, changed.iter().copied());
                } else {
                    let cols = self.selected_key.iter().copied().chain(
                        changed
                            .into_iter()
                            .filter(|i| !self.selected_key.contains(i)),
                    );
                    self.value(out, row, cols);
                }
            }
            (Op::Update, None) => self.value(out, row, all()),
        }
        out.extend_from_slice(b",\"headers\":{\"operation\":");
        out.extend_from_slice(match op {
            Op::Insert => b"\"insert\",",
            Op::Update => b"\"update\",",
            Op::Delete => b"\"delete\",",
        });
        out.extend_from_slice(&self.relation);
        out.extend_from_slice(
            format!(
                ",\"lsn\":\"{}\",\"op_position\":{},\"txids\":[{}]",
                h.lsn, h.op_position, h.xid
            )
            .as_bytes(),
        );
        if let Some((name, key)) = h.key_change {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            write_str(out, key);
        }
    }

    /// Are all the selected columns' values known (none the stream left out)?
    pub fn selected_known(&self, row: &Cells<'_>) -> bool {
        self.columns.iter().all(|&(i, _)| row[i] != Cell::Unknown)
    }

    /// Are the key columns' values known?
    pub fn key_known(&self, row: &Cells<'_>) -> bool {
        self.key.iter().all(|&i| row[i] != Cell::Unknown)
    }

    /// Do any selected columns differ between the two rows?
    pub fn selected_changed(&self, old: &Cells<'_>, new: &Cells<'_>) -> bool {
        self.columns.iter().any(|&(i, _)| changed(old[i], new[i]))
    }

    fn value(&self, out: &mut Vec<u8>, row: &Cells<'_>, cols: impl Iterator<Item = usize>) {
        out.push(b'{');
        let mut first = true;
        for i in cols {
            let cell = row[i];
            if cell == Cell::Unknown {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            if let Some((_, name)) = self.columns.iter().find(|c| c.0 == i) {
                out.extend_from_slice(name);
            }
            match cell {
                Cell::Text(v) => write_str(out, v),
                _ => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }
}

/// A value changed unless both sides are known and equal (an unknown TOAST value is unchanged).
fn changed(old: Cell<'_>, new: Cell<'_>) -> bool {
    new != Cell::Unknown && old != new
}

/// Finish an open change message, marking it the shape's last in its transaction if so.
pub fn close(out: &mut Vec<u8>, last: bool) {
    if last {
        out.extend_from_slice(b",\"last\":true");
    }
    out.extend_from_slice(b"}}");
}

/// `{"headers":{"control":"snapshot-end","xmin":"…","xmax":"…","xip_list":[…]}}`
pub fn snapshot_end(xmin: u64, xmax: u64, xip: &[u64]) -> Vec<u8> {
    let list: Vec<String> = xip.iter().map(|x| format!("\"{x}\"")).collect();
    format!(
        "{{\"headers\":{{\"control\":\"snapshot-end\",\"xmin\":\"{xmin}\",\"xmax\":\"{xmax}\",\"xip_list\":[{}]}}}}",
        list.join(",")
    )
    .into_bytes()
}

/// `{"headers":{"control":"up-to-date","global_last_seen_lsn":"<lsn>"}}`
pub fn up_to_date(lsn: u64) -> Vec<u8> {
    format!("{{\"headers\":{{\"control\":\"up-to-date\",\"global_last_seen_lsn\":\"{lsn}\"}}}}")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapesync_filter::table::ColumnInfo;

    fn table() -> TableInfo {
        let c = |name: &str, pk: Option<usize>| ColumnInfo {
            name: name.into(),
            type_oid: 0,
            type_name: "text".into(),
            dims: 0,
            type_mod: -1,
            not_null: false,
            pk_index: pk,
        };
        TableInfo::new(
            1,
            "public".into(),
            "items".into(),
            vec![c("id", Some(0)), c("a", None), c("b", None)],
        )
    }

    fn json(v: &[u8]) -> serde_json::Value {
        serde_json::from_slice(v).unwrap()
    }

    #[test]
    fn escapes_json() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\n\u{1}é".as_bytes());
        assert_eq!(json(&out), serde_json::json!("a\"b\\c\n\u{1}é"));
        let mut out = Vec::new();
        write_str(&mut out, &[b'a', 0xff]);
        assert_eq!(json(&out), serde_json::json!("a\u{fffd}"));
    }

    #[test]
    fn snapshot_row_and_key() {
        let e = Encoder::new(&table(), &[0, 1, 2], Replica::Default);
        let mut out = Vec::new();
        e.snapshot_row(
            &mut out,
            &[Cell::Text(b"1/2"), Cell::Text(b"x"), Cell::Null],
        );
        assert_eq!(
            json(&out),
            serde_json::json!({"key":"\"public\".\"items\"/\"1//2\"","value":{"id":"1/2","a":"x","b":null},
                "headers":{"operation":"insert","relation":["public","items"]}})
        );
    }

    #[test]
    fn updates_carry_key_and_changed_columns() {
        let old = [Cell::Text(b"1"), Cell::Text(b"x"), Cell::Text(b"y")];
        let new = [Cell::Text(b"1"), Cell::Text(b"z"), Cell::Text(b"y")];
        let h = ChangeHeaders {
            lsn: 10,
            op_position: 2,
            xid: 7,
            key_change: None,
        };
        let e = Encoder::new(&table(), &[0, 1, 2], Replica::Default);
        let mut out = Vec::new();
        e.change(&mut out, Op::Update, Some(&old), Some(&new), &h);
        close(&mut out, true);
        let v = json(&out);
        assert_eq!(v["value"], serde_json::json!({"id":"1","a":"z"}));
        assert_eq!(v["headers"]["lsn"], "10");
        assert_eq!(v["headers"]["op_position"], 2);
        assert_eq!(v["headers"]["txids"], serde_json::json!([7]));
        assert_eq!(v["headers"]["last"], true);
        let e = Encoder::new(&table(), &[0, 1, 2], Replica::Full);
        let mut out = Vec::new();
        e.change(&mut out, Op::Update, Some(&old), Some(&new), &h);
        close(&mut out, false);
        let v = json(&out);
        assert_eq!(v["value"], serde_json::json!({"id":"1","a":"z","b":"y"}));
        assert_eq!(v["old_value"], serde_json::json!({"a":"x"}));
        assert!(v["headers"].get("last").is_none());
    }

    #[test]
    fn deletes_carry_the_key_only_by_default() {
        let old = [Cell::Text(b"1"), Cell::Text(b"x"), Cell::Null];
        let h = ChangeHeaders {
            lsn: 10,
            op_position: 0,
            xid: 7,
            key_change: Some(("key_change_to", b"k")),
        };
        let e = Encoder::new(&table(), &[0, 2], Replica::Default);
        let mut out = Vec::new();
        e.change(&mut out, Op::Delete, Some(&old), None, &h);
        close(&mut out, false);
        let v = json(&out);
        assert_eq!(v["value"], serde_json::json!({"id":"1"}));
        assert_eq!(v["headers"]["key_change_to"], "k");
        assert_eq!(v["headers"]["operation"], "delete");
    }

    #[test]
    fn control_messages() {
        assert_eq!(
            json(&snapshot_end(5, 9, &[6, 7])),
            serde_json::json!({"headers":{"control":"snapshot-end","xmin":"5","xmax":"9","xip_list":["6","7"]}})
        );
        assert_eq!(
            json(&up_to_date(42)),
            serde_json::json!({"headers":{"control":"up-to-date","global_last_seen_lsn":"42"}})
        );
    }
}
