//! Tests of reading and validating the config file.

use super::*;

fn parse(text: &str) -> Result<Resolved, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

#[test]
fn minimal_static_topology() {
    let r = parse("[[shards]]\nname = \"shard01\"\nmembers = [\"127.0.0.1:27018\", \"127.0.0.1:27019\", \"127.0.0.1:27020\"]\n").unwrap();
    assert_eq!(r.shards[0].quorum.quorum, 2);
    assert_eq!(r.start, StartPosition::Latest);
    assert_eq!(r.config.sink.kind, SinkKind::File);
    assert!(r.filter.drop_from_migrate && r.filter.drop_noops && r.filter.drop_internal);
    assert!(r.warnings.is_empty());
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key() {
    let e = parse("[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\nquorom = 2\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `quorom`"), "{e}");
    let e = parse("[[shards]]\nname = \"a\"\nmembers = \"h:1\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("shards[0].members"), "{e}");
    let e = parse("[sink]\nkind = \"s3\"\n").unwrap_err().to_string();
    assert!(e.contains("sink.kind") && e.contains("kafka"), "{e}");
    let e = parse("[[shards]\n").unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn every_problem_is_listed() {
    let p = problems(
        r#"
[[shards]]
name = "s"
members = []
[[shards]]
name = "s"
members = ["127.0.0.1:1", "nohost", "127.0.0.1:1"]
arbiters = 0
quorum = 4
[start]
position = "yesterday"
[filter]
include = ["shop"]
[sink]
kind = "kafka"
topic = "cdc.{collection}"
[sink.librdkafka]
"enable.idempotence" = "false"
acks = "1"
[checkpoint]
interval = "soon"
"#,
    );
    let all = p.join("\n");
    for needle in [
        "shards[0].members: empty",
        "shards[1].name: shard \"s\" is defined twice",
        "shards[1].members[1]: \"nohost\" is not \"host:port\"",
        "shards[1].members[2]: \"127.0.0.1:1\" is listed twice",
        "shards[1].quorum: quorum 4 can never be reached",
        "start.position",
        "filter.include[0]",
        "sink.brokers: required",
        "unknown placeholder {collection}",
        "enable.idempotence",
        "acks",
        "checkpoint.interval",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

/// Regression (issue 15): a bad value hid every later problem, parse-level ones
/// (unknown keys, wrong types) included.
#[test]
fn parse_level_problems_are_reported_together_with_their_lines() {
    let p = problems(
        "[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\n[sink]\nkind = \"kafka\"\nbrokers = \"k:1\"\nkey = \"Document\"\n[pipeline]\nmax_pendin = 5\n[mongo]\nmax_await = \"soon\"\nbatch_size = \"many\"\n[sink.librdkafka]\n\"no.such.property\" = \"1\"\n",
    );
    assert_eq!(p.len(), 5, "{p:#?}");
    assert!(
        p[0].starts_with("sink.key (line 7): unknown variant `Document`"),
        "{p:#?}"
    );
    assert!(p[0].ends_with("did you mean `document`?"), "{p:#?}");
    assert!(
        p[1].starts_with("pipeline.max_pendin (line 9): unknown field `max_pendin`"),
        "{p:#?}"
    );
    assert!(p[1].ends_with("did you mean `max_pending`?"), "{p:#?}");
    assert!(
        p[2].starts_with("mongo.batch_size (line 12): invalid type: string \"many\""),
        "{p:#?}"
    );
    assert!(
        p[3].starts_with("mongo.max_await: \"soon\" is not a duration"),
        "{p:#?}"
    );
    assert!(
        p[4].starts_with("sink.librdkafka.\"no.such.property\": librdkafka refuses it: No such configuration property"),
        "{p:#?}"
    );
}

#[test]
fn a_key_taken_out_does_not_report_its_default() {
    // The bad kind is reported; what depends on it is not (brokers with kind = file).
    let p = problems(
        "[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\n[sink]\nkind = \"s3\"\nbrokers = \"k:1\"\n",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    // A list with a bad element, and a shard missing its members.
    let p =
        problems("[[shards]]\nname = \"a\"\nmembers = [\"h:1\", 2]\n[[shards]]\nname = \"b\"\n");
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].starts_with("shards[0].members[1] (line 3): invalid type: integer `2`"),
        "{p:#?}"
    );
    assert!(p[1].starts_with("shards[1].members: empty"), "{p:#?}");
}

fn env(name: &str) -> Option<String> {
    match name {
        "MONGO_PW" => Some("p@ss".into()),
        "BROKERS" => Some("k1:9092,k2:9092".into()),
        _ => None,
    }
}

const SHARD: &str = "[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\n";

#[test]
fn environment_variables_in_string_values() {
    let text = format!("{SHARD}[mongo]\nusername = \"u\"\npassword = \"${{MONGO_PW}}\"\n[sink]\nkind = \"kafka\"\nbrokers = \"${{BROKERS}}\"\ntopic = \"cdc.{{shard}}\"\n[sink.librdkafka]\n\"client.id\" = \"a$${{b}}$c\"\n");
    let r = Config::parse_with_env(&text, Path::new("t.toml"), &env).unwrap();
    assert_eq!(r.config.mongo.password.as_deref(), Some("p@ss"));
    assert_eq!(r.config.sink.brokers.as_deref(), Some("k1:9092,k2:9092"));
    // `$${` is a literal `${`; a lone `$` stays.
    assert_eq!(r.config.sink.librdkafka["client.id"], "a${b}$c");
    // Never printed.
    let debug = format!("{:?}", r.config);
    assert!(!debug.contains("p@ss"), "{debug}");
}

#[test]
fn a_missing_environment_variable_names_the_key_and_the_variable() {
    let text = format!("{SHARD}[mongo]\nusername = \"u\"\npassword = \"${{NOT_SET}}\"\n[sink.librdkafka]\n\"sasl.password\" = \"${{bad-name}}\"\n");
    let e = Config::parse_with_env(&text, Path::new("t.toml"), &env).unwrap_err();
    let ConfigError::Invalid { problems, .. } = e else {
        panic!("{e}")
    };
    assert!(
        problems[0].starts_with("mongo.password (line 6): the environment variable NOT_SET (in \"${NOT_SET}\") is not set"),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with("sink.librdkafka.\"sasl.password\" (line 8): \"${bad-name}\" is not an environment variable name"),
        "{problems:#?}"
    );
}

#[test]
fn secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let mongo = dir.path().join("mongo");
    let kafka = dir.path().join("kafka");
    std::fs::write(&mongo, "s3cret\n").unwrap();
    std::fs::write(&kafka, "k-s3cret\r\n").unwrap();
    let text = format!(
        "{SHARD}[mongo]\nusername = \"u\"\npassword_file = {:?}\n[sink]\nkind = \"kafka\"\nbrokers = \"k:9092\"\nsasl_password_file = {:?}\n",
        mongo.display().to_string(),
        kafka.display().to_string()
    );
    let r = parse(&text).unwrap();
    assert_eq!(r.config.mongo.password.as_deref(), Some("s3cret"));
    assert_eq!(r.config.sink.librdkafka["sasl.password"], "k-s3cret");
    let debug = format!("{r:?}");
    assert!(!debug.contains("s3cret"), "{debug}");

    let missing = dir.path().join("nope");
    let p = problems(&format!(
        "{SHARD}[mongo]\nusername = \"u\"\npassword = \"x\"\npassword_file = {:?}\n[sink]\nsasl_password_file = {:?}\n",
        missing.display().to_string(),
        mongo.display().to_string()
    ));
    let all = p.join("\n");
    assert!(
        all.contains("mongo.password_file: set either password or password_file"),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "mongo.password_file: cannot read {:?}",
            missing.display().to_string()
        )),
        "{all}"
    );
    assert!(
        all.contains("sink.sasl_password_file: only used by kind = \"kafka\""),
        "{all}"
    );
}

