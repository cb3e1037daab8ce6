//! Helpers shared by the transport's integration tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards connections to a target and counts them; can cut every forwarded connection.
pub struct CountingProxy {
    pub address: String,
    accepted: Arc<AtomicUsize>,
    forwards: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target: &str) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let forwards = Arc::new(Mutex::new(Vec::new()));
        let target = target.to_string();
        let task = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            let forwards = Arc::clone(&forwards);
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        continue;
                    };
                    let forward = tokio::spawn(async move {
                        drop(tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await);
                    });
                    forwards.lock().push(forward);
                }
            }
        });
        CountingProxy {
            address,
            accepted,
            forwards,
            task,
        }
    }

    pub fn connections_accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Cuts every connection forwarded so far (both sockets close).
    pub fn sever_all(&self) {
        for forward in self.forwards.lock().drain(..) {
            forward.abort();
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.sever_all();
    }
}
