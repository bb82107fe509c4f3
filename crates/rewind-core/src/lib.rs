//! Domain types, configuration model and validation, the planner and the audit-chain
//! hashing for rewind. Nothing in this crate touches the network, the file system or other
//! processes: it decides, others act.

pub mod audit;
pub mod config;
pub mod dbplan;
pub mod errtext;
pub mod model;
pub mod plan;
pub mod redact;
pub mod secret;
pub mod stats;
pub mod units;

pub use model::*;
