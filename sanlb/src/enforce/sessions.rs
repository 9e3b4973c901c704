//! Ending TCP connections on a gateway, whatever target software holds
//! them: sock_diag `SOCK_DESTROY`, what `ss -K` does (the kernel needs
//! `CONFIG_INET_DIAG_DESTROY=y`; the caller needs CAP_NET_ADMIN).
//!
//! In pair mode a pair moves when its session reconnects: while the
//! director holds the pair's logins, the old gateway ends the pair's
//! connections here; the kernel resets them (the host sees an RST, the
//! target software an aborted socket), the host reconnects to the portal and
//! is redirected to the new gateway.
//!
//! The TCP sockets are dumped with an INET_DIAG request (filtered by the
//! kernel on the local port) and matched here on the local address and the
//! peer's; each match is destroyed by its exact id (addresses, ports,
//! interface and cookie), so a socket that closed and was replaced in
//! between is never hit. IPv4 connections accepted by an IPv6 socket
//! (IPv4-mapped addresses) are found too. Everything runs in the calling
//! thread's network namespace; each netlink read waits at most
//! [`NETLINK_TIMEOUT`].

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagDestroy, SockDiagMessage, TCP_CLOSE, TCP_LISTEN,
    TCP_TIME_WAIT,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

use super::EnforceError;

/// Longest wait for one netlink answer.
pub const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// Most sockets one dump reads (a bound on time and memory).
const MAX_SOCKETS: usize = 1 << 20;

/// One TCP connection on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConnection {
    /// Local address and port (IPv4-mapped addresses as IPv4).
    pub local: SocketAddr,
    /// The peer's address and port.
    pub peer: SocketAddr,
    /// The TCP state (`TCP_ESTABLISHED` = 1, ...; see `tcp_states.h`).
    pub state: u8,
}

/// The connections to `local_ip:local_port` (any local address when
/// `local_ip` is unspecified) from any of `peers`, in every state but
/// LISTEN, TIME_WAIT and CLOSE.
pub fn connections(
    local_ip: IpAddr,
    local_port: u16,
    peers: &[IpAddr],
) -> Result<Vec<TcpConnection>, EnforceError> {
    let mut diag = Diag::open()?;
    Ok(diag
        .matching(local_ip, local_port, peers)?
        .iter()
        .map(connection)
        .collect())
}

/// Ends the connections to `local_ip:local_port` (any local address when
/// `local_ip` is unspecified) from any of `peers`: each is reset at once.
/// Returns how many were ended (connections that closed by themselves in the
/// meantime are not counted). Other connections, other ports and listening
/// sockets are never touched; no peer means nothing to end.
pub fn end_connections(
    local_ip: IpAddr,
    local_port: u16,
    peers: &[IpAddr],
) -> Result<usize, EnforceError> {
    if peers.is_empty() {
        return Ok(0);
    }
    let mut diag = Diag::open()?;
    let mut ended = 0;
    for r in diag.matching(local_ip, local_port, peers)? {
        if diag.destroy(&r)? {
            ended += 1;
            let c = connection(&r);
            tracing::debug!(local = %c.local, peer = %c.peer, "connection ended");
        }
    }
    Ok(ended)
}

fn connection(r: &InetResponse) -> TcpConnection {
    let id = &r.header.socket_id;
    TcpConnection {
        local: SocketAddr::new(id.source_address.to_canonical(), id.source_port),
        peer: SocketAddr::new(id.destination_address.to_canonical(), id.destination_port),
        state: r.header.state,
    }
}

