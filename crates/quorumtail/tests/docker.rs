//! docker/ cannot run here (no container engine), so its files are checked for what can go
//! wrong without one: the compose file parses and is consistent (services, dependencies,
//! mounted files, names and ports shared with the init scripts and quorumtail's config),
//! the config it mounts is valid, and what operating the container needs is there (build
//! context, stop grace period, checkpoint volume, health check, host listeners, stripped
//! binary).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_yaml::Value;

fn docker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docker")
}

fn compose() -> Value {
    let text = std::fs::read_to_string(docker().join("compose.yaml")).unwrap();
    let mut v: Value = serde_yaml::from_str(&text).expect("compose.yaml is YAML");
    v.apply_merge().expect("YAML merge keys resolve");
    v
}

fn services(c: &Value) -> &serde_yaml::Mapping {
    c["services"].as_mapping().expect("services")
}

#[test]
fn compose_file_is_consistent() {
    let c = compose();
    let svc = services(&c);
    let names: BTreeSet<&str> = svc.keys().filter_map(Value::as_str).collect();
    for required in [
        "configsvr",
        "shard01-a",
        "shard01-b",
        "shard01-c",
        "shard02-a",
        "shard02-b",
        "shard02-c",
        "mongos",
        "mongo-init",
        "mongos-init",
        "kafka",
        "kafka-init",
        "quorumtail",
    ] {
        assert!(
            names.contains(required),
            "service {required} missing: {names:?}"
        );
    }
    for (name, s) in svc {
        let name = name.as_str().unwrap();
        assert!(
            s["image"].is_string() || s["build"].is_mapping(),
            "{name} has neither image nor build"
        );
        if let Some(deps) = s["depends_on"].as_mapping() {
            for dep in deps.keys() {
                let dep = dep.as_str().unwrap();
                assert!(
                    names.contains(dep),
                    "{name} depends on unknown service {dep}"
                );
            }
        }
        if let Some(vols) = s["volumes"].as_sequence() {
            for v in vols {
                let src = v.as_str().unwrap().split(':').next().unwrap();
                if src.starts_with('.') {
                    assert!(
                        docker().join(src).exists(),
                        "{name} mounts missing file {src}"
                    );
                }
            }
        }
        // Shard members run as shard servers of the set their name says.
        if let Some(set) = name
            .strip_suffix("-a")
            .or(name.strip_suffix("-b"))
            .or(name.strip_suffix("-c"))
        {
            let cmd: Vec<&str> = s["command"]
                .as_sequence()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                cmd.contains(&"--shardsvr") && cmd.windows(2).any(|w| w == ["--replSet", set]),
                "{name}: {cmd:?}"
            );
        }
    }
    let build = &svc["quorumtail"]["build"];
    let context = docker().join(build["context"].as_str().unwrap());
    assert!(
        context.join("Cargo.toml").exists(),
        "the build context is the repository root"
    );
    assert!(context.join(build["dockerfile"].as_str().unwrap()).exists());
    let mount = svc["quorumtail"]["volumes"][0].as_str().unwrap();
    let dockerfile = std::fs::read_to_string(docker().join("Dockerfile")).unwrap();
    let target = mount.split(':').nth(1).unwrap();
    assert!(
        dockerfile.contains(target),
        "the image's default command reads {target}"
    );
}

