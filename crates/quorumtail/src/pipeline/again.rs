//! A snapshot on request on a running shard: see [`crate::snapshot::copy_again`].

use std::sync::atomic::Ordering::Relaxed;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{ShardError, ShardSpec, ShardTask};
use crate::snapshot::{copy_again, Output, Request};

impl ShardTask {
    /// Copies the requested collections as of the last entry released, the stream waiting
    /// meanwhile. A read that fails is logged and counted (the stream goes on: what it
    /// emits stays right, the copy is incomplete and can be requested again); the output
    /// stopping stops the shard.
    pub(super) async fn snapshot_again(
        &mut self,
        req: &Request,
        shutdown: &CancellationToken,
    ) -> Result<(), ShardError> {
        let Some(at) = self.last_released else {
            warn!(shard = %self.shard, "snapshot request: the shard has released no entry yet, so there is no time to read at; request it again once it streams");
            self.stats.snapshot_requests_failed.fetch_add(1, Relaxed);
            return Ok(());
        };
        // What the stream released so far goes out before the copy.
        self.flush().await?;
        let spec = ShardSpec {
            name: self.shard.clone(),
            replica_set: self.replica_set.clone(),
            members: self
                .core
                .members()
                .map(|(_, addr, _)| addr.to_owned())
                .collect(),
            arbiters: 0,
            quorum: None,
            listed: false,
        };
        let out = match &self.lookup_tx {
            Some(tx) => Output::Stage(tx),
            None => Output::Sink(&self.shared.sink),
        };
        let copied = copy_again(
            &spec,
            at.into(),
            req,
            &self.shared.filter,
            &mut self.emitter,
            &out,
            &self.stats,
            shutdown,
        )
        .await;
        match copied {
            Ok(n) => {
                info!(shard = %self.shard, documents = n, "snapshot on request: done; the stream goes on");
                Ok(())
            }
            Err(e @ ShardError::Snapshot { .. }) => {
                error!(shard = %self.shard, error = %e, "snapshot on request failed; the stream goes on, the copy is incomplete: request it again");
                self.stats.snapshot_requests_failed.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