/// Issue 16: every key of the sink and checkpoint sections is read from the file, with
/// its default when absent.
#[test]
fn sink_and_checkpoint_keys_are_reachable_from_the_file() {
    let r = parse(&format!("{SHARD}[sink]\nkind = \"kafka\"\nbrokers = \"k:9092\"\nmax_in_flight = 50\nrequire_topics = false\nstartup_timeout = \"3s\"\nchannel_capacity = 16\n[checkpoint]\nkind = \"kafka\"\nreplication_factor = 3\ntimeout = \"20s\"\ninterval = \"250ms\"\n")).unwrap();
    let sink = &r.config.sink;
    assert_eq!(sink.max_in_flight(), 50);
    assert!(!sink.require_topics());
    assert_eq!(sink.startup_timeout(), Duration::from_secs(3));
    assert_eq!(sink.channel_capacity, 16);
    let cp = &r.config.checkpoint;
    assert_eq!(
        (cp.replication_factor, cp.timeout),
        (3, Duration::from_secs(20))
    );
    assert_eq!(r.checkpoint_interval, Duration::from_millis(250));
    let r = parse(&format!("{SHARD}[sink]\nfsync_every = 10\n")).unwrap();
    assert_eq!(r.config.sink.fsync_every(), 10);
    let r = parse(SHARD).unwrap();
    assert_eq!(r.config.sink.max_in_flight(), 10_000);
    assert!(r.config.sink.require_topics());
    assert_eq!(r.config.sink.startup_timeout(), Duration::from_secs(10));
    assert_eq!(r.config.sink.fsync_every(), 1000);
    assert_eq!(r.config.checkpoint.timeout, Duration::from_secs(30));
}

