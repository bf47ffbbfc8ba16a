//! The chaos suite behind `mq-chaos`: a workload through `discovery:fabric:<group>`, injected
//! faults, and a checker over the recorded history (Jepsen-style).
//!
//! - [`netns`]: per-node network namespaces joined by a bridge, partitions and healing.
//! - [`history`]: the JSON-lines history (sends, receipts with the master's epoch, deliveries,
//!   acks, faults).
//! - [`check`]: lost / invented / duplicated / reordered messages and split-brain windows.
//! - [`workload`]: the producers and consumers (fabricmq's failover client).

pub mod check;
pub mod history;
pub mod netns;
pub mod workload;
