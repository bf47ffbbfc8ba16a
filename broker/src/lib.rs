//! fabricmq broker: a STOMP 1.2 message broker with a durable journal.
//!
//! Module map (each module's doc says what it owns and its invariants):
//! - [`admin`]: the HTTP admin endpoint (`/metrics`, `/health`, `/status`);
//! - [`config`]: typed, validated configuration (TOML file plus command-line overrides);
//! - [`auth`]: users and password checks, guarded against login floods (bounded check pool,
//!   back-off, rate-limited failure logs);
//! - [`pattern`]: ActiveMQ-style destination wildcards for policies;
//! - [`memory`]: accounting of what clients make the broker hold against `limits.max_memory`;
//! - [`message`]: the in-memory message and deliveries;
//! - [`destination`]: queues (competing consumers, prefetch, acks, redelivery, dead-letters) and
//!   topics (fan-out);
//! - [`directory`]: destinations by name: creation cap, idle removal;
//! - [`quota`]: per-connection and per-user quotas (subscriptions, transactions, header bytes);
//! - [`gate`]: whether the broker may acknowledge anything now (the fabric closes it);
//! - [`broker`]: shared state: destinations, ids, de-duplication, memory budget;
//! - [`connection`]: one task per client connection (STOMP frames, receipts, heart-beats);
//! - `client_state`: what a connection builds up: resolved destinations, open transactions and
//!   their quota charges;
//! - [`ha`]: the fabric lifecycle (election in ZooKeeper, fencing, two-stage session handling);
//! - [`socket`]: a connection's plain or TLS socket halves;
//! - [`server`]: start-up (recovery, bind), accept loop, graceful shutdown;
//! - [`standalone`]: the standalone lifecycle (re-opens the store after a write or fsync failed);
//! - [`store`]: the segmented, CRC-checked, group-committed journal;
//! - [`tls`]: the `[tls]` section's certificates for `stomp+ssl://` listeners.

pub mod admin;
pub mod auth;
pub mod authz;
pub mod broker;
pub(crate) mod client_state;
pub mod config;
pub mod connection;
pub mod destination;
pub mod directory;
pub mod file_perms;
pub mod gate;
pub mod ha;
pub mod memory;
pub mod message;
pub mod pattern;
pub mod producers;
pub mod quota;
pub mod server;
pub mod socket;
pub mod standalone;
pub mod tls;

pub mod store;
