//! LogOffset text form and ordering (protocol.md §3.1).

use shapesync_storage::LogOffset;

#[test]
fn round_trips() {
    for text in [
        "-1",
        "0_0",
        "0_inf",
        "26800584_4",
        "5_inf",
        "18446744073709551615_3",
    ] {
        let o: LogOffset = text.parse().unwrap();
        assert_eq!(o.to_string(), text);
    }
    assert_eq!(LogOffset::BEFORE_ALL.to_string(), "-1");
    assert_eq!(LogOffset::LAST_BEFORE_REAL.to_string(), "0_inf");
    assert_eq!(LogOffset::snapshot_chunk(3).to_string(), "0_3");
    assert_eq!(LogOffset::tx_inf(7).to_string(), "7_inf");
}

#[test]
fn accepted_forms() {
    assert_eq!("-1_0".parse::<LogOffset>().unwrap(), LogOffset::BEFORE_ALL);
    assert_eq!(
        "007_0010".parse::<LogOffset>().unwrap(),
        LogOffset::new(7, 10)
    );
    assert_eq!("3_inf".parse::<LogOffset>().unwrap(), LogOffset::tx_inf(3));
}

#[test]
fn rejects() {
    for bad in [
        "10",
        "1_2_3",
        "0_-1",
        "10_32.1",
        "1_2 ",
        " 1_2",
        "",
        "now",
        "-1_1",
        "-2",
        "_1",
        "1_",
        "+1_2",
        "1_+2",
        "1_INF",
        "inf_1",
        "18446744073709551616_0",
        "1_18446744073709551616",
    ] {
        assert!(
            bad.parse::<LogOffset>().is_err(),
            "{bad:?} must be rejected"
        );
    }
}

#[test]
fn accessors() {
    let o = LogOffset::new(26800584, 4);
    assert_eq!((o.tx(), o.op()), (26800584, Some(4)));
    assert_eq!(LogOffset::tx_inf(5).op(), None);
    assert_eq!(
        (LogOffset::BEFORE_ALL.tx(), LogOffset::BEFORE_ALL.op()),
        (0, None)
    );
    assert!(LogOffset::BEFORE_ALL.is_before_all() && !LogOffset::BEFORE_ALL.is_snapshot());
    assert!(LogOffset::snapshot_chunk(2).is_snapshot());
    assert!(LogOffset::LAST_BEFORE_REAL.is_snapshot());
    assert!(!LogOffset::new(1, 0).is_snapshot() && !LogOffset::new(1, 0).is_before_all());
}

#[test]
fn ordering() {
    let sorted = [
        "-1",
        "0_0",
        "0_1",
        "0_10",
        "0_inf",
        "1_0",
        "1_2",
        "1_inf",
        "2_0",
        "26800584_4",
        "26800584_inf",
    ];
    let parsed: Vec<LogOffset> = sorted.iter().map(|t| t.parse().unwrap()).collect();
    for pair in parsed.windows(2) {
        assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
    }
    assert!(LogOffset::tx_inf(5) > LogOffset::new(5, u64::MAX));
    assert!(LogOffset::BEFORE_ALL < LogOffset::new(0, 0));
}
