//! Listening sockets and the accept loop.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::{
    Shared, conn,
    metrics::{bump, drop_one},
};

const BACKLOG: i32 = 1024;

/// A listening socket on `addr` with SO_REUSEADDR (a restarted portal binds
/// again while old connections linger in TIME_WAIT) and IP_FREEBIND /
/// IPV6_FREEBIND (the address may be acquired later). A specific IPv6
/// address is IPv6-only; the unspecified `[::]` takes IPv4 too.
pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    match addr.ip() {
        IpAddr::V4(_) => socket.set_freebind_v4(true)?,
        IpAddr::V6(ip) => {
            socket.set_only_v6(!ip.is_unspecified())?;
            socket.set_freebind_v6(true)?;
        }
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "portal accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&shared, peer.ip()) else {
            bump(&shared.counters.connections_refused);
            tracing::debug!(%peer, "portal full: connection closed");
            continue; // dropping the stream closes it
        };
        bump(&shared.counters.connections);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            serve(stream, peer, &shared).await;
            drop(slot);
        });
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>) {
    let local = match stream.local_addr() {
        Ok(a) => SocketAddr::new(a.ip().to_canonical(), a.port()),
        Err(_) => return,
    };
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let _ = stream.set_nodelay(true);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        () = conn::serve(stream, local, peer, shared) => {}
        _ = shutdown.wait_for(|&down| down) => {}
    }
}

/// A connection's place in the caps; given back on drop.
struct Slot {
    shared: Arc<Shared>,
    peer: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Slot {
    fn take(shared: &Arc<Shared>, peer: IpAddr) -> Option<Slot> {
        let permit = Arc::clone(&shared.slots).try_acquire_owned().ok()?;
        let peer = peer.to_canonical();
        {
            let mut per_peer = shared.per_peer.lock().expect("per-peer lock");
            let n = per_peer.entry(peer).or_insert(0);
            if *n >= shared.config.max_connections_per_peer {
                return None;
            }
            *n += 1;
        }
        bump(&shared.counters.connections_active);
        Some(Slot {
            shared: Arc::clone(shared),
            peer,
            _permit: permit,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop_one(&self.shared.counters.connections_active);
        let mut per_peer = self.shared.per_peer.lock().expect("per-peer lock");
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}
