//! A fault-injecting TCP proxy on loopback, one per node, between a worker and the cluster.
//!
//! `cut()` behaves like a partition, not like a refused connection: bytes stop flowing on open
//! connections and new connections are accepted but get no answer. `heal()` closes what was open
//! during the cut (as if it had timed out) and lets new connections through again.
#![allow(dead_code)]
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: String,
    cut: Arc<watch::Sender<bool>>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *cut.borrow_and_update() {
            let _ = cut.wait_for(|c| !*c).await;
            return;
        }
        tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if *cut.borrow() {
                        // Lost in the partition.
                        continue;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = cut.changed() => {}
        }
    }
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, _) = watch::channel(false);
        let cut = Arc::new(tx);
        let c = cut.clone();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let o = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut rx = c.subscribe();
                let target = target.clone();
                let open = o.clone();
                tokio::spawn(async move {
                    if *rx.borrow_and_update() {
                        // Accepted into the void; closed when the cut heals.
                        let _ = rx.wait_for(|c| !*c).await;
                        drop(inbound);
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let a = tokio::spawn(pipe(ir, ow, rx.clone()));
                    let b = tokio::spawn(pipe(or, iw, rx));
                    let _ = tokio::join!(a, b);
                    open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Proxy {
            addr,
            cut,
            open,
            task,
        }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Connections relayed to the node right now.
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One proxy in front of each address.
pub async fn proxies(addrs: &[String]) -> Vec<Proxy> {
    let mut v = Vec::new();
    for a in addrs {
        v.push(Proxy::start(a.clone()).await);
    }
    v
}
