//! The Kafka sink against a real broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use quorumtail_sink::{Sink, SinkConfig, SinkError, SinkInput};
use tokio::time::Instant;

use crate::broker::{read_all, Broker};
use crate::{confirmed_seq, cp, marker, record, ts, wait_progress};

fn config(broker: &Broker, topic: &str) -> SinkConfig {
    let mut c = SinkConfig::kafka(broker.bootstrap.clone());
    c.topic = Some(topic.parse().unwrap());
    c.startup_timeout = Some(Duration::from_secs(10));
    c.max_in_flight = Some(256);
    c.channel_capacity = 64;
    if let Ok(d) = std::env::var("RDKAFKA_DEBUG") {
        c.librdkafka.insert("debug".into(), d);
    }
    c
}

fn shards() -> Vec<Arc<str>> {
    vec!["rs0".into(), "rs1".into()]
}

/// The input of one shard: records (some keyless, some inside "transactions" without a
/// checkpoint) and markers, ending with a record that carries a checkpoint.
fn script(shard: &str, n: u64) -> Vec<SinkInput> {
    let mut v = Vec::new();
    let mut seq = 0;
    while seq < n {
        seq += 1;
        if seq % 10 == 5 {
            v.push(marker(shard, seq).into());
            continue;
        }
        let in_txn = seq % 10 == 7 || seq % 10 == 8;
        let key = if seq % 13 == 0 {
            None
        } else {
            Some(format!("{shard}-k{}", seq % 11))
        };
        v.push(record(shard, seq, !in_txn || seq == n, key.as_deref()).into());
    }
    v
}

fn last_checkpoint_seq(script: &[SinkInput]) -> u64 {
    script
        .iter()
        .rev()
        .find_map(|i| match i {
            SinkInput::Record(r) if r.checkpoint.is_some() => Some(r.seq),
            SinkInput::Marker(m) => Some(m.seq),
            _ => None,
        })
        .unwrap()
}

