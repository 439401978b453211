//! The gap-safe tail against a daemon whose seq order is not visibility order.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tbackend_client::tail::Cursor;
use tbackend_client::{Cancel, Status};

/// Every 4th fact stays invisible for 300 ms after its write and every 7th insert burns
/// a seq for good. A "highest seq seen" cursor misses the late facts; the gap-safe
/// cursor releases every fact exactly once, in seq order, and moves past burned seqs
/// after its grace.
#[test]
fn tail_releases_late_facts_once_and_skips_burned_seqs() {
    let d = start(opts());
    let ctl = d.control();
    ctl.set(
        json!({"visibility_lag": {"every": 4, "lag_ms": 300, "store": "tail"},
                   "skip_seq": {"every": 7, "store": "tail"}}),
    )
    .unwrap();
    let c = client(&d);
    let mut cursor: Cursor<serde_json::Value> = Cursor::new(0, Duration::from_millis(600));
    let mut naive_after = 0u64;
    let mut naive_seen = 0usize;
    let mut released = Vec::new();
    let mut written = HashSet::new();
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        if n < 40 {
            for _ in 0..4 {
                let id = format!("f{n}");
                let o = call(&c, &write("tail", &id, "k", json!(n)));
                assert_status(&o, Status::CommittedAcked);
                written.insert(id);
                n += 1;
            }
        }
        let (o, facts) = c.tail_poll("tail", &mut cursor, None, &Cancel::new());
        assert_status(&o, Status::Ok);
        released.extend(
            facts
                .into_iter()
                .map(|(seq, f)| (seq, f["id"].as_str().unwrap().to_owned())),
        );
        let naive = all_facts(&d, "tail");
        let fresh: Vec<u64> = naive
            .iter()
            .map(|f| f["seq_id"].as_u64().unwrap())
            .filter(|seq| *seq > naive_after)
            .collect();
        naive_seen += fresh.len();
        naive_after = fresh.into_iter().fold(naive_after, u64::max);
        if n >= 40 && released.len() == written.len() && cursor.held() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    assert!(released.windows(2).all(|w| w[0].0 < w[1].0), "seq order");
    let ids: HashSet<&String> = released.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), released.len(), "never twice");
    assert_eq!(ids.len(), written.len(), "every fact released");
    assert!(
        cursor.skipped() >= 5,
        "burned seqs accepted: {}",
        cursor.skipped()
    );
    assert!(
        naive_seen < written.len(),
        "the naive cursor should have missed late facts"
    );
}
