//! A loopback TCP proxy for fault tests: it forwards bytes both ways until
//! a test freezes it (the peers see live connections that go silent — a
//! crashed host or a cut cable, without the FIN a killed process sends) or
//! cuts every connection at once.
//!
//! ```no_run
//! # async fn demo(upstream: std::net::SocketAddr) -> std::io::Result<()> {
//! use waypost_integration::proxy::Proxy;
//!
//! let proxy = Proxy::start(upstream).await?;
//! // … connect to proxy.addr() …
//! proxy.freeze(); // now silent in both directions
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::gate::{Gate, GatedIo};

/// A running proxy; stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    gate: Arc<Gate>,
    task: tokio::task::JoinHandle<()>,
    cut: Arc<tokio::sync::Notify>,
    connect_delay: Arc<parking_lot::Mutex<std::time::Duration>>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let gate = Arc::new(Gate::default());
        let cut = Arc::new(tokio::sync::Notify::new());
        let connect_delay = Arc::default();
        let task = tokio::spawn(run(
            listener,
            upstream,
            gate.clone(),
            cut.clone(),
            Arc::clone(&connect_delay),
        ));
        Ok(Proxy {
            addr,
            gate,
            task,
            cut,
            connect_delay,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding in both directions, keeping the sockets open.
    pub fn freeze(&self) {
        self.gate.set_frozen(true);
    }

    /// Resumes forwarding.
    pub fn thaw(&self) {
        self.gate.set_frozen(false);
    }

    /// Connections accepted from now on reach the upstream only after
    /// `delay` (a slow network or a busy server's accept queue); existing
    /// ones are untouched.
    pub fn set_connect_delay(&self, delay: std::time::Duration) {
        *self.connect_delay.lock() = delay;
    }

    /// Closes every proxied connection at once (both peers see the
    /// connection end), as when a peer process is killed.
    pub fn cut(&self) {
        self.cut.notify_waiters();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    listener: TcpListener,
    upstream: SocketAddr,
    gate: Arc<Gate>,
    cut: Arc<tokio::sync::Notify>,
    connect_delay: Arc<parking_lot::Mutex<std::time::Duration>>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let gate = gate.clone();
                let delay = *connect_delay.lock();
                connections.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut client = GatedIo::new(client, gate.clone());
                    let mut server = GatedIo::new(server, gate);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
            _ = cut.notified() => connections.abort_all(),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
