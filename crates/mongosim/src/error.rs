//! The simulator's two error types, at the bottom of the module graph so that every layer
//! can use them without depending on another: [`CmdError`], what a command answers
//! (`{ok: 0, errmsg, code, codeName}`), and [`SimError`], what the in-process control API
//! returns (a refused command is one of its cases).
//!
//! They used to live in `world` and `cluster`; both modules still re-export them, so
//! `mongosim::world::CmdError` and `mongosim::cluster::SimError` keep working.

use std::net::SocketAddr;

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

/// An error a command returns: `{ok: 0, errmsg, code, codeName}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError {
    /// Numeric error code.
    pub code: i32,
    /// Symbolic name.
    pub code_name: &'static str,
    /// Human message.
    pub errmsg: String,
}

impl CmdError {
    /// Builds an error.
    pub fn new(code: i32, code_name: &'static str, errmsg: impl Into<String>) -> CmdError {
        CmdError {
            code,
            code_name,
            errmsg: errmsg.into(),
        }
    }

    /// NotWritablePrimary (10107).
    pub fn not_primary() -> CmdError {
        CmdError::new(10107, "NotWritablePrimary", "not primary")
    }
}