fn records_of(script: &[SinkInput]) -> Vec<&quorumtail_sink::OutRecord> {
    script
        .iter()
        .filter_map(|i| match i {
            SinkInput::Record(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_two_shards_across_partitions_in_order_with_headers_and_keys() {
    let broker = Broker::start();
    let p = crate::unique("it1");
    broker
        .create_topics(&[(&format!("{p}.rs0.app"), 3), (&format!("{p}.rs1.app"), 4)])
        .await;
    let sink = Sink::kafka(
        &config(&broker, &format!("{p}.{{shard}}.{{db}}")),
        &shards(),
    )
    .await
    .unwrap();
    let scripts: BTreeMap<&str, Vec<SinkInput>> =
        [("rs0", script("rs0", 600)), ("rs1", script("rs1", 450))].into();
    // Two producers, like two merge tasks, interleaving on the one channel.
    let mut tasks = Vec::new();
    for (_, s) in scripts.clone() {
        let tx = sink.sender();
        tasks.push(tokio::spawn(async move {
            for i in s {
                tx.send(i).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = sink.flush(Instant::now() + Duration::from_secs(60)).await;
    assert!(report.is_complete(), "{report:?}");
    for (shard, s) in &scripts {
        assert_eq!(
            report.checkpoints.get(shard),
            Some(cp(last_checkpoint_seq(s))),
            "{shard}"
        );
    }

    let got = read_all(
        &broker.bootstrap,
        &[&format!("{p}.rs0.app"), &format!("{p}.rs1.app")],
    )
    .await;
    for (shard, s) in &scripts {
        let want = records_of(s);
        let mine: Vec<_> = got.iter().filter(|c| c.shard() == *shard).collect();
        assert_eq!(mine.len(), want.len(), "{shard}: every record exactly once");
        let by_seq: HashMap<u64, _> = mine.iter().map(|c| (c.seq(), *c)).collect();
        assert_eq!(by_seq.len(), want.len(), "{shard}: no duplicates");
        let mut partitions_used = std::collections::HashSet::new();
        for r in &want {
            let c = by_seq[&r.seq];
            assert_eq!(c.topic, format!("{p}.{shard}.app"));
            assert_eq!(c.key, r.key, "{shard} seq {}", r.seq);
            assert_eq!(c.header("shard"), Some(*shard));
            assert_eq!(c.header("ts"), Some(ts(r.seq).to_string().as_str()));
            assert_eq!(c.header("op"), Some("i"));
            assert_eq!(c.header("ns"), Some("app.users"));
            partitions_used.insert(c.partition);
        }
        assert!(
            partitions_used.len() > 1,
            "{shard}: records spread over partitions"
        );
        // Per-shard order within each partition.
        let mut per_partition: BTreeMap<i32, Vec<(i64, u64)>> = BTreeMap::new();
        for c in &mine {
            per_partition
                .entry(c.partition)
                .or_default()
                .push((c.offset, c.seq()));
        }
        for (p, mut v) in per_partition {
            v.sort();
            assert!(
                v.windows(2).all(|w| w[0].1 < w[1].1),
                "{shard} partition {p}: seqs out of order: {v:?}"
            );
        }
    }
}

/// Confirmations never run ahead of delivery: while the broker is stopped (SIGSTOP) the
/// confirmed checkpoint does not move, and after it continues every confirmed record is
/// in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_checkpoint_waits_for_a_stopped_broker() {
    let broker = Broker::start_controllable();
    let p = crate::unique("it2");
    broker.create_topics(&[(&p, 3)]).await;
    let mut cfg = config(&broker, &p);
    cfg.librdkafka
        .insert("message.timeout.ms".into(), "120000".into());
    let sink = Sink::kafka(&cfg, &shards()).await.unwrap();
    let tx = sink.sender();
    let mut rs0 = sink.progress("rs0");
    // Watch every confirmation the sink publishes.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let watcher = {
        let mut rx = sink.progress("rs0");
        let seen = seen.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if let Some(s) = confirmed_seq(&rx.borrow_and_update()) {
                    seen.lock().unwrap().push(s);
                }
            }
        })
    };

    for seq in 1..=100 {
        tx.send(record("rs0", seq, true, Some(&format!("k{seq}"))))
            .await
            .unwrap();
    }
    wait_progress(&mut rs0, Duration::from_secs(30), "first batch", |p| {
        confirmed_seq(p) == Some(100)
    })
    .await;

    broker.pause();
    for seq in 101..=200 {
        tx.send(record("rs0", seq, true, Some(&format!("k{seq}"))))
            .await
            .unwrap();
    }
    // Nothing can be acknowledged while the broker is stopped: observe for a while that
    // the checkpoint stays put (this is the assertion, not a wait for a race).
    let moved = tokio::time::timeout(
        Duration::from_secs(3),
        rs0.wait_for(|p| confirmed_seq(p) != Some(100)),
    )
    .await
    .is_ok();
    assert!(
        !moved,
        "confirmed moved while the broker was stopped: {:?}",
        *rs0.borrow()
    );
    assert_eq!(sink.checkpoints().get("rs0"), Some(cp(100)));
    assert!(sink.unconfirmed() > 0);

    broker.resume();
    wait_progress(&mut rs0, Duration::from_secs(60), "second batch", |p| {
        confirmed_seq(p) == Some(200)
    })
    .await;
    let report = sink.flush(Instant::now() + Duration::from_secs(30)).await;
    assert!(report.is_complete(), "{report:?}");
    drop(tx);
    watcher.abort();

    let got = read_all(&broker.bootstrap, &[&p]).await;
    let present: std::collections::HashSet<u64> = got.iter().map(|c| c.seq()).collect();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
    for s in seen {
        for seq in 1..=s {
            assert!(
                present.contains(&seq),
                "confirmed {s} but seq {seq} is not in Kafka"
            );
        }
    }
}

/// The broker dies with records in flight and comes back empty (memory storage): the
/// checkpoint never passes the last record confirmed before the crash unless the records
/// after it reach the new broker; otherwise the error is definite and names the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crash_and_restart_continues_or_fails_clearly() {
    let mut broker = Broker::start_controllable();
    let p = crate::unique("it3");
    broker.create_topics(&[(&p, 2)]).await;
    let mut cfg = config(&broker, &p);
    // tansu forgets producer ids when it restarts, and librdkafka's answer to
    // UNKNOWN_PRODUCER_ID (bump the epoch locally) does not satisfy it: the records time
    // out. Keep that bounded wait short.
    cfg.librdkafka
        .insert("message.timeout.ms".into(), "15000".into());
    cfg.librdkafka
        .insert("reconnect.backoff.max.ms".into(), "500".into());
    let sink = Sink::kafka(&cfg, &shards()).await.unwrap();
    let tx = sink.sender();
    let mut rs0 = sink.progress("rs0");
    for seq in 1..=50 {
        tx.send(record("rs0", seq, true, Some(&format!("k{seq}"))))
            .await
            .unwrap();
    }
    wait_progress(&mut rs0, Duration::from_secs(30), "before the crash", |p| {
        confirmed_seq(p) == Some(50)
    })
    .await;

    broker.pause();
    for seq in 51..=120 {
        tx.send(record("rs0", seq, true, Some(&format!("k{seq}"))))
            .await
            .unwrap();
    }
    broker.kill_and_restart();
    assert_eq!(confirmed_seq(&rs0.borrow()), Some(50));
    broker.create_topics(&[(&p, 2)]).await;

    wait_progress(
        &mut rs0,
        Duration::from_secs(90),
        "after the restart: all confirmed, or a definite error",
        |p| confirmed_seq(p) == Some(120) || p.failure.is_some(),
    )
    .await;
    let prog = rs0.borrow().clone();
    let report = sink.flush(Instant::now() + Duration::from_secs(30)).await;
    drop(tx);
    if let Some(err) = prog.failure.clone() {
        let msg = err.to_string();
        eprintln!("definite error after the restart: {msg}");
        assert!(msg.contains("shard rs0") && msg.contains("fix:"), "{msg}");
        let c = confirmed_seq(&prog).unwrap();
        assert!((50..120).contains(&c), "confirmed {c}");
        // What was confirmed after the restart is in the new broker.
        let got = read_all(&broker.bootstrap, &[&p]).await;
        let present: std::collections::HashSet<u64> = got.iter().map(|c| c.seq()).collect();
        for seq in 51..=c {
            assert!(
                present.contains(&seq),
                "confirmed {c} but seq {seq} is not in Kafka"
            );
        }
    } else {
        assert!(report.is_complete(), "{report:?}");
        let got = read_all(&broker.bootstrap, &[&p]).await;
        let present: std::collections::HashSet<u64> = got.iter().map(|c| c.seq()).collect();
        for seq in 51..=120 {
            assert!(
                present.contains(&seq),
                "seq {seq} confirmed but not in the new broker"
            );
        }
    }
}

/// A record too large for `message.max.bytes` stops its shard before it, with an error
/// naming the shard, ts, ns, topic and fix; the other shard keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definite_error_stops_only_its_shard_and_says_how_to_fix_it() {
    let broker = Broker::start();
    let p = crate::unique("it4");
    broker.create_topics(&[(&p, 2)]).await;
    let mut cfg = config(&broker, &p);
    cfg.librdkafka
        .insert("message.max.bytes".into(), "4096".into());
    cfg.librdkafka.insert("batch.size".into(), "4096".into());
    let sink = Sink::kafka(&cfg, &shards()).await.unwrap();
    let mut failure = sink.failure();
    let tx = sink.sender();
    tx.send(record("rs0", 1, true, Some("a"))).await.unwrap();
    let mut big = record("rs0", 2, true, Some("b"));
    big.value = Some(
        serde_json::to_vec(&serde_json::json!({
            "shard": "rs0", "seq": 2, "pad": "x".repeat(10_000)
        }))
        .unwrap(),
    );
    tx.send(big).await.unwrap();
    tx.send(record("rs0", 3, true, Some("c"))).await.unwrap();
    tx.send(marker("rs0", 4)).await.unwrap();
    for seq in 1..=20 {
        tx.send(record("rs1", seq, true, Some("d"))).await.unwrap();
    }
    let err = tokio::time::timeout(Duration::from_secs(30), failure.wait_for(|f| f.is_some()))
        .await
        .expect("a failure is reported")
        .unwrap()
        .clone()
        .unwrap();
    let report = sink.flush(Instant::now() + Duration::from_secs(30)).await;
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(&*err, SinkError::Delivery(d) if d.seq == 2),
        "{err:?}"
    );
    for part in [
        "shard rs0",
        &format!("ts={}", ts(2)),
        "ns=app.users",
        &format!("topic \"{p}\""),
        "message.max.bytes",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert_eq!(
        report.checkpoints.get("rs0"),
        Some(cp(1)),
        "stops before seq 2"
    );
    assert_eq!(
        report.checkpoints.get("rs1"),
        Some(cp(20)),
        "rs1 unaffected"
    );
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.unconfirmed, 0);
    let got = read_all(&broker.bootstrap, &[&p]).await;
    let rs0: Vec<u64> = got
        .iter()
        .filter(|c| c.shard() == "rs0")
        .map(|c| c.seq())
        .collect();
    assert_eq!(rs0, vec![1], "nothing after the failed record is sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_reports_missing_topics_and_unreachable_brokers() {
    let broker = Broker::start();
    let p = crate::unique("it5");
    broker.create_topics(&[(&format!("{p}.rs0"), 1)]).await;
    // rs0's topic exists, rs1's does not.
    let e = Sink::kafka(&config(&broker, &format!("{p}.{{shard}}")), &shards())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("\"{p}.rs1\""))
            && e.contains("shard rs1")
            && e.contains("create the topic"),
        "{e}"
    );
    // Namespace topics cannot be known up front: only reachability is checked.
    Sink::kafka(&config(&broker, &format!("{p}.{{db}}.{{coll}}")), &shards())
        .await
        .unwrap()
        .flush(Instant::now() + Duration::from_secs(5))
        .await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = SinkConfig::kafka(format!("127.0.0.1:{port}"));
    c.startup_timeout = Some(Duration::from_secs(2));
    let e = Sink::kafka(&c, &shards()).await.unwrap_err();
    assert!(matches!(e, SinkError::Unreachable { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.contains("reachable"),
        "{e}"
    );

    let mut c = config(&broker, &format!("{p}.{{shard}}"));
    c.librdkafka
        .insert("enable.idempotence".into(), "false".into());
    let e = Sink::kafka(&c, &shards()).await.unwrap_err().to_string();
    assert!(e.contains("librdkafka.\"enable.idempotence\""), "{e}");
}

/// A topic that does not exist fails definitely after librdkafka's bounded wait
/// (`topic.metadata.propagation.max.ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_definite_after_a_bounded_wait() {
    let broker = Broker::start();
    let p = crate::unique("it6");
    let mut cfg = config(&broker, &format!("{p}.{{db}}"));
    cfg.librdkafka
        .insert("topic.metadata.propagation.max.ms".into(), "2000".into());
    // Ask the broker not to create it (librdkafka's producer asks for creation by default).
    cfg.librdkafka
        .insert("allow.auto.create.topics".into(), "false".into());
    let sink = Sink::kafka(&cfg, &shards()).await.unwrap();
    let mut rs0 = sink.progress("rs0");
    sink.sender()
        .send(record("rs0", 1, true, Some("a")))
        .await
        .unwrap();
    wait_progress(
        &mut rs0,
        Duration::from_secs(60),
        "delivered or failed",
        |p| p.confirmed.is_some() || p.failure.is_some(),
    )
    .await;
    let prog = rs0.borrow().clone();
    let msg = prog.failure.expect("a definite error").to_string();
    eprintln!("{msg}");
    for part in [
        "shard rs0",
        "seq=1",
        "ns=app.users",
        &format!("\"{p}.app\""),
        "create the topic",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(prog.confirmed.is_none());
    sink.flush(Instant::now() + Duration::from_secs(10)).await;
}

/// Backpressure: with a tiny in-flight limit and a stopped broker, `send` waits instead
/// of dropping, and everything arrives once the broker continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_makes_send_wait_and_drops_nothing() {
    let broker = Broker::start_controllable();
    let p = crate::unique("it7");
    broker.create_topics(&[(&p, 2)]).await;
    let mut cfg = config(&broker, &p);
    cfg.max_in_flight = Some(8);
    cfg.channel_capacity = 4;
    let sink = Sink::kafka(&cfg, &shards()).await.unwrap();
    let tx = sink.sender();
    broker.pause();
    let mut sender = tokio::spawn(async move {
        for seq in 1..=100 {
            tx.send(record("rs1", seq, true, Some(&format!("k{seq}"))))
                .await
                .unwrap();
        }
    });
    // 8 in flight + 4 in the channel + 1 being handed over: the sender must block.
    let blocked = tokio::time::timeout(Duration::from_secs(2), &mut sender).await;
    assert!(blocked.is_err(), "send did not wait for in-flight records");
    assert!(sink.unconfirmed() <= 8, "in flight: {}", sink.unconfirmed());
    broker.resume();
    tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .expect("sender finishes after the broker continues")
        .unwrap();
    let report = sink.flush(Instant::now() + Duration::from_secs(60)).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.checkpoints.get("rs1"), Some(cp(100)));
    let got = read_all(&broker.bootstrap, &[&p]).await;
    assert_eq!(got.len(), 100);
}