#[test]
fn mounted_config_matches_the_cluster() {
    let cfg = quorumtail::config::Config::load(&docker().join("quorumtail.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let c = compose();
    let svc = services(&c);
    // Discovery goes through the mongos service on the port it listens on.
    let uri = &cfg.config.discovery.as_ref().unwrap().uri;
    let mongos_cmd: Vec<&str> = svc["mongos"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let port = mongos_cmd.windows(2).find(|w| w[0] == "--port").unwrap()[1];
    assert!(
        uri.contains(&format!("mongos:{port}")),
        "{uri} vs mongos port {port}"
    );
    // The sink talks to the listener Kafka advertises to the containers; clients on the
    // host use the EXTERNAL listener, advertised as localhost and published on that port.
    let kafka = &svc["kafka"];
    let env = &kafka["environment"];
    let advertised: Vec<&str> = env["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    let brokers = cfg.config.sink.brokers.clone().unwrap();
    assert!(
        advertised.contains(&format!("PLAINTEXT://{brokers}").as_str()),
        "{brokers} vs {advertised:?}"
    );
    let external = advertised
        .iter()
        .find_map(|l| l.strip_prefix("EXTERNAL://localhost:"))
        .expect("an EXTERNAL listener advertised as localhost");
    assert!(
        env["KAFKA_LISTENERS"]
            .as_str()
            .unwrap()
            .contains(&format!("EXTERNAL://:{external}")),
        "Kafka listens on the advertised host port"
    );
    assert!(env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        .as_str()
        .unwrap()
        .contains("EXTERNAL:PLAINTEXT"));
    let published: Vec<&str> = kafka["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        published.contains(&format!("{external}:{external}").as_str()),
        "{published:?}"
    );
    // kafka-init creates the topics the template renders for the shards the init script adds.
    let init = std::fs::read_to_string(docker().join("init/add-shards.sh")).unwrap();
    let kafka_init = svc["kafka-init"]["entrypoint"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    let template = cfg.config.sink.topic.clone().unwrap();
    for shard in ["shard01", "shard02"] {
        assert!(
            init.contains(&format!("'{shard}'")),
            "add-shards.sh adds {shard}"
        );
        let topic = template.render(shard, "", "");
        assert!(kafka_init.contains(&topic), "kafka-init creates {topic}");
    }
}

/// What operating the container needs: a small build context, a stop that leaves time for
/// the drain, checkpoints that outlive the container, a health check that works without
/// curl, and a stripped binary.
#[test]
fn container_operations() {
    let ignore = std::fs::read_to_string(docker().join("../.dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore.lines().map(str::trim).collect();
    for entry in ["target/", ".cache/", ".git"] {
        assert!(ignored.contains(&entry), ".dockerignore lacks {entry}");
    }
    let cfg = quorumtail::config::Config::load(&docker().join("quorumtail.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let c = compose();
    let q = &services(&c)["quorumtail"];

    // SIGTERM's drain (shutdown_timeout) ends before docker sends SIGKILL.
    let grace = humantime::parse_duration(q["stop_grace_period"].as_str().unwrap()).unwrap();
    assert!(
        grace > cfg.shutdown_timeout,
        "stop_grace_period {grace:?} must exceed shutdown_timeout {:?}",
        cfg.shutdown_timeout
    );

    // The checkpoint file lies on a named volume declared at the top level.
    assert_eq!(
        cfg.config.checkpoint.kind,
        quorumtail::config::CheckpointKind::File
    );
    let path = std::path::Path::new(&cfg.config.checkpoint.path);
    let named = q["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|v| {
            let (src, dst) = v.split_once(':')?;
            (!src.starts_with('.')
                && !src.starts_with('/')
                && path.starts_with(dst.split(':').next()?))
            .then_some(src)
        })
        .expect("the checkpoint path is on a volume");
    assert!(
        c["volumes"].as_mapping().unwrap().contains_key(named),
        "volume {named} is declared"
    );

    // The endpoints are published, and the health check asks them with the binary itself.
    let listen = &cfg.config.http.as_ref().expect("[http] is enabled").listen;
    let port = listen.rsplit_once(':').unwrap().1;
    let ports: Vec<&str> = q["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        ports.contains(&format!("{port}:{port}").as_str()),
        "{ports:?}"
    );
    let test: Vec<&str> = q["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        &test[..4],
        ["CMD", "quorumtail", "healthcheck", "--url"],
        "{test:?}"
    );
    assert!(
        test[4].starts_with(&format!("http://127.0.0.1:{port}/")),
        "{test:?}"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_quorumtail"))
        .args(["healthcheck", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--url"));

    let dockerfile = std::fs::read_to_string(docker().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("strip target/release/quorumtail"),
        "the image ships a stripped binary"
    );
}