/// Issue 16: bad values of the newly reachable keys are reported with the others, each
/// with its key (and line, for what cannot be read) and the value as written.
#[test]
fn bad_sink_and_checkpoint_values_are_all_reported() {
    let p = problems(&format!("{SHARD}[sink]\nkind = \"kafka\"\nbrokers = \"k:9092\"\nmax_in_flight = 0\nrequire_topics = \"yes\"\nstartup_timeout = \"soon\"\nchannel_capacity = -1\nfsync_every = 5\n[checkpoint]\nreplication_factor = 0\ntimeout = \"0s\"\ninterval = \"0s\"\n"));
    let expected = [
        "sink.require_topics (line 8): invalid type: string \"yes\", expected a boolean",
        "sink.startup_timeout (line 9): \"soon\" is not a duration",
        "sink.channel_capacity (line 10): invalid value: integer `-1`",
        "sink.fsync_every: only used by kind = \"file\" (kind is \"kafka\")",
        "sink.max_in_flight: must be at least 1",
        "checkpoint.interval: must be above zero",
        "checkpoint.replication_factor: 0 is not a replication factor",
        "checkpoint.timeout: must be above zero",
    ];
    assert_eq!(p.len(), expected.len(), "{p:#?}");
    for (p, e) in p.iter().zip(expected) {
        assert!(p.starts_with(e), "{p:?} does not start with {e:?}");
    }
    let p = problems(&format!(
        "{SHARD}[sink]\nmax_in_flight = 5\nrequire_topics = true\n"
    ));
    assert_eq!(
        p,
        [
            "sink.max_in_flight: only used by kind = \"kafka\" (kind is \"file\")",
            "sink.require_topics: only used by kind = \"kafka\" (kind is \"file\")",
        ]
    );
}

#[test]
fn arbiters_raise_the_majority_and_low_quorum_warns() {
    let r =
        parse("[[shards]]\nname = \"a\"\nmembers = [\"h:1\", \"h:2\"]\narbiters = 1\n").unwrap();
    assert_eq!(r.shards[0].quorum.quorum, 2);
    // One data-bearing member and two arbiters: MongoDB's writeMajorityCount is 1
    // (the majority of voters, capped at the data-bearing voters).
    let r = parse("[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\narbiters = 2\n").unwrap();
    assert_eq!(r.shards[0].quorum.quorum, 1);
    let p = problems("[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\narbiters = 2\nquorum = 2\n");
    assert!(p[0].contains("arbiters vote but never confirm"), "{p:?}");
    let r = parse("[[shards]]\nname = \"a\"\nmembers = [\"h:1\", \"h:2\", \"h:3\"]\nquorum = 1\n")
        .unwrap();
    assert!(
        r.warnings[0].contains("below the majority"),
        "{:?}",
        r.warnings
    );
}

