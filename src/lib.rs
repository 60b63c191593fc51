//! armwatch: watches the event streams of LLM product experiments and says, while they run,
//! when their result cannot be trusted (assignment leaking into inputs, instruments drifting).
//!
//! Data flows one way: [`source`] -> [`event`] decode -> [`state`] -> [`check`] ->
//! [`metrics`] / [`sink`]. Everything up to the checks is pure and owned by one
//! [`engine::Engine`] per thread.

#![warn(missing_docs)]

pub mod check;
pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod event;
pub(crate) mod hint;
pub mod http;
pub mod metrics;
pub mod partitions;
pub mod process;
pub mod report;
pub mod sim;
pub mod sink;
pub(crate) mod skip_zeros;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod stats;
pub mod status;
pub mod threads;
