//! A TCP proxy that can cut or stall every connection through it, refuse new ones, or
//! send new ones elsewhere (a failover).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

use crate::servers::{self, AMQP_PORT};

/// A TCP proxy in front of a server (RabbitMQ, PostgreSQL) that the test controls: it can cut every
/// connection through it, stall them (a black hole: nothing moves, nothing closes), or
/// refuse new ones (a node that went away), or move to another server
/// ([`FaultyProxy::switch_to`]: a virtual IP or a proxy after a failover). Two proxies in
/// front of one broker make two "nodes" of a cluster.
pub struct FaultyProxy {
    /// The local port to connect to instead of the server's.
    pub port: u16,
    /// Where new connections go.
    upstream: Arc<Mutex<SocketAddr>>,
    cut: broadcast::Sender<()>,
    stalled: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl FaultyProxy {
    /// Listens on a free local port and forwards every connection to the RabbitMQ of
    /// `AMQP_URL`; [`FaultyProxy::amqp_url`] is the way through.
    pub async fn to_broker() -> anyhow::Result<Self> {
        Self::in_front_of(&servers::amqp_url()).await
    }

    /// Listens on a free local port and forwards every connection to the broker of
    /// `amqp_url` (its host and port; 5672 when it names none).
    pub async fn in_front_of(amqp_url: &str) -> anyhow::Result<Self> {
        let upstream = servers::address(amqp_url, AMQP_PORT)
            .ok_or_else(|| anyhow::anyhow!("the AMQP URL names no host"))?;
        let upstream = tokio::net::lookup_host(&upstream)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("the AMQP URL names no address: {upstream}"))?;
        Self::start(upstream).await
    }

    /// Listens on a free local port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, _) = broadcast::channel(4);
        let stalled = Arc::new(AtomicBool::new(false));
        let refusing = Arc::new(AtomicBool::new(false));
        let (cut_tx, stalled_flag) = (cut.clone(), Arc::clone(&stalled));
        let refusing_flag = Arc::clone(&refusing);
        let open = Arc::new(AtomicUsize::new(0));
        let open_count = Arc::clone(&open);
        let refused = Arc::new(AtomicUsize::new(0));
        let refused_count = Arc::clone(&refused);
        let upstream = Arc::new(Mutex::new(upstream));
        let current = Arc::clone(&upstream);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refusing_flag.load(Ordering::SeqCst) {
                    drop(client); // closed before a byte reaches the server
                    refused_count.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                // Subscribed before the upstream is read: a switch in between cuts
                // this connection, so none stays on the old server.
                let mut cut_rx = cut_tx.subscribe();
                let upstream = *current.lock().unwrap_or_else(|e| e.into_inner());
                let stalled = Arc::clone(&stalled_flag);
                let open = Arc::clone(&open_count);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // The cut is looked at first: a pump whose stall just ended must
                    // not forward what it held back (an ack, say) after the cut.
                    tokio::select! {
                        biased;
                        _ = cut_rx.recv() => {}
                        _ = pump(client_read, server_write, Arc::clone(&stalled)) => {}
                        _ = pump(server_read, client_write, stalled) => {}
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            port,
            upstream,
            cut,
            stalled,
            refusing,
            open,
            refused,
        })
    }

    /// `AMQP_URL` (its user, password and vhost) with the proxy in place of the server.
    pub fn amqp_url(&self) -> String {
        let mut url = url::Url::parse(&servers::amqp_url())
            .unwrap_or_else(|_| url::Url::parse(servers::DEFAULT_AMQP_URL).expect("a URL"));
        // An AMQP URL has a host, so both setters succeed.
        let _ = url.set_host(Some("127.0.0.1"));
        let _ = url.set_port(Some(self.port));
        url.to_string()
    }

    /// Drops every connection through the proxy, as a network failure would. Bytes a
    /// stall held back are dropped with them, even if the stall ends right after.
    pub fn cut_all(&self) {
        let _ = self.cut.send(());
    }

    /// Sends every new connection to `upstream` from now on, and cuts those through to
    /// the old one, as a virtual IP moved to a promoted standby, or a proxy told of
    /// it, would: clients reconnect and find the new server at the same address.
    pub fn switch_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = upstream;
        self.cut_all();
    }

    /// Where new connections go: the server given at the start, or the last
    /// [`FaultyProxy::switch_to`].
    pub fn upstream(&self) -> SocketAddr {
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The local port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// While stalled, no byte moves in either direction and no socket closes.
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }

    /// Connections through the proxy now: which "node" a client is on.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections refused so far (see [`FaultyProxy::refuse`]): a client's attempts
    /// to reach a node that is away.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// While refusing, a new connection is closed as soon as it is accepted, before it
    /// reaches the server; connections already through are left alone. With
    /// [`FaultyProxy::cut_all`], the node behind the proxy is gone.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}
