//! Decoder for the messages of PostgreSQL's `pgoutput` logical replication output plugin,
//! protocol version 1 (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate
//! and logical decoding Message), as described in the PostgreSQL 15 documentation chapter
//! "Logical Replication Message Formats". The decoder is pure (no I/O, no state between
//! messages: relation caching is the caller's job) and zero-copy: column values and message
//! contents are `Bytes::slice`s of the input buffer; only identifiers (namespace, relation,
//! column, type and origin names, message prefixes) are copied into owned `String`s. It never
//! panics, whatever the input, and checks every declared length and count against the bytes
//! actually present before allocating.

use bytes::Bytes;

use crate::lsn::Lsn;

/// A PostgreSQL object identifier.
pub type Oid = u32;

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01 00:00:00 UTC).
/// Add it to a `commit_time` to get microseconds since the Unix epoch.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// `Truncate` option bit: `TRUNCATE ... CASCADE`.
pub const TRUNCATE_CASCADE: u8 = 1;
/// `Truncate` option bit: `TRUNCATE ... RESTART IDENTITY`.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `'B'`: start of a transaction.
    Begin(Begin),
    /// `'C'`: end of a transaction.
    Commit(Commit),
    /// `'O'`: the transaction originated on another node.
    Origin { lsn: Lsn, name: String },
    /// `'R'`: description of a relation, sent before its first change in a session.
    Relation(Relation),
    /// `'Y'`: description of a non-builtin data type.
    Type {
        oid: Oid,
        namespace: String,
        name: String,
    },
    /// `'I'`: a row was inserted.
    Insert { relation: Oid, new: TupleData },
    /// `'U'`: a row was updated. `old` is present only when the key changed (`'K'`) or the
    /// replica identity is FULL (`'O'`).
    Update {
        relation: Oid,
        old: Option<OldTuple>,
        new: TupleData,
    },
    /// `'D'`: a row was deleted.
    Delete { relation: Oid, old: OldTuple },
    /// `'T'`: relations were truncated. `options` is a bit set of [`TRUNCATE_CASCADE`] and
    /// [`TRUNCATE_RESTART_IDENTITY`].
    Truncate { options: u8, relations: Vec<Oid> },
    /// `'M'`: a logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// `'B'` Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 (see [`PG_EPOCH_UNIX_MICROS`]).
    pub commit_time: i64,
    pub xid: u32,
}

/// `'C'` Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Currently unused by PostgreSQL (0).
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 (see [`PG_EPOCH_UNIX_MICROS`]).
    pub commit_time: i64,
}

/// `'R'` Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: Oid,
    /// Schema name; PostgreSQL sends the empty string for `pg_catalog`, and it is kept as is.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// The relation's `relreplident`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key.
    Default,
    /// `'n'`: nothing.
    Nothing,
    /// `'f'`: all columns.
    Full,
    /// `'i'`: a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// Map the wire byte to a replica identity.
    #[must_use]
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(Self::Default),
            b'n' => Some(Self::Nothing),
            b'f' => Some(Self::Full),
            b'i' => Some(Self::Index),
            _ => None,
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Flag bit 1: the column is part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: Oid,
    /// `atttypmod`, -1 when none.
    pub type_modifier: i32,
}

