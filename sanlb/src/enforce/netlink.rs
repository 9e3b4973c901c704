//! [`NetlinkOwner`]: storage addresses on one NIC, through rtnetlink.
//!
//! sanlb marks the addresses it adds with its own address protocol number
//! (`IFA_PROTO`, Linux 5.18 and later; iproute2 6.3 and later shows it as
//! `proto 83`). The kernel keeps the marker with the address, so it survives
//! an agent crash or restart with no state file to lose or get out of step,
//! and every other address (the NIC's own, an operator's, another tool's) is
//! recognisable as not sanlb's. On a kernel that drops the attribute,
//! [`NetlinkOwner`] removes the address again and returns
//! [`EnforceError::MarkerUnsupported`], so it never leaves an unmarked address
//! behind.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::CString,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    AddressMessageBuilder, Handle,
    packet_route::{
        address::{
            AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol,
        },
        link::{LinkAttribute, LinkFlags, LinkLayerType},
    },
};
use tokio::task::JoinHandle;

use super::{
    AddressOwner, EnforceError, LinkState, ProbeSpec,
    announce::{Mac, PacketSocket},
    host_prefix_len,
    probe::{self, Nic},
    validate_storage_addr,
};
use crate::proto::{MacAddr, ProbedAddress};

/// Announcement rounds per acquire unless configured: the first one flips the
/// hosts' neighbour entries; the repeats cover a lost frame.
pub const DEFAULT_GARP_COUNT: u32 = 3;
/// Spacing of the rounds unless configured: a repeat lands about when a host's
/// first TCP retransmission (200 ms minimum RTO) would, so a lost first frame
/// costs at most one retransmission.
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(200);
/// sanlb's address protocol number (0x53, ASCII `S`). 0–3 are the kernel's.
pub const DEFAULT_ADDR_PROTO: u8 = 0x53;
/// The largest accepted `--garp-count`.
pub const MAX_GARP_COUNT: u32 = 100;
/// The largest accepted `--garp-interval`.
pub const MAX_GARP_INTERVAL: Duration = Duration::from_secs(10);

/// How a [`NetlinkOwner`] works on its NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerConfig {
    /// The host-facing NIC, in the network namespace where the owner is
    /// created.
    pub iface: String,
    /// Announcement rounds per acquire (`--garp-count`, at most
    /// [`MAX_GARP_COUNT`]). A round is a gratuitous ARP request and reply
    /// (IPv4) or one unsolicited NA (IPv6). 0 announces nothing: hosts then
    /// find the new owner only when their neighbour entry expires (tens of
    /// seconds).
    pub garp_count: u32,
    /// Spacing of the rounds (`--garp-interval`, at most
    /// [`MAX_GARP_INTERVAL`]). The first round is sent before
    /// [`AddressOwner::acquire`] returns, the others in the background.
    pub garp_interval: Duration,
    /// The address protocol number that marks sanlb's addresses (4–255).
    /// Change it only if another tool on the gateway uses 0x53.
    pub proto: u8,
}

impl OwnerConfig {
    /// The operator defaults on `iface`: [`DEFAULT_GARP_COUNT`] rounds
    /// [`DEFAULT_GARP_INTERVAL`] apart, marker [`DEFAULT_ADDR_PROTO`].
    pub fn new(iface: impl Into<String>) -> Self {
        Self {
            iface: iface.into(),
            garp_count: DEFAULT_GARP_COUNT,
            garp_interval: DEFAULT_GARP_INTERVAL,
            proto: DEFAULT_ADDR_PROTO,
        }
    }