#[test]
fn discovery_only_and_positions() {
    let r = parse("[discovery]\nuri = \"mongodb://127.0.0.1:27017/\"\ninterval = \"5s\"\n[start]\nposition = \"1422998574:1\"\n").unwrap();
    assert_eq!(r.discovery_interval, Duration::from_secs(5));
    assert_eq!(r.start, StartPosition::After(Timestamp::new(1422998574, 1)));
    assert!(problems("").iter().any(|p| p.contains("no topology")));
    let p = problems("[discovery]\nuri = \"http://x:y@h\"\n");
    assert!(
        p[0].contains("mongodb://") && p[0].contains("x:***@h"),
        "{p:?}"
    );
}

#[test]
fn topic_templates_and_redaction() {
    let kafka = |topic: &str| {
        format!("[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\n[sink]\nkind = \"kafka\"\nbrokers = \"k:9092\"\ntopic = \"{topic}\"\n")
    };
    assert!(parse(&kafka("cdc.{shard}.{db}.{coll}")).is_ok());
    let p = problems(&kafka("cdc {shard}"));
    assert!(
        p[0].starts_with("sink.topic (line 7): \"cdc {shard}\": ") && p[0].contains("not allowed"),
        "{p:?}"
    );
    assert!(problems(&kafka("cdc.{shard"))[0].contains("unclosed"));
    assert_eq!(
        redact_uri("mongodb://u:secret@h:1/?x=1"),
        "mongodb://u:***@h:1/?x=1"
    );
    assert_eq!(redact_uri("mongodb://h:1/"), "mongodb://h:1/");
}