/// A full librdkafka queue (QueueFull) makes the sink wait for deliveries, never drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_librdkafka_queue_makes_the_sink_wait() {
    let broker = Broker::start_controllable();
    let p = crate::unique("it8");
    broker.create_topics(&[(&p, 2)]).await;
    let mut cfg = config(&broker, &p);
    cfg.max_in_flight = Some(1000);
    cfg.channel_capacity = 4;
    cfg.librdkafka
        .insert("queue.buffering.max.messages".into(), "5".into());
    let sink = Sink::kafka(&cfg, &shards()).await.unwrap();
    let tx = sink.sender();
    broker.pause();
    let mut sender = tokio::spawn(async move {
        for seq in 1..=60 {
            tx.send(record("rs0", seq, true, Some(&format!("k{seq}"))))
                .await
                .unwrap();
        }
    });
    let blocked = tokio::time::timeout(Duration::from_secs(2), &mut sender).await;
    assert!(
        blocked.is_err(),
        "send did not wait on a full librdkafka queue"
    );
    // 5 in librdkafka's queue and the one being retried.
    assert!(sink.unconfirmed() <= 6, "accepted: {}", sink.unconfirmed());
    broker.resume();
    tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .expect("sender finishes after the broker continues")
        .unwrap();
    let report = sink.flush(Instant::now() + Duration::from_secs(60)).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.checkpoints.get("rs0"), Some(cp(60)));
    let mut got: Vec<u64> = read_all(&broker.bootstrap, &[&p])
        .await
        .iter()
        .map(|c| c.seq())
        .collect();
    got.sort();
    assert_eq!(got, (1..=60).collect::<Vec<_>>());
}

