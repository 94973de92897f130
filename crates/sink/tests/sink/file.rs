//! The file sink.

use std::time::Duration;

use quorumtail_sink::{Sink, SinkConfig, SinkError};
use tokio::time::Instant;

use crate::{confirmed_seq, cp, marker, record};

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_json_lines_and_confirms_only_what_is_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let mut cfg = SinkConfig::file(&path);
    cfg.fsync_every = Some(7);
    cfg.channel_capacity = 8;
    let sink = Sink::file(&cfg).unwrap();

    // Every time a confirmation is published, the file must already hold every record of
    // the shard up to the confirmed seq.
    let checker = {
        let mut rx = sink.progress("rs0");
        let path = path.clone();
        tokio::spawn(async move {
            let mut checks = 0;
            while rx.changed().await.is_ok() {
                let Some(c) = confirmed_seq(&rx.borrow_and_update()) else {
                    continue;
                };
                let on_disk: Vec<u64> = lines(&path)
                    .iter()
                    .filter(|v| v["shard"] == "rs0")
                    .map(|v| v["seq"].as_u64().unwrap())
                    .collect();
                let records_up_to_c = (1..=c).filter(|s| s % 10 != 5).count();
                assert!(
                    on_disk.iter().filter(|&&s| s <= c).count() == records_up_to_c,
                    "confirmed {c} but the file has {on_disk:?}"
                );
                checks += 1;
            }
            checks
        })
    };

    let tx = sink.sender();
    for seq in 1..=200u64 {
        if seq % 10 == 5 {
            tx.send(marker("rs0", seq)).await.unwrap();
        } else {
            tx.send(record("rs0", seq, seq % 4 != 0, None))
                .await
                .unwrap();
        }
        tx.send(record("rs1", seq, true, None)).await.unwrap();
    }
    let report = sink.flush(Instant::now() + Duration::from_secs(30)).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(
        report.checkpoints.get("rs0"),
        Some(cp(199)),
        "200 has no checkpoint"
    );
    assert_eq!(report.checkpoints.get("rs1"), Some(cp(200)));
    let checks = tokio::time::timeout(Duration::from_secs(10), checker)
        .await
        .unwrap()
        .unwrap();
    assert!(checks > 0);

    let all = lines(&path);
    assert_eq!(all.len(), 200 - 20 + 200);
    for shard in ["rs0", "rs1"] {
        let seqs: Vec<u64> = all
            .iter()
            .filter(|v| v["shard"] == shard)
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{shard} in order");
    }
    assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));

    // The channel is closed after a flush.
    let e = tx.send(record("rs0", 500, true, None)).await.unwrap_err();
    assert!(matches!(e, SinkError::Closed));
}

#[tokio::test]
async fn a_seq_that_does_not_increase_stops_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::file(&SinkConfig::file(dir.path().join("o.jsonl"))).unwrap();
    let tx = sink.sender();
    tx.send(record("rs0", 5, true, None)).await.unwrap();
    tx.send(record("rs0", 5, true, None)).await.unwrap();
    tx.send(record("rs0", 6, true, None)).await.unwrap();
    let report = sink.flush(Instant::now() + Duration::from_secs(10)).await;
    assert_eq!(report.checkpoints.get("rs0"), Some(cp(5)));
    assert_eq!(report.failures.len(), 1);
    let msg = report.failures[0].to_string();
    assert!(
        msg.contains("shard rs0") && msg.contains("seq 5 does not follow seq 5"),
        "{msg}"
    );
}

#[test]
fn an_unwritable_path_is_a_clear_error() {
    let e = Sink::file(&SinkConfig::file("/nonexistent-dir/x/out.jsonl")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent-dir/x/out.jsonl") && msg.contains("open"),
        "{msg}"
    );
    let mut c = SinkConfig::file("/tmp/x");
    c.fsync_every = Some(0);
    assert!(Sink::file(&c)
        .unwrap_err()
        .to_string()
        .contains("fsync_every"));
}

/// A crash can leave an incomplete last line; it was never confirmed, so the sink cuts it
/// off instead of gluing the next record to it.
#[tokio::test]
async fn an_incomplete_last_line_from_a_crash_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.jsonl");
    std::fs::write(
        &path,
        "{\"shard\":\"rs0\",\"seq\":1}\n{\"shard\":\"rs0\",\"se",
    )
    .unwrap();
    let sink = Sink::file(&SinkConfig::file(&path)).unwrap();
    sink.sender()
        .send(record("rs0", 2, true, None))
        .await
        .unwrap();
    let report = sink.flush(Instant::now() + Duration::from_secs(10)).await;
    assert!(report.is_complete());
    // Compare parsed lines: serde_json's key order depends on features other crates of
    // the workspace enable.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'), "{text:?}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"shard": "rs0", "seq": 1}),
            serde_json::json!({"shard": "rs0", "seq": 2})
        ]
    );

    // A file that is one fragment becomes empty.
    std::fs::write(&path, "{\"sha").unwrap();
    Sink::file(&SinkConfig::file(&path))
        .unwrap()
        .flush(Instant::now() + Duration::from_secs(10))
        .await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}
