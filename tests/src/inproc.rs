//! An in-process broker on a loopback port with a temporary data directory.

use std::net::SocketAddr;
use std::sync::Arc;

use fabricmq_broker::broker::Broker;
use fabricmq_broker::config::BrokerConfig;
use fabricmq_broker::server;
use tokio_util::sync::CancellationToken;

use crate::raw::Raw;

/// A broker served in this process on 127.0.0.1:<free port>.
pub struct TestBroker {
    /// Listener address.
    pub addr: SocketAddr,
    /// Shared state, for assertions.
    pub broker: Arc<Broker>,
    /// Stops it.
    pub shutdown: CancellationToken,
    /// The serving task.
    pub task: tokio::task::JoinHandle<()>,
    /// Data directory.
    pub dir: Arc<tempfile::TempDir>,
}

impl TestBroker {
    /// Starts with the default configuration.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// Starts after `f` adjusted the configuration.
    pub async fn start_with(f: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(dir, f).await
    }

    /// Starts on an existing data directory (a restart).
    pub async fn start_in(
        dir: Arc<tempfile::TempDir>,
        f: impl FnOnce(&mut BrokerConfig),
    ) -> TestBroker {
        let mut config = BrokerConfig::default();
        config.listen = vec!["stomp://127.0.0.1:0".into()];
        config.data_dir = dir.path().to_path_buf();
        f(&mut config);
        config.validate().unwrap();
        let shutdown = CancellationToken::new();
        let started = server::start(config, shutdown.clone()).await.unwrap();
        let addr = started.local_addrs()[0];
        let broker = started.broker.clone();
        let task = tokio::spawn(started.serve());
        TestBroker {
            addr,
            broker,
            shutdown,
            task,
            dir,
        }
    }

    /// Graceful stop; waits for the journal to close.
    pub async fn stop(self) -> Arc<tempfile::TempDir> {
        self.shutdown.cancel();
        self.task.await.unwrap();
        self.dir
    }

    /// A raw client logged in as admin/admin.
    pub async fn client(&self) -> Raw {
        Raw::connect(self.addr, "admin", "admin").await
    }
}
