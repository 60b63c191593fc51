//! Where messages come from: Kafka (the daemon) or files (replay).

pub mod file;
pub mod kafka;