/// A flush whose deadline passes with records in flight returns the checkpoints confirmed
/// so far and says how many records were not confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_deadline_with_a_stopped_broker_reports_what_is_confirmed() {
    let broker = Broker::start_controllable();
    let p = crate::unique("it9");
    broker.create_topics(&[(&p, 2)]).await;
    let sink = Sink::kafka(&config(&broker, &p), &shards()).await.unwrap();
    let tx = sink.sender();
    let mut rs1 = sink.progress("rs1");
    for seq in 1..=10 {
        tx.send(record("rs1", seq, true, Some("k"))).await.unwrap();
    }
    wait_progress(&mut rs1, Duration::from_secs(30), "first records", |p| {
        confirmed_seq(p) == Some(10)
    })
    .await;
    broker.pause();
    for seq in 11..=20 {
        tx.send(record("rs1", seq, true, Some("k"))).await.unwrap();
    }
    tx.send(marker("rs1", 21)).await.unwrap();
    let started = std::time::Instant::now();
    let report = sink.flush(Instant::now() + Duration::from_secs(2)).await;
    let took = started.elapsed();
    broker.resume();
    assert!(took < Duration::from_secs(10), "flush took {took:?}");
    assert!(!report.is_complete());
    assert_eq!(report.unconfirmed, 10, "{report:?}");
    assert_eq!(
        report.checkpoints.get("rs1"),
        Some(cp(10)),
        "the marker waits too"
    );
    let e = tx.send(record("rs1", 22, true, None)).await.unwrap_err();
    assert!(matches!(e, SinkError::Closed));
}

