//! Unit tests of the sink and checkpoint settings.
use super::*;

#[test]
fn passthrough_overrides_defaults_but_not_delivery_guarantees() {
    let mut c = SinkConfig::kafka("127.0.0.1:9092");
    c.librdkafka.insert("linger.ms".into(), "50".into());
    c.librdkafka.insert("acks".into(), "-1".into());
    let p = c.producer_properties().unwrap();
    assert_eq!(p["linger.ms"], "50");
    assert_eq!(p["enable.idempotence"], "true");
    for (k, v, why) in [
        ("enable.idempotence", "false", "idempotent"),
        ("acks", "1", "acks=all"),
        ("request.required.acks", "0", "acks=all"),
        ("delivery.report.only.error", "true", "delivery report"),
        ("transactional.id", "x", "transactions"),
        ("bootstrap.servers", "h:1", "brokers"),
    ] {
        let mut c = SinkConfig::kafka("127.0.0.1:9092");
        c.librdkafka.insert(k.into(), v.into());
        let e = c.producer_properties().unwrap_err().to_string();
        assert!(
            e.contains(&format!("librdkafka.\"{k}\"")) && e.contains(why),
            "{e}"
        );
        let all = c.validate().join("\n");
        assert!(
            all.contains(&format!("sink.librdkafka.\"{k}\": ")) && all.contains(why),
            "{all}"
        );
    }
}

#[test]
fn one_struct_reads_both_kinds_and_rejects_unknown_keys() {
    let c: SinkConfig =
        serde_json::from_str(r#"{"kind":"file","path":"-","fsync_every":10}"#).unwrap();
    assert_eq!((c.kind, c.fsync_every()), (SinkKind::File, 10));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let c: SinkConfig = serde_json::from_str(r#"{"kind":"kafka","brokers":"b:1"}"#).unwrap();
    assert_eq!((c.kind, c.brokers()), (SinkKind::Kafka, "b:1"));
    assert_eq!(c.topic().as_str(), DEFAULT_TOPIC);
    assert_eq!(c.max_in_flight(), 10_000);
    assert!(c.require_topics());
    let e = serde_json::from_str::<SinkConfig>(r#"{"kind":"file","path":"-","fsync":1}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fsync"), "{e}");
    let e = serde_json::from_str::<SinkConfig>(r#"{"kind":"s3","path":"-"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("s3") && e.contains("kafka"), "{e}");
}

#[test]
fn durations_and_templates_are_checked_when_read() {
    let c: SinkConfig = serde_json::from_str(
        r#"{"kind":"kafka","brokers":"b:1","topic":"x.{db}","startup_timeout":"3s","max_in_flight":5,"require_topics":false,"librdkafka":{"linger.ms":"1"}}"#,
    )
    .unwrap();
    assert_eq!(c.startup_timeout(), Duration::from_secs(3));
    assert_eq!(c.max_in_flight(), 5);
    assert!(!c.require_topics());
    let e = serde_json::from_str::<SinkConfig>(r#"{"brokers":"b:1","topik":"x"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("topik"), "{e}");
    let e = serde_json::from_str::<SinkConfig>(r#"{"brokers":"b:1","topic":"{x}"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"{x}\": unknown placeholder {x}"), "{e}");
    let e = serde_json::from_str::<SinkConfig>(r#"{"startup_timeout":"soon"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"soon\" is not a duration"), "{e}");
}

#[test]
fn keys_of_the_other_kind_and_zeros_are_reported_each() {
    let c: SinkConfig = serde_json::from_str(
        r#"{"kind":"file","channel_capacity":0,"fsync_every":0,"max_in_flight":5,"require_topics":true}"#,
    )
    .unwrap();
    let p = c.validate();
    assert_eq!(
        p,
        [
            "sink.max_in_flight: only used by kind = \"kafka\" (kind is \"file\")",
            "sink.require_topics: only used by kind = \"kafka\" (kind is \"file\")",
            "sink.channel_capacity: must be at least 1",
            "sink.fsync_every: must be at least 1",
        ]
    );
    let c: SinkConfig = serde_json::from_str(
        r#"{"kind":"kafka","brokers":"b:1","fsync_every":3,"max_in_flight":0,"startup_timeout":"0s"}"#,
    )
    .unwrap();
    assert_eq!(
        c.validate(),
        [
            "sink.fsync_every: only used by kind = \"file\" (kind is \"kafka\")",
            "sink.max_in_flight: must be at least 1",
            "sink.startup_timeout: must be above zero",
        ]
    );
    let e = c.producer_properties().unwrap_err().to_string();
    assert!(e.contains("max_in_flight"), "{e}");
}

#[test]
fn checkpoint_section() {
    let c: CheckpointConfig = serde_json::from_str(
        r#"{"kind":"kafka","topic":"cp","interval":"250ms","replication_factor":3,"timeout":"5s"}"#,
    )
    .unwrap();
    assert_eq!(c.interval, Duration::from_millis(250));
    assert_eq!(
        (c.replication_factor, c.timeout),
        (3, Duration::from_secs(5))
    );
    assert!(c.validate(&SinkConfig::kafka("b:1")).is_empty());
    assert_eq!(
        c.validate(&SinkConfig::default()),
        ["checkpoint.kind = \"kafka\": needs sink.kind = \"kafka\" (it uses the sink's brokers)"]
    );
    let c: CheckpointConfig = serde_json::from_str(
        r#"{"kind":"kafka","topic":"c p","interval":"0s","replication_factor":0,"timeout":"0s"}"#,
    )
    .unwrap();
    let p = c.validate(&SinkConfig::kafka("b:1")).join("\n");
    for needle in [
        "checkpoint.topic: \"c p\": ' ' is not allowed",
        "checkpoint.interval: must be above zero",
        "checkpoint.replication_factor: 0 is not a replication factor",
        "checkpoint.timeout: must be above zero",
    ] {
        assert!(p.contains(needle), "{needle:?} in {p}");
    }
    let e = serde_json::from_str::<CheckpointConfig>(r#"{"kind":"file","path":"x","topik":"t"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("topik"), "{e}");
}
