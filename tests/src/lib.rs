//! fabricmq's test harness: real broker processes, in-process brokers and a raw STOMP client.
//!
//! - [`process`]: starts the real `mq-broker` binary on a loopback port with a temporary data
//!   directory, waits for it to be listening (its ready file, never a fixed sleep), and can
//!   SIGKILL, SIGTERM, SIGSTOP/SIGCONT and restart it. Logs are kept per process and printed when a
//!   test fails; a test fails if a broker panicked. Processes are killed and reaped on drop, by PID.
//! - [`inproc`]: a broker served inside the test process (for dispatch semantics).
//! - [`raw`]: a STOMP connection that shows exactly what the broker sends.
//! - [`http`]: a GET for the admin endpoint and a reader of `/metrics` values.
//! - [`procfs`]: memory figures of a process (`VmRSS`, `VmHWM`) and a peak sampler.
//! - [`users`]: users files with argon2 hashes.
//! - [`tmpfs`]: a small tmpfs mount and a filler that takes all its space (disk-full faults).
//! - [`chaos`]: the chaos suite behind the `mq-chaos` binary (network namespaces, workload,
//!   history, checker).

pub mod chaos;
pub mod http;
pub mod inproc;
pub mod process;
pub mod procfs;
pub mod raw;
pub mod tmpfs;
pub mod users;