/// Namespace topics: each record goes to the topic its db and coll render to, with the
/// characters Kafka refuses (a space, `$` of `$cmd`) written as `_`; a namespace that still
/// renders to an illegal topic name (too long) stops its shard with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_topics_and_an_illegal_rendered_name() {
    let broker = Broker::start();
    let p = crate::unique("it10");
    broker
        .create_topics(&[
            (&format!("{p}.app.users"), 2),
            (&format!("{p}.app.orders"), 2),
            (&format!("{p}.app.has_space"), 1),
            (&format!("{p}.app._cmd"), 1),
        ])
        .await;
    let sink = Sink::kafka(&config(&broker, &format!("{p}.{{db}}.{{coll}}")), &shards())
        .await
        .unwrap();
    let tx = sink.sender();
    tx.send(record("rs0", 1, true, Some("a"))).await.unwrap();
    let mut orders = record("rs0", 2, true, Some("b"));
    orders.coll = "orders".into();
    tx.send(orders).await.unwrap();
    let mut spaced = record("rs0", 3, true, Some("c"));
    spaced.coll = "has space".into();
    tx.send(spaced).await.unwrap();
    let mut command = record("rs0", 4, true, None);
    command.coll = "$cmd".into();
    tx.send(command).await.unwrap();
    let mut bad = record("rs1", 1, true, Some("d"));
    bad.coll = "x".repeat(250);
    tx.send(bad).await.unwrap();
    tx.send(record("rs1", 2, true, Some("e"))).await.unwrap();
    let report = sink.flush(Instant::now() + Duration::from_secs(30)).await;
    assert_eq!(report.checkpoints.get("rs0"), Some(cp(4)));
    assert_eq!(report.checkpoints.get("rs1"), None);
    assert_eq!(report.failures.len(), 1);
    let msg = report.failures[0].to_string();
    for part in [
        "shard rs1",
        "ns=app.xxxxxxxx",
        "illegal topic name",
        "topic template",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    let users = read_all(&broker.bootstrap, &[&format!("{p}.app.users")]).await;
    let orders = read_all(&broker.bootstrap, &[&format!("{p}.app.orders")]).await;
    let spaced = read_all(&broker.bootstrap, &[&format!("{p}.app.has_space")]).await;
    let commands = read_all(&broker.bootstrap, &[&format!("{p}.app._cmd")]).await;
    assert_eq!(users.iter().map(|c| c.seq()).collect::<Vec<_>>(), vec![1]);
    assert_eq!(orders.iter().map(|c| c.seq()).collect::<Vec<_>>(), vec![2]);
    assert_eq!(orders[0].header("ns"), Some("app.orders"));
    assert_eq!(spaced.iter().map(|c| c.seq()).collect::<Vec<_>>(), vec![3]);
    assert_eq!(
        spaced[0].header("ns"),
        Some("app.has space"),
        "the header keeps the name"
    );
    assert_eq!(
        commands.iter().map(|c| c.seq()).collect::<Vec<_>>(),
        vec![4]
    );
}
