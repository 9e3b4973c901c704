//! Looking at a namespace from outside the code under test: its addresses
//! (with the address protocol, which iproute2 6.1 does not print), its
//! neighbour table, and a TCP service that answers with the gateway's name.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressProtocol};
use serde_json::Value;

use crate::{Mac, parse_mac, segment::Node};

/// The TCP port of the name service (the iSCSI port: what hosts would use).
pub const NAME_PORT: u16 = 3260;

/// An address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelAddr {
    /// The interface it is on.
    pub ifname: String,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// IFA_PROTO; None when 0 (the kernel omits it).
    pub proto: Option<u8>,
    /// Added without duplicate address detection.
    pub nodad: bool,
}

/// Every address of the node's namespace, sorted.
pub fn addresses(node: &Node) -> Vec<KernelAddr> {
    let mut out = node.rt.run(async {
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink socket");
        let conn = tokio::spawn(conn);
        let mut names = std::collections::HashMap::new();
        let mut links = handle.link().get().execute();
        while let Some(link) = links.try_next().await.expect("listing links") {
            for a in link.attributes {
                if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = a {
                    names.insert(link.header.index, n);
                }
            }
        }
        let mut out = Vec::new();
        let mut dump = handle.address().get().execute();
        while let Some(msg) = dump.try_next().await.expect("listing addresses") {
            let (mut local, mut address, mut proto, mut flags) = (None, None, None, None);
            for a in &msg.attributes {
                match a {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
                    AddressAttribute::Flags(f) => flags = Some(*f),
                    _ => {}
                }
            }
            out.push(KernelAddr {
                ifname: names.get(&msg.header.index).cloned().unwrap_or_default(),
                addr: local.or(address).expect("an address"),
                prefix_len: msg.header.prefix_len,
                proto,
                nodad: flags.is_some_and(|f| f.contains(AddressFlags::Nodad)),
            });
        }
        conn.abort();
        out
    });
    out.sort();
    out
}

/// The addresses of one interface.
pub fn addresses_on(node: &Node, ifname: &str) -> Vec<KernelAddr> {
    addresses(node)
        .into_iter()
        .filter(|a| a.ifname == ifname)
        .collect()
}

/// Adds an address with an address protocol other than sanlb's, as another
/// tool would (iproute2 6.1 cannot set one).
pub fn add_foreign_addr(node: &Node, ifname: &'static str, addr: IpAddr, proto: u8) {
    node.rt.run(async move {
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink socket");
        let conn = tokio::spawn(conn);
        let mut links = handle.link().get().match_name(ifname.to_owned()).execute();
        let link = links.try_next().await.expect("link").expect("link exists");
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        let mut req = handle.address().add(link.header.index, addr, prefix);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(proto)));
        req.execute().await.expect("adding a foreign address");
        conn.abort();
    });
}

/// The MAC the node's neighbour table has for `ip` on eth0, if any.
pub fn neighbour(node: &Node, ip: IpAddr) -> Option<Mac> {
    let out = node.ip(&["-j", "neigh", "show", "to", &ip.to_string(), "dev", "eth0"]);
    let v: Value =
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).expect("ip -j");
    v.as_array()?
        .iter()
        .find_map(|e| e.get("lladdr")?.as_str().and_then(parse_mac))
}

/// The state of the node's neighbour entry for `ip` on eth0 ("REACHABLE",
/// "STALE", ...; "none" without an entry).
pub fn neighbour_state(node: &Node, ip: IpAddr) -> String {
    let out = node.ip(&["-j", "neigh", "show", "to", &ip.to_string(), "dev", "eth0"]);
    let v: Value =
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).expect("ip -j");
    let states = v
        .as_array()
        .and_then(|a| a.first())
        .and_then(|e| e.get("state"))
        .and_then(Value::as_array);
    match states {
        Some(s) => s
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        None => "none".into(),
    }
}

/// Waits (bounded by `limit`) until the node's neighbour entry for `ip` is
/// `want`; returns how long it took, or None.
pub fn wait_neighbour(node: &Node, ip: IpAddr, want: Mac, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if neighbour(node, ip) == Some(want) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Serves the gateway's name on [`NAME_PORT`] (IPv4 and IPv6) until the
/// node's runtime is dropped.
pub fn serve_name(node: &Node) {
    let name = node.name.clone();
    let listener = node.rt.run(async {
        tokio::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, NAME_PORT))
            .await
            .expect("binding the name service")
    });
    node.rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // A name is a few bytes: one write goes out whole.
            if stream.writable().await.is_ok() {
                let _ = stream.try_write(name.as_bytes());
            }
        }
    });
}

/// One connection to `addr`'s name service, within `timeout`: the name that
/// answered, or None.
pub async fn ask_name(addr: IpAddr, timeout: Duration) -> Option<String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(SocketAddr::new(addr, NAME_PORT))
            .await
            .ok()?;
        let mut buf = [0u8; 16];
        let mut len = 0;
        loop {
            stream.readable().await.ok()?;
            match stream.try_read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    if len == buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        String::from_utf8(buf[..len].to_vec()).ok()
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

/// Connects again and again (each attempt at most `attempt`) until `want`
/// answers; returns when that happened and the other answers seen on the
/// way, or None after `limit`.
pub async fn reconnect_until(
    addr: IpAddr,
    want: impl Into<String>,
    attempt: Duration,
    limit: Duration,
) -> (Option<Instant>, Vec<String>) {
    let want = want.into();
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < limit {
        let tried = Instant::now();
        match ask_name(addr, attempt).await {
            Some(name) if name == want => return (Some(Instant::now()), seen),
            Some(name) => seen.push(name),
            None => {}
        }
        // An attempt that failed fast (unreachable) must not spin.
        if let Some(rest) = Duration::from_millis(20).checked_sub(tried.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    (None, seen)
}
