//! Checks an operator runs before starting (`quorumtail check`): whether librdkafka
//! accepts the `[sink.librdkafka]` properties, and (`--connect`) whether the brokers answer
//! and the topics that can be known up front exist.
//!
//! Each function returns every problem it finds, one line each, naming the property,
//! broker or topic and the fix; an empty list means the check passed.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, Producer};

/// Whether librdkafka accepts the passthrough properties (the check `quorumtail check` runs).
pub use crate::client::librdkafka_properties;
use crate::client::producer_properties;
use crate::error::kafka_fix;
use crate::topic::TopicTemplate;

/// What a topic is for, e.g. `shard shard01` or `checkpoints`.
pub type TopicUse = (String, String);

/// The topics a template renders for `shards` when they can be known up front (none when it
/// uses `{db}` or `{coll}`).
pub fn known_topics(template: &TopicTemplate, shards: &[String]) -> Vec<TopicUse> {
    if let Some(t) = template.fixed() {
        return vec![(t.to_owned(), "every shard".into())];
    }
    if template.uses_namespace() {
        return Vec::new();
    }
    shards
        .iter()
        .map(|s| (template.render(s, "", ""), format!("shard {s}")))
        .collect()
}

/// Asks the brokers for metadata (within `timeout`) and checks that each topic exists and
/// is usable by this principal.
pub async fn brokers_and_topics(
    brokers: &str,
    user: &BTreeMap<String, String>,
    topics: &[TopicUse],
    timeout: Duration,
) -> Vec<String> {
    let props = match producer_properties(brokers, user) {
        Ok(p) => p,
        Err(e) => return vec![format!("sink: {e}")],
    };
    let mut cc = ClientConfig::new();
    for (k, v) in &props {
        cc.set(k, v);
    }
    let producer: BaseProducer = match cc.create() {
        Ok(p) => p,
        Err(e) => return vec![format!("sink: cannot create the Kafka producer: {e}")],
    };
    let md =
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout)).await;
    let md = match md {
        Ok(Ok(md)) => md,
        Ok(Err(e)) => {
            return vec![format!(
                "sink.brokers {brokers}: no metadata within {} ms ({e}); check that the brokers run, that their advertised listeners resolve and are reachable from this host, and the TLS/SASL settings in [sink.librdkafka]",
                timeout.as_millis()
            )]
        }
        Err(e) => return vec![format!("sink.brokers {brokers}: metadata request failed: {e}")],
    };
    let mut problems = Vec::new();
    for (topic, what) in topics {
        let code = match md.topics().iter().find(|t| t.name() == topic) {
            None => Some(RDKafkaErrorCode::UnknownTopic),
            Some(t) => match t.error() {
                Some(e) => Some(RDKafkaErrorCode::from(e)),
                None if t.partitions().is_empty() => Some(RDKafkaErrorCode::UnknownPartition),
                None => None,
            },
        };
        if let Some(code) = code {
            problems.push(format!(
                "topic {topic:?} ({what}): {code}; fix: {}",
                kafka_fix(code)
            ));
        }
    }
    problems
}
