//! Kafka client settings in one place: the producer properties the sink enforces on top of
//! the `[sink.librdkafka]` passthrough, the check of that passthrough (by the sink's rules
//! and by librdkafka itself), the properties the checkpoint store's admin client and
//! consumer share, and the client context that sends librdkafka's logs to `tracing`.
//!
//! ```text
//!  [sink] brokers + librdkafka ─► producer_properties ─► the sink's producer, the store's producer
//!                              └► shared_properties   ─► the store's admin client and consumer
//!  validation (config), `check` (preflight) ─► refused_property, librdkafka_properties
//! ```

use std::collections::BTreeMap;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::SinkError;

/// Why the sink refuses a passthrough librdkafka property, if it does.
pub(crate) fn refused_property(key: &str, value: &str) -> Option<&'static str> {
    let v = value.trim().to_ascii_lowercase();
    match key {
        "enable.idempotence" if v != "true" => Some(
            "the sink needs the idempotent producer (ordered, no duplicates on retry); remove this key",
        ),
        "acks" | "request.required.acks" if v != "all" && v != "-1" => Some(
            "the sink requires acks=all so a checkpoint never passes a record a broker failure could lose; remove this key",
        ),
        "delivery.report.only.error" if v != "false" => Some(
            "the sink needs a delivery report for every record to move checkpoints; remove this key",
        ),
        "transactional.id" => Some("the sink does not use transactions; remove this key"),
        "bootstrap.servers" | "metadata.broker.list" => {
            Some("set the brokers with sink.brokers instead")
        }
        _ => None,
    }
}

pub(crate) fn producer_properties(
    brokers: &str,
    user: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SinkError> {
    let mut p: BTreeMap<String, String> = [
        ("bootstrap.servers", brokers),
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "5"),
        ("client.id", "quorumtail"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in user {
        if let Some(problem) = refused_property(k, v) {
            return Err(SinkError::Config {
                key: format!("librdkafka.\"{k}\""),
                problem: problem.to_owned(),
            });
        }
        p.insert(k.clone(), v.clone());
    }
    Ok(p)
}

/// Whether librdkafka accepts each passthrough property (its name and its value), then the
/// producer configuration as a whole. Nothing is contacted.
///
/// Each problem is `(key, problem)`, the key as written under `[sink.librdkafka]` (empty
/// for a problem of the combination).
pub fn librdkafka_properties(
    brokers: &str,
    user: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (k, v) in user {
        let mut one = ClientConfig::new();
        one.set(k, v);
        if let Err(e) = one.create_native_config() {
            let why = match e {
                rdkafka::error::KafkaError::ClientConfig(_, desc, _, _) => desc,
                other => other.to_string(),
            };
            problems.push((
                k.clone(),
                format!("librdkafka refuses it: {why}; see librdkafka's CONFIGURATION.md for the property names and values"),
            ));
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    // The enforced settings may refuse a user's entry: reported by the caller's own check.
    let Ok(props) = producer_properties(brokers, user) else {
        return problems;
    };
    let mut all = ClientConfig::new();
    for (k, v) in &props {
        all.set(k, v);
    }
    // Creating the producer checks what single properties cannot (combinations, features
    // such as SASL mechanisms); it connects only in the background and is dropped at once.
    if let Err(e) = all.create::<BaseProducer>() {
        problems.push((
            String::new(),
            format!("librdkafka refuses the producer configuration: {e}"),
        ));
    }
    problems
}

/// Security and connection properties are shared by the admin client and the consumer;
/// producer-only keys would make librdkafka warn there, so they are left out.
const PRODUCER_ONLY: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "linger.ms",
    "queue.buffering.max.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "compression.type",
    "compression.codec",
    "client.id",
];

/// The connection and security properties of `user` for clients other than producers (the
/// checkpoint store's admin client and consumer), with the brokers.
pub(crate) fn shared_properties(brokers: &str, user: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in user {
        if !PRODUCER_ONLY.contains(&k.as_str()) {
            c.set(k, v);
        }
    }
    c
}

/// The context of the checkpoint store's clients: librdkafka's logs and errors go to
/// `tracing`; end-of-partition (expected when reading to the end) is not an error.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(error = %error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for TracingContext {}

pub(crate) fn log_to_tracing(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{msg}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{msg}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{msg}"),
    }
}
