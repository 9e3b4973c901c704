//! `sanlb::enforce::end_connections` against real TCP connections in a
//! network namespace of its own (so no other connection of this machine can
//! be hit): the matching connections are reset (both ends see it), every
//! other connection goes on. The iSCSI case (a libiscsi session on tgtd) is
//! in `pairmode.rs`.
//!
//! Run as root: `cargo test -p sanlb --test sessions -- --ignored`.

use std::{
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::Duration,
};

use sanlb::enforce::{connections, end_connections};
use xtask::lab::Netns;

/// Runs `f` on a thread inside `ns`.
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(ns.path()).unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on a namespace descriptor we hold; it changes
            // only this thread's network namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// An echo server: every accepted connection echoes what it reads; the
/// server side's read result (an error when the kernel aborted it) is sent
/// back through the returned channel.
fn echo_server(
    addr: &str,
) -> (
    SocketAddr,
    std::sync::mpsc::Receiver<std::io::Result<usize>>,
) {
    let listener = TcpListener::bind(addr).unwrap();
    let bound = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut buf = [0u8; 64];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => {
                            let _ = tx.send(Ok(0));
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            });
        }
    });
    (bound, rx)
}

fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let ip: IpAddr = from.parse().unwrap();
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    socket.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// The peer of an ended connection sees a reset.
fn was_reset(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4];
    match s.read_exact(&mut buf) {
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(()) => false,
    }
}

#[test]
#[ignore = "privileged: cargo xtask test runs it as root"]
fn ends_only_the_matching_connections() {
    let ns = Netns::unique("sanlb-sess").unwrap();
    // IPv6 on lo too (the lab namespaces start without it).
    ns.sysctl(&[
        ("net.ipv6.conf.all.disable_ipv6", "0"),
        ("net.ipv6.conf.lo.disable_ipv6", "0"),
    ])
    .unwrap();
    in_netns(&ns, || {
        let (data, data_ends) = echo_server("127.0.0.1:3261");
        let (other_port, _other_ends) = echo_server("127.0.0.1:3262");
        let (_, dual_ends) = echo_server("[::]:3263"); // IPv4 arrives IPv4-mapped
        let (v6, v6_ends) = echo_server("[::1]:3264");

        let mut a1 = connect_from("127.0.0.2", data);
        let mut a2 = connect_from("127.0.0.2", data);
        let mut b = connect_from("127.0.0.3", data);
        let mut a_other = connect_from("127.0.0.2", other_port);
        let mut m = connect_from("127.0.0.4", "127.0.0.1:3263".parse().unwrap());
        let mut m_keep = connect_from("127.0.0.5", "127.0.0.1:3263".parse().unwrap());
        let mut six = connect_from("::1", v6);
        for s in [
            &mut a1,
            &mut a2,
            &mut b,
            &mut a_other,
            &mut m,
            &mut m_keep,
            &mut six,
        ] {
            assert!(echoes(s));
        }

        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let seen = connections(local, 3261, &[a]).unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen.iter()
                .all(|c| c.local == data && c.peer.ip() == a && c.state == 1)
        );

        // A peer with no connection, and no peer at all: nothing happens.
        assert_eq!(
            end_connections(local, 3261, &["127.0.0.9".parse().unwrap()]).unwrap(),
            0
        );
        assert_eq!(end_connections(local, 3261, &[]).unwrap(), 0);

        assert_eq!(end_connections(local, 3261, &[a]).unwrap(), 2);
        assert!(was_reset(&mut a1), "the host sees a reset");
        assert!(was_reset(&mut a2));
        // The server's sockets were aborted under it.
        for _ in 0..2 {
            let r = data_ends.recv_timeout(Duration::from_secs(5)).unwrap();
            assert!(r.is_err(), "server side not aborted: {r:?}");
        }
        // Another initiator and another port are untouched.
        assert!(echoes(&mut b));
        assert!(echoes(&mut a_other));
        assert!(connections(local, 3261, &[a]).unwrap().is_empty());
        assert_eq!(end_connections(local, 3261, &[a]).unwrap(), 0, "idempotent");

        // IPv4 on a dual-stack socket, named by its IPv4 addresses.
        assert_eq!(
            end_connections(local, 3263, &["127.0.0.4".parse().unwrap()]).unwrap(),
            1
        );
        assert!(was_reset(&mut m));
        assert!(
            dual_ends
                .recv_timeout(Duration::from_secs(5))
                .unwrap()
                .is_err()
        );
        assert!(echoes(&mut m_keep));

        // IPv6.
        let v6_local: IpAddr = "::1".parse().unwrap();
        assert_eq!(end_connections(v6_local, 3264, &[v6_local]).unwrap(), 1);
        assert!(was_reset(&mut six));
        assert!(
            v6_ends
                .recv_timeout(Duration::from_secs(5))
                .unwrap()
                .is_err()
        );

        // The unspecified local address matches any.
        let mut a3 = connect_from("127.0.0.2", data);
        assert!(echoes(&mut a3));
        assert_eq!(
            end_connections("0.0.0.0".parse().unwrap(), 3261, &[a]).unwrap(),
            1
        );
        assert!(was_reset(&mut a3));
        assert!(echoes(&mut b));
    });
}

#[test]
fn no_peer_means_nothing_to_do() {
    // Returns before opening any netlink socket: no privilege needed.
    assert_eq!(
        end_connections("198.18.1.1".parse().unwrap(), 3261, &[]).unwrap(),
        0
    );
}