/// The old row image sent with an Update or Delete.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// `'K'`: only the replica identity key columns are meaningful (others are Null).
    Key(TupleData),
    /// `'O'`: the whole old row (replica identity FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    #[must_use]
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// The column values of one row, in relation column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TupleData(pub Vec<Value>);

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `'n'`: SQL NULL.
    Null,
    /// `'u'`: an unchanged TOASTed value; its content is not sent.
    UnchangedToast,
    /// `'t'`: the value in text format (not validated as UTF-8 here).
    Text(Bytes),
    /// `'b'`: the value in binary format.
    Binary(Bytes),
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The message ended early: `need` more bytes were required at offset `at`.
    #[error("unexpected end of message at byte {at}: need {need} more byte(s)")]
    UnexpectedEof { at: usize, need: usize },
    /// The tag is not a protocol-v1 message (streaming, two-phase, or unknown).
    #[error("unsupported pgoutput message tag 0x{0:02x}")]
    UnsupportedMessage(u8),
    /// A byte that selects a variant had an unknown value.
    #[error("invalid {context} byte 0x{tag:02x}")]
    InvalidTag { context: &'static str, tag: u8 },
    /// A name was not valid UTF-8.
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    /// A signed count or length was negative.
    #[error("negative {what}: {value}")]
    Negative { what: &'static str, value: i64 },
    /// The message was complete but this many bytes followed it.
    #[error("{0} trailing byte(s) after message")]
    TrailingBytes(usize),
}

/// Decode one pgoutput message. Zero-copy: Text/Binary/content values are `Bytes::slice`s of
/// `data`.
///
/// # Errors
///
/// Any [`DecodeError`]: truncated input, a tag outside protocol v1, an unknown variant byte,
/// a non-UTF-8 name, a negative count or length, or bytes left over after the message.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let mut c = Cursor::new(data);
    let tag = c.read_u8()?;
    let msg = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: Lsn(c.read_u64()?),
            commit_time: c.read_i64()?,
            xid: c.read_u32()?,
        }),
        b'C' => Message::Commit(Commit {
            flags: c.read_u8()?,
            commit_lsn: Lsn(c.read_u64()?),
            end_lsn: Lsn(c.read_u64()?),
            commit_time: c.read_i64()?,
        }),
        b'O' => Message::Origin {
            lsn: Lsn(c.read_u64()?),
            name: c.read_string("origin name")?,
        },
        b'R' => Message::Relation(decode_relation(&mut c)?),
        b'Y' => Message::Type {
            oid: c.read_u32()?,
            namespace: c.read_string("type namespace")?,
            name: c.read_string("type name")?,
        },
        b'I' => {
            let relation = c.read_u32()?;
            match c.read_u8()? {
                b'N' => Message::Insert {
                    relation,
                    new: c.read_tuple()?,
                },
                tag => {
                    return Err(DecodeError::InvalidTag {
                        context: "insert tuple marker",
                        tag,
                    })
                }
            }
        }
        b'U' => {
            let relation = c.read_u32()?;
            let (old, marker) = match c.read_u8()? {
                b'K' => (Some(OldTuple::Key(c.read_tuple()?)), c.read_u8()?),
                b'O' => (Some(OldTuple::Full(c.read_tuple()?)), c.read_u8()?),
                other => (None, other),
            };
            if marker != b'N' {
                return Err(DecodeError::InvalidTag {
                    context: "update tuple marker",
                    tag: marker,
                });
            }
            Message::Update {
                relation,
                old,
                new: c.read_tuple()?,
            }
        }
        b'D' => {
            let relation = c.read_u32()?;
            let old = match c.read_u8()? {
                b'K' => OldTuple::Key(c.read_tuple()?),
                b'O' => OldTuple::Full(c.read_tuple()?),
                tag => {
                    return Err(DecodeError::InvalidTag {
                        context: "delete tuple marker",
                        tag,
                    })
                }
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let n = c.read_u32()? as usize;
            let options = c.read_u8()?;
            let mut relations = Vec::with_capacity(n.min(c.remaining() / 4));
            for _ in 0..n {
                relations.push(c.read_u32()?);
            }
            Message::Truncate { options, relations }
        }
        b'M' => {
            let flags = c.read_u8()?;
            let lsn = Lsn(c.read_u64()?);
            let prefix = c.read_string("message prefix")?;
            let len = c.read_u32()? as usize;
            Message::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: c.read_bytes(len)?,
            }
        }
        other => return Err(DecodeError::UnsupportedMessage(other)),
    };
    match c.remaining() {
        0 => Ok(msg),
        n => Err(DecodeError::TrailingBytes(n)),
    }
}

