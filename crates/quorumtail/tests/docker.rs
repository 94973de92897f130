//! docker/ cannot run here (no container engine), so its files are checked for what can go
//! wrong without one: the compose file parses and is consistent (services, dependencies,
//! mounted files, names and ports shared with the init scripts and quorumtail's config),
//! and the config it mounts is valid.

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
    // The sink talks to the listener Kafka advertises.
    let advertised = svc["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap();
    let brokers = cfg.config.sink.brokers.clone().unwrap();
    assert!(advertised.ends_with(&brokers), "{brokers} vs {advertised}");
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
        let topic = template.replace("{shard}", shard);
        assert!(kafka_init.contains(&topic), "kafka-init creates {topic}");
    }
}
