//! [`SimError`], the error type of the control API.

use std::net::SocketAddr;

use crate::world::CmdError;

/// Errors of the control API.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding a port failed (in use, or no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No simulated process has this address.
    #[error("no simulated process listens on {0}")]
    UnknownNode(SocketAddr),
    /// No shard or replica set has this name.
    #[error("no shard or replica set named {0:?}")]
    UnknownShard(String),
    /// The operation needs a sharded cluster.
    #[error("this simulation is a single replica set; {0} needs a sharded cluster")]
    NotSharded(&'static str),
    /// The simulated server refused, as mongod would.
    #[error("{} ({}): {}", .0.code_name, .0.code, .0.errmsg)]
    Command(CmdError),
    /// A fixture could not be loaded.
    #[error("fixture {dir}: {message}")]
    Fixture {
        /// The fixture directory.
        dir: String,
        /// What is wrong and where.
        message: String,
    },
    /// A bad spec.
    #[error("invalid cluster spec: {0}")]
    Spec(String),
}

impl From<CmdError> for SimError {
    fn from(e: CmdError) -> Self {
        SimError::Command(e)
    }
}
