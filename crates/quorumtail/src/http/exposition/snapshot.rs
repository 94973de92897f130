//! The snapshot's metric families: per shard, and per shard and collection.

use prometheus_client::encoding::DescriptorEncoder;

use super::{family, Kind, LabelValue, Labels, Scrape, Value};

impl Scrape {
    /// Per shard and collection (`ns`), from the latest copy.
    fn per_collection(
        &self,
        f: &dyn Fn(&crate::pipeline::stats::CollectionCopy) -> Value,
    ) -> Vec<(Labels, Value)> {
        let mut v = Vec::new();
        for (shard, copies) in &self.copies {
            for (ns, c) in copies {
                v.push((
                    vec![
                        ("shard", LabelValue(shard.clone())),
                        ("ns", LabelValue(ns.clone())),
                    ],
                    f(c),
                ));
            }
        }
        v
    }

    pub(super) fn snapshots(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        use Kind::{Counter, Gauge};
        family(
            e,
            "quorumtail_shard_snapshot_active",
            "Whether the shard is copying its initial snapshot.",
            None,
            Gauge,
            self.per_shard(&|s| s.snapshotting.into()),
        )?;
        family(
            e,
            "quorumtail_shard_snapshot_documents",
            "Documents the initial snapshot emitted.",
            None,
            Counter,
            self.per_shard(&|s| s.snapshot_documents.into()),
        )?;
        family(
            e,
            "quorumtail_shard_snapshot_bytes",
            "BSON bytes of the documents the initial snapshot emitted.",
            None,
            Counter,
            self.per_shard(&|s| s.snapshot_bytes.into()),
        )?;
        family(
            e,
            "quorumtail_shard_snapshot_orphans",
            "Documents the snapshot read on a shard that did not own them (migration leftovers), not emitted.",
            None,
            Counter,
            self.per_shard(&|s| s.snapshot_orphans.into()),
        )?;
        family(
            e,
            "quorumtail_shard_snapshot_estimated_documents",
            "Documents the latest snapshot copy reads, as the members estimated when it started (orphans included).",
            None,
            Gauge,
            self.per_shard(&|s| s.snapshot_estimated_documents.into()),
        )?;
        family(
            e,
            "quorumtail_shard_snapshot_later_reads",
            "Times the rest of the initial snapshot was read at a later time because the server's history no longer held its time.",
            None,
            Counter,
            self.per_shard(&|s| s.snapshot_later_reads.into()),
        )?;
        family(
            e,
            "quorumtail_shard_snapshot_requests_failed",
            "Snapshots on request (quorumtail snapshot) whose reads failed; the log says why.",
            None,
            Counter,
            self.per_shard(&|s| s.snapshot_requests_failed.into()),
        )?;
        family(
            e,
            "quorumtail_shard_snapshot_collections",
            "Collections the initial snapshot finished copying.",
            None,
            Counter,
            self.per_shard(&|s| s.snapshot_collections.into()),
        )?;
        family(
            e,
            "quorumtail_snapshot_collection_documents",
            "Documents a snapshot emitted, per collection (latest copy).",
            None,
            Counter,
            self.per_collection(&|c| c.documents.into()),
        )?;
        family(
            e,
            "quorumtail_snapshot_collection_bytes",
            "BSON bytes of those documents, per collection.",
            None,
            Counter,
            self.per_collection(&|c| c.bytes.into()),
        )?;
        family(
            e,
            "quorumtail_snapshot_collection_orphans",
            "Documents a snapshot read but another shard owned, per collection.",
            None,
            Counter,
            self.per_collection(&|c| c.orphans.into()),
        )?;
        family(
            e,
            "quorumtail_snapshot_collection_done",
            "Whether a snapshot finished copying the collection (1).",
            None,
            Gauge,
            self.per_collection(&|c| c.done.into()),
        )
    }
}