    fn validate(&self) -> Result<(), EnforceError> {
        if self.garp_count > MAX_GARP_COUNT {
            return Err(EnforceError::InvalidConfig {
                field: "--garp-count",
                why: format!("{} is more than {MAX_GARP_COUNT}", self.garp_count),
            });
        }
        if self.garp_interval > MAX_GARP_INTERVAL {
            return Err(EnforceError::InvalidConfig {
                field: "--garp-interval",
                why: format!(
                    "{:?} is longer than {MAX_GARP_INTERVAL:?}",
                    self.garp_interval
                ),
            });
        }
        if self.proto <= 3 {
            return Err(EnforceError::InvalidConfig {
                field: "proto",
                why: format!(
                    "{} is one of the kernel's address protocols (0 unspec, 1 kernel_lo, \
                     2 kernel_ra, 3 kernel_ll)",
                    self.proto
                ),
            });
        }
        Ok(())
    }
}

/// Owns storage addresses on one NIC: rtnetlink to add and remove them,
/// gratuitous ARP / unsolicited NA to announce them.
///
/// Create it inside the gateway's network namespace and inside a tokio
/// runtime with IO and time enabled: its sockets belong to that namespace for
/// their whole life, whichever thread uses them later, and its background
/// tasks (the netlink connection, announcement repeats) run on that runtime.
/// Acquire and release calls are serialised. Dropping the owner stops its
/// announcements and leaves its addresses on the NIC (fail-static); the next
/// owner on the NIC finds them through [`AddressOwner::owned`].
#[derive(Debug)]
pub struct NetlinkOwner {
    cfg: OwnerConfig,
    rt: tokio::runtime::Handle,
    handle: Handle,
    connection: JoinHandle<()>,
    packets: Arc<PacketSocket>,
    ops: tokio::sync::Mutex<()>,
    /// Address dumps, one at a time: the kernel refuses a second dump on a
    /// netlink socket while one runs (EBUSY), and reports, probes and
    /// self-probes list addresses from different tasks.
    dumps: tokio::sync::Mutex<()>,
    /// Announcement repeats under way, by address.
    bursts: Mutex<HashMap<IpAddr, JoinHandle<()>>>,
    /// The network namespace it was created in (its inode): probes open
    /// their sockets when they run, and must run there.
    netns: Option<u64>,
}

/// The inode of the calling thread's network namespace.
fn current_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// The NIC as netlink sees it now.
#[derive(Debug, Clone, Copy)]
struct Link {
    index: u32,
    mac: Mac,
    /// `IFF_UP` and `IFF_LOWER_UP` (a carrier).
    up: bool,
}

/// One address configured in the namespace.
#[derive(Debug)]
struct Configured {
    addr: IpAddr,
    prefix_len: u8,
    index: u32,
    proto: Option<u8>,
}