/// A sock_diag netlink socket.
struct Diag {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn os(what: &str, source: std::io::Error) -> EnforceError {
    EnforceError::Os {
        what: what.to_owned(),
        source,
    }
}

impl Diag {
    fn open() -> Result<Diag, EnforceError> {
        let mut socket =
            Socket::new(NETLINK_SOCK_DIAG).map_err(|e| os("opening a sock_diag socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| os("binding a sock_diag socket", e))?;
        socket
            .connect(&NlAddr::new(0, 0))
            .map_err(|e| os("connecting a sock_diag socket", e))?;
        let tv = libc::timeval {
            tv_sec: NETLINK_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: NETLINK_TIMEOUT.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt on a descriptor we own, with a timeval of the
        // size we pass.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(os(
                "setting a sock_diag socket's timeout",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Diag {
            socket,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    fn send<T>(&mut self, flags: u16, payload: T) -> Result<u32, EnforceError>
    where
        T: netlink_packet_core::NetlinkSerializable,
        NetlinkPayload<T>: From<T>,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|e| os("sending a sock_diag request", e))?;
        Ok(self.seq)
    }

    /// Reads the messages answering `seq` and hands each to `each` until it
    /// returns `false` or the dump is done.
    fn receive(
        &mut self,
        seq: u32,
        mut each: impl FnMut(NetlinkPayload<SockDiagMessage>) -> Result<bool, EnforceError>,
    ) -> Result<(), EnforceError> {
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| os("reading a sock_diag answer", e))?;
            let mut at = 0;
            while at < n.min(self.buf.len()) {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| {
                        os(
                            "parsing a sock_diag answer",
                            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                        )
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
                if msg.header.sequence_number != seq {
                    continue; // a late answer to an earlier request
                }
                if !each(msg.payload)? {
                    return Ok(());
                }
            }
        }
    }

    /// The TCP sockets of one family on local port `port` (kernel-filtered).
    fn dump(&mut self, family: u8, port: u16) -> Result<Vec<InetResponse>, EnforceError> {
        let mut socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        socket_id.source_port = port;
        let states = StateFlags::all()
            - StateFlags::from_bits_truncate(1 << TCP_LISTEN | 1 << TCP_TIME_WAIT | 1 << TCP_CLOSE);
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_DUMP,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id,
            }),
        )?;
        let mut out = Vec::new();
        self.receive(seq, |payload| match payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                if out.len() >= MAX_SOCKETS {
                    return Err(os(
                        "dumping TCP sockets",
                        std::io::Error::other(format!("more than {MAX_SOCKETS} sockets")),
                    ));
                }
                out.push(*r);
                Ok(true)
            }
            NetlinkPayload::Done(_) => Ok(false),
            NetlinkPayload::Error(e) => Err(os("dumping TCP sockets", e.to_io())),
            _ => Ok(true),
        })?;
        Ok(out)
    }

    fn matching(
        &mut self,
        local_ip: IpAddr,
        port: u16,
        peers: &[IpAddr],
    ) -> Result<Vec<InetResponse>, EnforceError> {
        let local_ip = local_ip.to_canonical();
        let peers: Vec<IpAddr> = peers.iter().map(|p| p.to_canonical()).collect();
        // IPv4 connections may sit on IPv6 sockets (IPv4-mapped).
        let families: &[u8] = if local_ip.is_ipv4() {
            &[AF_INET, AF_INET6]
        } else {
            &[AF_INET6]
        };
        let mut out = Vec::new();
        for &family in families {
            for r in self.dump(family, port)? {
                let c = connection(&r);
                let local_ok = local_ip.is_unspecified() || c.local.ip() == local_ip;
                if c.local.port() == port && local_ok && peers.contains(&c.peer.ip()) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Destroys one socket by its exact id; `false` if it was gone already.
    fn destroy(&mut self, r: &InetResponse) -> Result<bool, EnforceError> {
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_ACK,
            SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
                family: r.header.family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: r.header.socket_id.clone(),
            })),
        )?;
        let mut result = Ok(false);
        self.receive(seq, |payload| {
            if let NetlinkPayload::Error(e) = payload {
                result = match e.code.map(|c| -c.get()) {
                    None => Ok(true),
                    Some(libc::ENOENT) => Ok(false),
                    Some(libc::EOPNOTSUPP) => Err(os(
                        "destroying a TCP socket (the kernel needs CONFIG_INET_DIAG_DESTROY=y)",
                        e.to_io(),
                    )),
                    Some(_) => Err(os("destroying a TCP socket", e.to_io())),
                };
                return Ok(false);
            }
            Ok(true)
        })?;
        result
    }
}