#[test]
fn tls_files_are_checked_and_tls_is_set_in_one_place() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let client = dir.path().join("client.pem");
    let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    std::fs::write(&ca, cert).unwrap();
    std::fs::write(
        &client,
        format!("{cert}-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let r = parse(&format!(
        "{SHARD}[mongo]\ntls = true\ntls_ca_file = {}\ntls_certificate_key_file = {}\n",
        q(&ca),
        q(&client)
    ))
    .unwrap();
    let access = r.config.mongo.access();
    let tls = access.tls.expect("TLS on");
    assert_eq!(tls.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(tls.certificate_key_file.as_deref(), Some(client.as_path()));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    // Every problem at once: files without tls = true, a missing file, a client file
    // without its key, and TLS set in uri_options as well.
    let missing = dir.path().join("nope.pem");
    let p = problems(&format!(
        "{SHARD}[mongo]\nuri_options = \"tls=true&tlsCAFile=/x\"\ntls_ca_file = {}\ntls_certificate_key_file = {}\n",
        q(&missing),
        q(&ca)
    ));
    let all = p.join("\n");
    for want in [
        "mongo.uri_options: tls, tlsCAFile set TLS there while [mongo] tls keys set it too",
        "mongo.tls_ca_file: used only with TLS; set mongo.tls = true too",
        "mongo.tls_ca_file: cannot read",
        "mongo.tls_certificate_key_file: used only with TLS",
        "holds no private key",
    ] {
        assert!(all.contains(want), "{want:?} missing from\n{all}");
    }
    let r = parse(&format!(
        "{SHARD}[mongo]\ntls = true\ntls_ca_file = {}\n",
        q(&client)
    ))
    .unwrap();
    assert!(
        r.warnings[0].contains("holds a private key; a CA file needs only certificates"),
        "{:?}",
        r.warnings
    );
    std::fs::write(&missing, "not pem").unwrap();
    let p = problems(&format!(
        "{SHARD}[mongo]\ntls = true\ntls_ca_file = {}\n",
        q(&missing)
    ));
    assert!(p[0].contains("holds no PEM certificate"), "{p:?}");

    // Weakened verification through uri_options is called out.
    let r = parse(&format!(
        "{SHARD}[mongo]\nuri_options = \"tls=true&tlsAllowInvalidCertificates=true\"\n"
    ))
    .unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("tlsAllowInvalidCertificates weakens")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn record_format_is_read_and_checked() {
    let r = parse(&format!("{SHARD}[sink]\nformat = \"change-event\"\n")).unwrap();
    assert_eq!(
        r.config.sink.format,
        quorumtail_sink::RecordFormat::ChangeEvent
    );
    assert_eq!(
        parse(SHARD).unwrap().config.sink.format,
        quorumtail_sink::RecordFormat::Oplog
    );
    let p = problems(&format!("{SHARD}[sink]\nformat = \"events\"\n"));
    assert!(
        p[0].starts_with(
            "sink.format (line 5): unknown variant `events`, expected one of `oplog`, `change-event`, `debezium`"
        ),
        "{p:?}"
    );
}

#[test]
fn debezium_format_and_its_server_name() {
    use quorumtail_sink::RecordFormat;
    let r = parse(&format!("{SHARD}[sink]\nformat = \"debezium\"\n")).unwrap();
    assert_eq!(
        r.config.sink.format,
        RecordFormat::Debezium {
            server_name: quorumtail_sink::DEFAULT_DEBEZIUM_SERVER_NAME
        }
    );
    let r = parse(&format!(
        "{SHARD}[sink]\nformat = \"debezium\"\ndebezium_server_name = \"fulfillment\"\n"
    ))
    .unwrap();
    assert_eq!(
        r.config.sink.format,
        RecordFormat::Debezium {
            server_name: "fulfillment"
        }
    );
    // The name belongs to the Debezium format only, and must be a name.
    let p = problems(&format!(
        "{SHARD}[sink]\nformat = \"change-event\"\ndebezium_server_name = \"x\"\n"
    ));
    assert!(
        p.iter().any(|p| p.contains(
            "sink.debezium_server_name: only used by format = \"debezium\" (format is \"change-event\")"
        )),
        "{p:?}"
    );
    let p = problems(&format!(
        "{SHARD}[sink]\nformat = \"debezium\"\ndebezium_server_name = \" \"\n"
    ));
    assert!(
        p.iter()
            .any(|p| p.starts_with("sink.debezium_server_name: \" \" is not a name")),
        "{p:?}"
    );
}

#[test]
fn tombstones_need_kafka_and_document_keys() {
    let kafka = "[sink]\nkind = \"kafka\"\nbrokers = \"k:9092\"\n";
    let r = parse(&format!("{SHARD}{kafka}tombstones = true\n")).unwrap();
    assert!(r.config.sink.tombstones());
    assert!(!parse(&format!("{SHARD}{kafka}"))
        .unwrap()
        .config
        .sink
        .tombstones());
    let p = problems(&format!(
        "{SHARD}{kafka}tombstones = true\nkey = \"shard\"\n"
    ));
    assert!(
        p.iter()
            .any(|l| l.starts_with("sink.tombstones: needs key = \"document\" (key is \"shard\")")),
        "{p:?}"
    );
    let p = problems(&format!("{SHARD}[sink]\ntombstones = true\n"));
    assert!(
        p.iter()
            .any(|l| l.starts_with("sink.tombstones: only used by kind = \"kafka\"")),
        "{p:?}"
    );
}

#[test]
fn snapshot_start_and_its_settings() {
    let one = "[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\n";
    let r = parse(&format!("{one}[start]\nposition = \"snapshot\"\n")).unwrap();
    assert_eq!(r.start, StartPosition::Snapshot);
    assert_eq!(r.config.snapshot.batch_size, 1000);
    assert_eq!(r.stream_margin, Duration::from_secs(60));
    let r = parse(&format!(
        "{one}[start]\nposition = \"snapshot\"\n[snapshot]\nbatch_size = 10\nstream_margin = \"5m\"\n"
    ))
    .unwrap();
    assert_eq!(r.config.snapshot.batch_size, 10);
    assert_eq!(r.stream_margin, Duration::from_secs(300));

    // Several shards need the catalog to know who owns what.
    let two = format!(
        "{one}[[shards]]\nname = \"b\"\nmembers = [\"h:2\"]\n[start]\nposition = \"snapshot\"\n"
    );
    let p = problems(&two);
    assert!(
        p.iter()
            .any(|l| l.starts_with("start.position") && l.contains("[discovery] uri")),
        "{p:?}"
    );
    assert!(parse(&format!("{two}[discovery]\nuri = \"mongodb://m:27017/\"\n")).is_ok());
    let p = problems(&format!(
        "{one}[snapshot]\nbatch_size = 0\nstream_margin = \"soon\"\n"
    ));
    assert!(
        p.iter().any(|l| l.starts_with("snapshot.batch_size")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|l| l.starts_with("snapshot.stream_margin")),
        "{p:?}"
    );
    let p = problems(&format!("{one}[start]\nposition = \"snapshots\"\n"));
    assert!(p.iter().any(|l| l.contains("\"snapshot\"")), "{p:?}");
}

#[test]
fn full_document_modes() {
    use quorumtail_sink::FullDocument;
    assert_eq!(
        parse(SHARD).unwrap().config.sink.full_document,
        FullDocument::Off
    );
    for (text, want) in [
        ("off", FullDocument::Off),
        ("lookup", FullDocument::Lookup),
        ("required", FullDocument::Required),
    ] {
        let r = parse(&format!(
            "{SHARD}[sink]\nformat = \"debezium\"\nfull_document = \"{text}\"\n"
        ))
        .unwrap();
        assert_eq!(r.config.sink.full_document, want);
        assert_eq!(want.as_str(), text);
    }
    let p = problems(&format!(
        "{SHARD}[sink]\nfull_document = \"updateLookup\"\n"
    ));
    assert!(
        p[0].starts_with(
            "sink.full_document (line 5): unknown variant `updateLookup`, expected one of `off`, `lookup`, `required`"
        ),
        "{p:?}"
    );
}

#[test]
fn undecodable_modes() {
    use quorumtail_sink::Undecodable;
    assert_eq!(
        parse(SHARD).unwrap().config.sink.undecodable,
        Undecodable::Stop,
        "stopping is the default"
    );
    for format in ["change-event", "debezium"] {
        for (text, want) in [("stop", Undecodable::Stop), ("raw", Undecodable::Raw)] {
            let r = parse(&format!(
                "{SHARD}[sink]\nformat = \"{format}\"\nundecodable = \"{text}\"\n"
            ))
            .unwrap();
            assert_eq!(r.config.sink.undecodable, want);
            assert_eq!(want.as_str(), text);
        }
    }
    // The oplog format carries every entry as logged: nothing is undecodable there.
    let p = problems(&format!("{SHARD}[sink]\nundecodable = \"raw\"\n"));
    assert!(
        p.iter().any(|p| p.starts_with(
            "sink.undecodable: only used by format = \"change-event\" or \"debezium\""
        )),
        "{p:?}"
    );
    let p = problems(&format!(
        "{SHARD}[sink]\nformat = \"change-event\"\nundecodable = \"skip\"\n"
    ));
    assert!(
        p[0].contains("unknown variant `skip`, expected `stop` or `raw`"),
        "{p:?}"
    );
}

#[test]
fn json_modes() {
    use quorumtail_sink::JsonMode;
    assert_eq!(
        parse(SHARD).unwrap().config.sink.json,
        JsonMode::Relaxed,
        "relaxed is the default"
    );
    for format in ["oplog", "change-event"] {
        for (text, want) in [
            ("relaxed", JsonMode::Relaxed),
            ("canonical", JsonMode::Canonical),
        ] {
            let r = parse(&format!(
                "{SHARD}[sink]\nformat = \"{format}\"\njson = \"{text}\"\n"
            ))
            .unwrap();
            assert_eq!(r.config.sink.json, want);
            assert_eq!(want.as_str(), text);
        }
    }
    // Debezium records write JSON as the connector does.
    let p = problems(&format!(
        "{SHARD}[sink]\nformat = \"debezium\"\njson = \"canonical\"\n"
    ));
    assert!(
        p.iter().any(
            |p| p.starts_with("sink.json: only used by format = \"oplog\" or \"change-event\"")
        ),
        "{p:?}"
    );
    let p = problems(&format!("{SHARD}[sink]\njson = \"strict\"\n"));
    assert!(
        p[0].contains("unknown variant `strict`, expected `relaxed` or `canonical`"),
        "{p:?}"
    );
}