impl NetlinkOwner {
    /// Opens the netlink and packet sockets for `cfg.iface`.
    ///
    /// Errors: [`EnforceError::InvalidConfig`], [`EnforceError::NoSuchInterface`]
    /// (checked in the calling thread's network namespace),
    /// [`EnforceError::NoRuntime`], and [`EnforceError::Os`] without
    /// CAP_NET_RAW / CAP_NET_ADMIN.
    pub fn new(cfg: OwnerConfig) -> Result<Self, EnforceError> {
        cfg.validate()?;
        let no_such = || EnforceError::NoSuchInterface(cfg.iface.clone());
        let name = CString::new(cfg.iface.as_bytes()).map_err(|_| no_such())?;
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            return Err(no_such());
        }
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| EnforceError::NoRuntime(cfg.iface.clone()))?;
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| EnforceError::Os {
                what: "opening a netlink socket".into(),
                source,
            })?;
        let packets = PacketSocket::open().map_err(|source| EnforceError::Os {
            what: "opening a packet socket for announcements (needs CAP_NET_RAW)".into(),
            source,
        })?;
        let connection = rt.spawn(connection);
        Ok(Self {
            cfg,
            rt,
            handle,
            connection,
            packets: Arc::new(packets),
            ops: tokio::sync::Mutex::new(()),
            dumps: tokio::sync::Mutex::new(()),
            bursts: Mutex::new(HashMap::new()),
            netns: current_netns(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &OwnerConfig {
        &self.cfg
    }

    async fn link(&self) -> Result<Link, EnforceError> {
        let iface = &self.cfg.iface;
        let mut links = pin!(self.handle.link().get().match_name(iface.clone()).execute());
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(EnforceError::NoSuchInterface(iface.clone())),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                return Err(EnforceError::NoSuchInterface(iface.clone()));
            }
            Err(e) => return Err(netlink_error(format!("looking up interface {iface:?}"), e)),
        };
        let mac = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(mac) => Mac::try_from(mac.as_slice()).ok(),
            _ => None,
        });
        let flags = msg.header.flags;
        match mac {
            Some(mac) if msg.header.link_layer_type == LinkLayerType::Ether => Ok(Link {
                index: msg.header.index,
                mac,
                up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
            }),
            _ => Err(EnforceError::NotEthernet(iface.clone())),
        }
    }

    /// Every address configured in the namespace, on any interface.
    async fn configured(&self) -> Result<Vec<Configured>, EnforceError> {
        let _one_dump = self.dumps.lock().await;
        let mut dump = pin!(self.handle.address().get().execute());
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(|e| netlink_error("listing addresses".into(), e))?
        {
            let (mut local, mut address, mut proto) = (None, None, None);
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
                    _ => {}
                }
            }
            // IFA_LOCAL is the interface's own address when present (IFA_ADDRESS
            // is then the peer of a point-to-point link); IPv6 usually sends
            // only IFA_ADDRESS.
            if let Some(addr) = local.or(address) {
                out.push(Configured {
                    addr,
                    prefix_len: msg.header.prefix_len,
                    index: msg.header.index,
                    proto,
                });
            }
        }
        Ok(out)
    }

    fn is_ours(&self, c: &Configured, link: &Link) -> bool {
        c.index == link.index && c.proto == Some(self.cfg.proto)
    }

    /// The error for `addr` configured where sanlb must not touch it.
    async fn in_use(&self, addr: IpAddr, index: u32) -> EnforceError {
        let mut links = pin!(self.handle.link().get().match_index(index).execute());
        let name = match links.try_next().await {
            Ok(Some(msg)) => msg.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            }),
            _ => None,
        };
        EnforceError::InUse {
            addr,
            iface: name.unwrap_or_else(|| format!("interface #{index}")),
            proto: self.cfg.proto,
        }
    }

    async fn add(&self, link: &Link, addr: IpAddr) -> Result<(), EnforceError> {
        let prefix_len = host_prefix_len(addr);
        let mut req = self.handle.address().add(link.index, addr, prefix_len);
        let msg = req.message_mut();
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                self.cfg.proto,
            )));
        if addr.is_ipv6() {
            // No duplicate address detection: the address serves at once (the
            // controller's break-before-make is what keeps it unique).
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(|e| {
            netlink_error(
                format!("adding {addr}/{prefix_len} to {}", self.cfg.iface),
                e,
            )
        })
    }

    /// Removes one address; one that is gone already counts as removed.
    async fn del(&self, c: &Configured) -> Result<(), EnforceError> {
        let msg: AddressMessage = match c.addr {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(c.index)
                .address(a, c.prefix_len)
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(c.index)
                .address(a, c.prefix_len)
                .build(),
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {
                Ok(())
            }
            Err(e) => Err(netlink_error(
                format!(
                    "removing {}/{} from {}",
                    c.addr, c.prefix_len, self.cfg.iface
                ),
                e,
            )),
        }
    }

    /// Stops the announcement repeats of `addr` and waits until they cannot
    /// send any more.
    async fn stop_burst(&self, addr: IpAddr) {
        let task = self
            .bursts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&addr);
        if let Some(task) = task {
            task.abort();
            // Cancelled or finished: either way it sends nothing after this.
            let _ = task.await;
        }
    }

    /// Sends announcement rounds 2..=count in the background.
    fn spawn_burst(&self, addr: IpAddr, link: Link) {
        let packets = Arc::clone(&self.packets);
        let (count, interval) = (self.cfg.garp_count, self.cfg.garp_interval);
        let iface = self.cfg.iface.clone();
        let task = self.rt.spawn(async move {
            for round in 2..=count {
                tokio::time::sleep(interval).await;
                if let Err(error) = packets.announce(link.index, link.mac, addr) {
                    tracing::warn!(%iface, %addr, round, %error, "announcement round not sent");
                }
            }
        });
        let mut bursts = self.bursts.lock().unwrap_or_else(PoisonError::into_inner);
        bursts.retain(|_, t| !t.is_finished());
        bursts.insert(addr, task);
    }

    /// Returns whether the address was added (false: it was ours already).
    async fn acquire_locked(&self, addr: IpAddr) -> Result<bool, EnforceError> {
        let link = self.link().await?;
        let mut ours = false;
        for c in self.configured().await?.iter().filter(|c| c.addr == addr) {
            if !self.is_ours(c, &link) {
                return Err(self.in_use(addr, c.index).await);
            }
            ours = true;
        }
        let added = if ours {
            false
        } else {
            self.add(&link, addr).await?;
            self.check_marker(&link, addr).await?;
            true
        };
        self.stop_burst(addr).await;
        if self.cfg.garp_count > 0 {
            if let Err(source) = self.packets.announce(link.index, link.mac, addr) {
                if added {
                    self.roll_back(&link, addr).await;
                }
                return Err(EnforceError::Os {
                    what: format!("announcing {addr} on {}", self.cfg.iface),
                    source,
                });
            }
            if self.cfg.garp_count > 1 {
                self.spawn_burst(addr, link);
            }
        }
        Ok(added)
    }

    /// Kernels before 5.18 ignore IFA_PROTO: an address added there would be
    /// invisible to [`AddressOwner::owned`], so it is removed again.
    async fn check_marker(&self, link: &Link, addr: IpAddr) -> Result<(), EnforceError> {
        let now = self.configured().await?;
        match now.iter().find(|c| c.addr == addr && c.index == link.index) {
            Some(c) if c.proto == Some(self.cfg.proto) => Ok(()),
            Some(c) => {
                self.del(c).await?;
                Err(EnforceError::MarkerUnsupported {
                    addr,
                    iface: self.cfg.iface.clone(),
                })
            }
            None => Err(EnforceError::Os {
                what: format!(
                    "{addr} vanished from {} right after it was added",
                    self.cfg.iface
                ),
                source: io::ErrorKind::NotFound.into(),
            }),
        }
    }

    /// Removes an address this call added, after a later step failed.
    async fn roll_back(&self, link: &Link, addr: IpAddr) {
        let c = Configured {
            addr,
            prefix_len: host_prefix_len(addr),
            index: link.index,
            proto: Some(self.cfg.proto),
        };
        if let Err(error) = self.del(&c).await {
            tracing::error!(iface = %self.cfg.iface, %addr, %error, "could not roll back an acquire");
        }
    }

    /// Returns whether an address was removed (false: it was not there).
    async fn release_locked(&self, addr: IpAddr) -> Result<bool, EnforceError> {
        self.stop_burst(addr).await;
        let link = self.link().await?;
        let configured = self.configured().await?;
        let mut ours = None;
        for c in configured
            .iter()
            .filter(|c| c.addr == addr && c.index == link.index)
        {
            if !self.is_ours(c, &link) {
                return Err(self.in_use(addr, c.index).await);
            }
            ours = Some(c);
        }
        match ours {
            Some(c) => self.del(c).await.map(|()| true),
            None => Ok(false),
        }
    }
}

