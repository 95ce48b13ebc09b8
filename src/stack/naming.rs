//! Names of a stack's replication slot and publication (`[a-z0-9_]`, unique per cluster).

/// The slot of a tenant: `shapesync_slot_<stream id>` for the default tenant, with a hash of
/// the database id appended for the others (slot names are `[a-z0-9_]`, unique per cluster).
pub fn slot_name(stream_id: &str, tenant: Option<&str>) -> String {
    match tenant {
        None => format!("shapesync_slot_{stream_id}"),
        Some(t) => format!("shapesync_slot_{stream_id}_{:016x}", fnv64(t)),
    }
}

/// The publication of a tenant, named like its slot.
pub fn publication_name(stream_id: &str, tenant: Option<&str>) -> String {
    match tenant {
        None => format!("shapesync_pub_{stream_id}"),
        Some(t) => format!("shapesync_pub_{stream_id}_{:016x}", fnv64(t)),
    }
}

fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Check a stream id: 1-40 characters of `[a-z0-9_]`.
pub fn valid_stream_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_distinct_per_tenant() {
        assert_eq!(slot_name("default", None), "shapesync_slot_default");
        assert_eq!(publication_name("default", None), "shapesync_pub_default");
        let (a, b) = (slot_name("s", Some("a")), slot_name("s", Some("b")));
        assert_ne!(a, b);
        for name in [a, b, publication_name("s", Some("a"))] {
            let ok = name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
            assert!(name.len() <= 63 && ok, "{name}");
        }
        assert!(valid_stream_id("abc_1"));
        for bad in ["", "A", "a-b", "a b", &"x".repeat(41)] {
            assert!(!valid_stream_id(bad), "{bad:?}");
        }
    }
}