fn decode_relation(c: &mut Cursor<'_>) -> Result<Relation, DecodeError> {
    let oid = c.read_u32()?;
    let namespace = c.read_string("relation namespace")?;
    let name = c.read_string("relation name")?;
    let ri = c.read_u8()?;
    let replica_identity = ReplicaIdentity::from_byte(ri).ok_or(DecodeError::InvalidTag {
        context: "replica identity",
        tag: ri,
    })?;
    let ncols = c.read_count("relation column count")?;
    // Each column takes at least 10 bytes (flags, NUL, type oid, type modifier).
    let mut columns = Vec::with_capacity(ncols.min(c.remaining() / 10));
    for _ in 0..ncols {
        columns.push(RelationColumn {
            is_key: c.read_u8()? & 1 != 0,
            name: c.read_string("column name")?,
            type_oid: c.read_u32()?,
            type_modifier: c.read_i32()?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// A bounds-checked big-endian reader over a `Bytes` buffer.
struct Cursor<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a Bytes) -> Self {
        Cursor { data, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Advance over `n` bytes, returning their range.
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::UnexpectedEof {
                at: self.pos,
                need: n - self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let r = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.data[r]);
        Ok(out)
    }

    fn read_u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn read_i16(&mut self) -> Result<i16, DecodeError> {
        self.array().map(i16::from_be_bytes)
    }

    fn read_u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn read_i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_be_bytes)
    }

    fn read_u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    fn read_i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_be_bytes)
    }

    /// An `Int16` count that must not be negative.
    fn read_count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.read_i16()?;
        usize::try_from(n).map_err(|_| DecodeError::Negative {
            what,
            value: n.into(),
        })
    }

    /// `n` bytes as a zero-copy slice of the input.
    fn read_bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let r = self.take(n)?;
        Ok(self.data.slice(r))
    }

    /// A NUL-terminated UTF-8 string. A missing terminator is `UnexpectedEof` at the end of
    /// the input.
    fn read_string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnexpectedEof {
                at: self.data.len(),
                need: 1,
            });
        };
        let r = self.take(len + 1)?;
        let s = std::str::from_utf8(&self.data[r.start..r.end - 1])
            .map_err(|_| DecodeError::InvalidUtf8(what))?;
        Ok(s.to_owned())
    }

    /// `TupleData`: an `Int16` column count, then one kind byte (and maybe a value) per column.
    fn read_tuple(&mut self) -> Result<TupleData, DecodeError> {
        let n = self.read_count("tuple column count")?;
        // Each column takes at least its kind byte.
        let mut values = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let value = match self.read_u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => Value::Text(self.read_value()?),
                b'b' => Value::Binary(self.read_value()?),
                tag => {
                    return Err(DecodeError::InvalidTag {
                        context: "tuple column kind",
                        tag,
                    })
                }
            };
            values.push(value);
        }
        Ok(TupleData(values))
    }

    /// An `Int32` length followed by that many bytes.
    fn read_value(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.read_i32()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Negative {
            what: "column value length",
            value: len.into(),
        })?;
        self.read_bytes(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny big-endian byte builder for test messages.
    #[derive(Default, Clone)]
    struct B(Vec<u8>);

    impl B {
        fn tag(t: u8) -> Self {
            B(vec![t])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn cstr(self, s: &str) -> Self {
            self.raw(s.as_bytes()).u8(0)
        }
        fn text(self, s: &[u8]) -> Self {
            self.u8(b't').i32(s.len() as i32).raw(s)
        }
        fn bin(self, s: &[u8]) -> Self {
            self.u8(b'b').i32(s.len() as i32).raw(s)
        }
        fn build(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn dec(b: B) -> Result<Message, DecodeError> {
        decode(&b.build())
    }

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A two-column tuple: text "a", NULL.
    fn small_tuple(b: B) -> B {
        b.i16(2).text(b"a").u8(b'n')
    }

    fn small_tuple_value() -> TupleData {
        TupleData(vec![text("a"), Value::Null])
    }

    fn insert_all_kinds() -> B {
        B::tag(b'I')
            .u32(16384)
            .u8(b'N')
            .i16(6)
            .u8(b'n')
            .u8(b'u')
            .text(b"hello")
            .text(b"")
            .text("h\u{e9}llo \u{1f600}".as_bytes())
            .bin(&[0, 1, 0xff])
    }

    #[test]
    fn begin() {
        let m = dec(B::tag(b'B').u64(0x1_0000_0001).i64(-5).u32(42)).unwrap();
        assert_eq!(
            m,
            Message::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0001),
                commit_time: -5,
                xid: 42
            })
        );
    }

    #[test]
    fn commit() {
        let m = dec(B::tag(b'C').u8(0).u64(10).u64(20).i64(700_000_000_000_000)).unwrap();
        assert_eq!(
            m,
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                commit_time: 700_000_000_000_000
            })
        );
    }

    #[test]
    fn origin() {
        let m = dec(B::tag(b'O').u64(99).cstr("node_a")).unwrap();
        assert_eq!(
            m,
            Message::Origin {
                lsn: Lsn(99),
                name: "node_a".into()
            }
        );
    }

    #[test]
    fn relation() {
        let m = dec(B::tag(b'R')
            .u32(16384)
            .cstr("public")
            .cstr("items")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .cstr("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .cstr("name")
            .u32(1043)
            .i32(68))
        .unwrap();
        assert_eq!(
            m,
            Message::Relation(Relation {
                oid: 16384,
                namespace: "public".into(),
                name: "items".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1
                    },
                    RelationColumn {
                        is_key: false,
                        name: "name".into(),
                        type_oid: 1043,
                        type_modifier: 68
                    },
                ],
            })
        );
    }

    #[test]
    fn relation_empty_namespace_and_each_replica_identity() {
        for (b, ri) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
            let m = dec(B::tag(b'R').u32(1).cstr("").cstr("pg_t").u8(b).i16(0)).unwrap();
            let Message::Relation(r) = m else {
                panic!("not a relation: {m:?}")
            };
            assert_eq!(r.namespace, "");
            assert_eq!(r.name, "pg_t");
            assert_eq!(r.replica_identity, ri);
            assert!(r.columns.is_empty());
        }
        assert_eq!(
            dec(B::tag(b'R').u32(1).cstr("").cstr("t").u8(b'x').i16(0)),
            Err(DecodeError::InvalidTag {
                context: "replica identity",
                tag: b'x'
            })
        );
    }

    #[test]
    fn type_message() {
        let m = dec(B::tag(b'Y').u32(70000).cstr("public").cstr("mood")).unwrap();
        assert_eq!(
            m,
            Message::Type {
                oid: 70000,
                namespace: "public".into(),
                name: "mood".into()
            }
        );
    }

    #[test]
    fn insert_every_tuple_kind() {
        let m = dec(insert_all_kinds()).unwrap();
        assert_eq!(
            m,
            Message::Insert {
                relation: 16384,
                new: TupleData(vec![
                    Value::Null,
                    Value::UnchangedToast,
                    text("hello"),
                    text(""),
                    text("h\u{e9}llo \u{1f600}"),
                    Value::Binary(Bytes::from_static(&[0, 1, 0xff])),
                ]),
            }
        );
    }

    #[test]
    fn insert_empty_tuple() {
        let m = dec(B::tag(b'I').u32(5).u8(b'N').i16(0)).unwrap();
        assert_eq!(
            m,
            Message::Insert {
                relation: 5,
                new: TupleData::default()
            }
        );
    }

    #[test]
    fn update_without_old() {
        let m = dec(small_tuple(B::tag(b'U').u32(7).u8(b'N'))).unwrap();
        assert_eq!(
            m,
            Message::Update {
                relation: 7,
                old: None,
                new: small_tuple_value()
            }
        );
    }

    #[test]
    fn update_with_key_and_full_old() {
        for (marker, wrap) in [
            (b'K', OldTuple::Key as fn(TupleData) -> OldTuple),
            (b'O', OldTuple::Full),
        ] {
            let b = B::tag(b'U').u32(7).u8(marker).i16(1).text(b"old");
            let m = dec(small_tuple(b.u8(b'N'))).unwrap();
            let old = wrap(TupleData(vec![text("old")]));
            assert_eq!(old.tuple(), &TupleData(vec![text("old")]));
            assert_eq!(
                m,
                Message::Update {
                    relation: 7,
                    old: Some(old),
                    new: small_tuple_value()
                }
            );
        }
        // The old tuple must be followed by 'N'.
        assert_eq!(
            dec(small_tuple(B::tag(b'U').u32(7).u8(b'K').i16(0).u8(b'X'))),
            Err(DecodeError::InvalidTag {
                context: "update tuple marker",
                tag: b'X'
            })
        );
    }

    #[test]
    fn delete_key_and_full() {
        let m = dec(small_tuple(B::tag(b'D').u32(8).u8(b'K'))).unwrap();
        assert_eq!(
            m,
            Message::Delete {
                relation: 8,
                old: OldTuple::Key(small_tuple_value())
            }
        );
        let m = dec(small_tuple(B::tag(b'D').u32(8).u8(b'O'))).unwrap();
        assert_eq!(
            m,
            Message::Delete {
                relation: 8,
                old: OldTuple::Full(small_tuple_value())
            }
        );
        assert_eq!(
            dec(small_tuple(B::tag(b'D').u32(8).u8(b'N'))),
            Err(DecodeError::InvalidTag {
                context: "delete tuple marker",
                tag: b'N'
            })
        );
    }

    #[test]
    fn truncate() {
        let m = dec(B::tag(b'T')
            .u32(3)
            .u8(TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY)
            .u32(100)
            .u32(200)
            .u32(300))
        .unwrap();
        assert_eq!(
            m,
            Message::Truncate {
                options: 3,
                relations: vec![100, 200, 300]
            }
        );
        let m = dec(B::tag(b'T').u32(1).u8(0).u32(9)).unwrap();
        assert_eq!(
            m,
            Message::Truncate {
                options: 0,
                relations: vec![9]
            }
        );
    }

    #[test]
    fn logical_message() {
        let m = dec(B::tag(b'M')
            .u8(1)
            .u64(55)
            .cstr("shapesync")
            .u32(3)
            .raw(b"abc"))
        .unwrap();
        assert_eq!(
            m,
            Message::Message {
                transactional: true,
                lsn: Lsn(55),
                prefix: "shapesync".into(),
                content: Bytes::from_static(b"abc")
            }
        );
        let m = dec(B::tag(b'M').u8(0).u64(56).cstr("p").u32(0)).unwrap();
        assert_eq!(
            m,
            Message::Message {
                transactional: false,
                lsn: Lsn(56),
                prefix: "p".into(),
                content: Bytes::new()
            }
        );
    }

    #[test]
    fn empty_input() {
        assert_eq!(
            decode(&Bytes::new()),
            Err(DecodeError::UnexpectedEof { at: 0, need: 1 })
        );
    }

    #[test]
    fn unknown_and_unsupported_tags() {
        // Streaming (S, E, c, A) and two-phase (b, P, K, r, p) messages are not protocol v1.
        for t in [
            b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p', b'Z', 0, 0xff,
        ] {
            assert_eq!(
                dec(B::tag(t).u64(0)),
                Err(DecodeError::UnsupportedMessage(t))
            );
        }
    }

    #[test]
    fn truncated_insert_at_every_position() {
        let full = insert_all_kinds().build();
        assert!(decode(&full).is_ok());
        for n in 0..full.len() {
            let r = decode(&full.slice(..n));
            assert!(
                matches!(r, Err(DecodeError::UnexpectedEof { .. })),
                "prefix {n}: {r:?}"
            );
        }
    }

    #[test]
    fn truncated_every_message_kind_never_panics() {
        let msgs = [
            B::tag(b'B').u64(1).i64(2).u32(3),
            B::tag(b'C').u8(0).u64(1).u64(2).i64(3),
            B::tag(b'O').u64(1).cstr("o"),
            B::tag(b'R')
                .u32(1)
                .cstr("s")
                .cstr("t")
                .u8(b'f')
                .i16(1)
                .u8(1)
                .cstr("c")
                .u32(23)
                .i32(-1),
            B::tag(b'Y').u32(1).cstr("s").cstr("t"),
            small_tuple(small_tuple(B::tag(b'U').u32(1).u8(b'O')).u8(b'N')),
            small_tuple(B::tag(b'D').u32(1).u8(b'K')),
            B::tag(b'T').u32(2).u8(0).u32(1).u32(2),
            B::tag(b'M').u8(1).u64(1).cstr("p").u32(2).raw(b"xy"),
        ];
        for m in msgs {
            let full = m.build();
            assert!(decode(&full).is_ok(), "{full:?}");
            for n in 0..full.len() {
                assert!(decode(&full.slice(..n)).is_err(), "{full:?} prefix {n}");
            }
        }
    }

    #[test]
    fn bad_tuple_kind() {
        assert_eq!(
            dec(B::tag(b'I').u32(1).u8(b'N').i16(1).u8(b'x')),
            Err(DecodeError::InvalidTag {
                context: "tuple column kind",
                tag: b'x'
            })
        );
    }

    #[test]
    fn bad_insert_marker() {
        assert_eq!(
            dec(small_tuple(B::tag(b'I').u32(1).u8(b'K'))),
            Err(DecodeError::InvalidTag {
                context: "insert tuple marker",
                tag: b'K'
            })
        );
    }

    #[test]
    fn missing_nul_in_cstring() {
        let b = B::tag(b'O').u64(1).raw(b"no-terminator");
        let len = b.0.len();
        assert_eq!(dec(b), Err(DecodeError::UnexpectedEof { at: len, need: 1 }));
    }

    #[test]
    fn negative_counts_and_lengths() {
        assert_eq!(
            dec(B::tag(b'I').u32(1).u8(b'N').i16(-1)),
            Err(DecodeError::Negative {
                what: "tuple column count",
                value: -1
            })
        );
        assert_eq!(
            dec(B::tag(b'R').u32(1).cstr("").cstr("t").u8(b'd').i16(-3)),
            Err(DecodeError::Negative {
                what: "relation column count",
                value: -3
            })
        );
        assert_eq!(
            dec(B::tag(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1)),
            Err(DecodeError::Negative {
                what: "column value length",
                value: -1
            })
        );
    }

    #[test]
    fn invalid_utf8_in_name() {
        assert_eq!(
            dec(B::tag(b'R')
                .u32(1)
                .cstr("")
                .raw(&[0xff, 0xfe, 0])
                .u8(b'd')
                .i16(0)),
            Err(DecodeError::InvalidUtf8("relation name"))
        );
        assert_eq!(
            dec(B::tag(b'R')
                .u32(1)
                .cstr("")
                .cstr("t")
                .u8(b'd')
                .i16(1)
                .u8(0)
                .raw(&[b'a', 0xc0, 0])
                .u32(23)
                .i32(-1)),
            Err(DecodeError::InvalidUtf8("column name"))
        );
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            dec(B::tag(b'B').u64(1).i64(2).u32(3).raw(&[0, 0])),
            Err(DecodeError::TrailingBytes(2))
        );
        assert_eq!(
            dec(small_tuple(B::tag(b'I').u32(1).u8(b'N')).u8(b'n')),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn huge_declared_counts_do_not_allocate() {
        // Claims 4 billion relations / 32767 columns / a 2 GiB value but carries almost nothing.
        assert!(matches!(
            dec(B::tag(b'T').u32(u32::MAX).u8(0).u32(1)),
            Err(DecodeError::UnexpectedEof { .. })
        ));
        assert!(matches!(
            dec(B::tag(b'I').u32(1).u8(b'N').i16(i16::MAX).u8(b'n')),
            Err(DecodeError::UnexpectedEof { .. })
        ));
        assert!(matches!(
            dec(B::tag(b'I').u32(1).u8(b'N').i16(1).u8(b'b').i32(i32::MAX)),
            Err(DecodeError::UnexpectedEof { .. })
        ));
        assert!(matches!(
            dec(B::tag(b'M').u8(0).u64(1).cstr("p").u32(u32::MAX)),
            Err(DecodeError::UnexpectedEof { .. })
        ));
    }

    #[test]
    fn zero_copy() {
        let input = insert_all_kinds().build();
        let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
        let Message::Insert { new, .. } = decode(&input).unwrap() else {
            panic!("not an insert")
        };
        for v in &new.0 {
            if let Value::Text(b) | Value::Binary(b) = v {
                if !b.is_empty() {
                    let p = b.as_ptr() as usize;
                    assert!(range.contains(&p) && p + b.len() <= range.end, "{v:?}");
                }
            }
        }
        let Value::Text(hello) = &new.0[2] else {
            panic!("not text")
        };
        assert_eq!(&hello[..], b"hello");
        assert!(range.contains(&(hello.as_ptr() as usize)));

        let input = B::tag(b'M')
            .u8(0)
            .u64(1)
            .cstr("p")
            .u32(3)
            .raw(b"xyz")
            .build();
        let Message::Message { content, .. } = decode(&input).unwrap() else {
            panic!("not a message")
        };
        let start = input.as_ptr() as usize;
        assert_eq!(content.as_ptr() as usize, start + input.len() - 3);
    }

    #[test]
    fn error_display() {
        assert_eq!(
            DecodeError::UnsupportedMessage(b'S').to_string(),
            "unsupported pgoutput message tag 0x53"
        );
        assert_eq!(
            DecodeError::UnexpectedEof { at: 3, need: 4 }.to_string(),
            "unexpected end of message at byte 3: need 4 more byte(s)"
        );
    }

    #[test]
    fn fuzz_no_panic() {
        // xorshift64*, fixed seed: deterministic.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let tags = b"BCORYIUDTMSEcAbPKrp";
        let seeds: Vec<Vec<u8>> = vec![
            insert_all_kinds().0,
            small_tuple(small_tuple(B::tag(b'U').u32(1).u8(b'O')).u8(b'N')).0,
            B::tag(b'R')
                .u32(1)
                .cstr("s")
                .cstr("t")
                .u8(b'f')
                .i16(1)
                .u8(1)
                .cstr("c")
                .u32(23)
                .i32(-1)
                .0,
            B::tag(b'M').u8(1).u64(1).cstr("p").u32(2).raw(b"xy").0,
            B::tag(b'T').u32(2).u8(0).u32(1).u32(2).0,
        ];
        let mut ok = 0usize;
        for i in 0..20_000u32 {
            let mut buf: Vec<u8>;
            if i % 2 == 0 {
                // Random bytes behind a mostly-valid tag.
                let len = (next() % 64) as usize;
                buf = (0..len).map(|_| next() as u8).collect();
                if let Some(first) = buf.first_mut() {
                    if i % 4 == 0 {
                        *first = tags[(next() % tags.len() as u64) as usize];
                    }
                }
            } else {
                // Mutate a valid message: flip a few bytes, maybe truncate or extend.
                buf = seeds[(next() % seeds.len() as u64) as usize].clone();
                for _ in 0..(next() % 4) {
                    let at = (next() % buf.len() as u64) as usize;
                    buf[at] = next() as u8;
                }
                match next() % 4 {
                    0 => buf.truncate((next() % (buf.len() as u64 + 1)) as usize),
                    1 => buf.push(next() as u8),
                    _ => {}
                }
            }
            if decode(&Bytes::from(buf)).is_ok() {
                ok += 1;
            }
        }
        // Some mutations keep the message valid; the loop exercised the success path too.
        assert!(ok > 0);
    }
}