impl AddressOwner for NetlinkOwner {
    async fn owned(&self) -> Result<BTreeSet<IpAddr>, EnforceError> {
        let link = self.link().await?;
        Ok(self
            .configured()
            .await?
            .into_iter()
            .filter(|c| self.is_ours(c, &link))
            .map(|c| c.addr)
            .collect())
    }

    async fn acquire(&self, addr: IpAddr) -> Result<(), EnforceError> {
        let start = Instant::now();
        let iface = &self.cfg.iface;
        let result = match validate_storage_addr(addr) {
            Ok(()) => {
                let _serial = self.ops.lock().await;
                self.acquire_locked(addr).await
            }
            Err(refused) => Err(refused),
        };
        match result {
            Ok(added) => {
                let took = start.elapsed();
                tracing::info!(
                    %iface,
                    %addr,
                    added,
                    announce_rounds = self.cfg.garp_count,
                    elapsed_us = took.as_micros() as u64,
                    "acquired storage address"
                );
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%iface, %addr, %error, "acquire failed");
                Err(error)
            }
        }
    }

    async fn release(&self, addr: IpAddr) -> Result<(), EnforceError> {
        let start = Instant::now();
        let iface = &self.cfg.iface;
        let result = match validate_storage_addr(addr) {
            Ok(()) => {
                let _serial = self.ops.lock().await;
                self.release_locked(addr).await
            }
            Err(refused) => Err(refused),
        };
        match result {
            Ok(removed) => {
                let took = start.elapsed();
                tracing::info!(
                    %iface,
                    %addr,
                    removed,
                    elapsed_us = took.as_micros() as u64,
                    "released storage address"
                );
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%iface, %addr, %error, "release failed");
                Err(error)
            }
        }
    }

    async fn link(&self) -> Result<LinkState, EnforceError> {
        let link = self.link().await?;
        Ok(LinkState {
            up: link.up,
            mac: Some(MacAddr(link.mac)),
        })
    }

    async fn probe(&self, spec: &ProbeSpec) -> Result<Vec<ProbedAddress>, EnforceError> {
        for a in &spec.addrs {
            validate_storage_addr(*a)?;
        }
        if current_netns() != self.netns {
            return Err(EnforceError::Os {
                what: format!(
                    "probing on {}: called from another network namespace than the owner's",
                    self.cfg.iface
                ),
                source: io::ErrorKind::InvalidInput.into(),
            });
        }
        let link = self.link().await?;
        // The NIC's own addresses (not sanlb's) are the sources of the
        // service checks: a global one of each family.
        let own = self.configured().await?;
        let own = own
            .iter()
            .filter(|c| c.index == link.index && c.proto != Some(self.cfg.proto));
        let mut nic = Nic {
            index: link.index,
            mac: link.mac,
            own_v4: None,
            own_v6: None,
        };
        for c in own {
            match c.addr {
                IpAddr::V4(a) if nic.own_v4.is_none() && !a.is_loopback() => nic.own_v4 = Some(a),
                IpAddr::V6(a) if nic.own_v6.is_none() && validate_storage_addr(c.addr).is_ok() => {
                    nic.own_v6 = Some(a)
                }
                _ => {}
            }
        }
        probe::probe(nic, spec)
            .await
            .map_err(|source| EnforceError::Os {
                what: format!(
                    "probing {} addresses on {}",
                    spec.addrs.len(),
                    self.cfg.iface
                ),
                source,
            })
    }

    async fn reannounce(&self, addr: IpAddr) -> Result<(), EnforceError> {
        validate_storage_addr(addr)?;
        let _serial = self.ops.lock().await;
        let link = self.link().await?;
        let held = self
            .configured()
            .await?
            .iter()
            .any(|c| c.addr == addr && self.is_ours(c, &link));
        if !held || self.cfg.garp_count == 0 {
            return Ok(());
        }
        self.stop_burst(addr).await;
        self.packets
            .announce(link.index, link.mac, addr)
            .map_err(|source| EnforceError::Os {
                what: format!("announcing {addr} on {}", self.cfg.iface),
                source,
            })?;
        if self.cfg.garp_count > 1 {
            self.spawn_burst(addr, link);
        }
        tracing::info!(iface = %self.cfg.iface, %addr, "announced again");
        Ok(())
    }

    async fn remove_unmanaged(&self, addr: IpAddr) -> Result<(), EnforceError> {
        validate_storage_addr(addr)?;
        let _serial = self.ops.lock().await;
        let link = self.link().await?;
        let iface = self.cfg.iface.clone();
        let refuse = |why: String| EnforceError::NotRemovable {
            addr,
            iface: iface.clone(),
            why,
        };
        let configured = self.configured().await?;
        let Some(c) = configured
            .iter()
            .find(|c| c.addr == addr && c.index == link.index)
        else {
            return Ok(());
        };
        if c.prefix_len != host_prefix_len(addr) {
            return Err(refuse(format!(
                "configured as /{}, not a host prefix (it may be the NIC's own address)",
                c.prefix_len
            )));
        }
        self.del(c).await?;
        tracing::error!(
            %iface,
            %addr,
            proto = ?c.proto,
            "REMOVED an address sanlb does not manage, on the controller's order: another \
             gateway is assigned it and both answered for it"
        );
        Ok(())
    }
}

impl Drop for NetlinkOwner {
    fn drop(&mut self) {
        for task in self
            .bursts
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            task.abort();
        }
        self.connection.abort();
    }
}

fn netlink_error(what: String, e: rtnetlink::Error) -> EnforceError {
    let source = match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other),
    };
    EnforceError::Os { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cfg = OwnerConfig::new("eth0");
        assert_eq!(cfg.iface, "eth0");
        assert_eq!(cfg.garp_count, 3);
        assert_eq!(cfg.garp_interval, Duration::from_millis(200));
        assert_eq!(cfg.proto, 0x53);
        cfg.validate().unwrap();
    }

    #[test]
    fn config_limits() {
        let bad = |cfg: OwnerConfig, field: &str| match cfg.validate() {
            Err(EnforceError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{cfg:?}: expected InvalidConfig({field}), got {other:?}"),
        };
        bad(
            OwnerConfig {
                garp_count: 101,
                ..OwnerConfig::new("eth0")
            },
            "--garp-count",
        );
        bad(
            OwnerConfig {
                garp_interval: Duration::from_millis(10_001),
                ..OwnerConfig::new("eth0")
            },
            "--garp-interval",
        );
        for proto in 0..=3 {
            bad(
                OwnerConfig {
                    proto,
                    ..OwnerConfig::new("eth0")
                },
                "proto",
            );
        }
        for ok in [
            OwnerConfig {
                garp_count: 0,
                ..OwnerConfig::new("eth0")
            },
            OwnerConfig {
                garp_count: 100,
                garp_interval: Duration::ZERO,
                ..OwnerConfig::new("eth0")
            },
            OwnerConfig {
                garp_interval: MAX_GARP_INTERVAL,
                proto: 4,
                ..OwnerConfig::new("eth0")
            },
        ] {
            ok.validate().unwrap();
        }
    }

    #[test]
    fn missing_interface_is_refused_before_any_socket() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for name in [
            "sanlb-no-such0",
            "",
            "bad\0name",
            "a-name-much-longer-than-ifnamsiz",
        ] {
            let err = rt
                .block_on(async { NetlinkOwner::new(OwnerConfig::new(name)) })
                .unwrap_err();
            assert!(
                matches!(&err, EnforceError::NoSuchInterface(n) if n == name),
                "{name:?}: {err:?}"
            );
        }
    }

    #[test]
    fn needs_a_runtime() {
        // "lo" exists in every network namespace.
        let err = NetlinkOwner::new(OwnerConfig::new("lo")).unwrap_err();
        assert!(
            matches!(err, EnforceError::NoRuntime(ref n) if n == "lo"),
            "{err:?}"
        );
    }
}
