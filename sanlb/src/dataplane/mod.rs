//! Loading, attaching and reading the eBPF counting programs.
//!
//! This is the only module of the product that talks to aya.
//! [`Dataplane::attach`] loads the embedded object, writes the iSCSI port
//! bitmap, attaches a counter on ingress and TC on egress (TCX on kernels
//! ≥ 6.6), and pins the maps under `<pin dir>` (default
//! `/sys/fs/bpf/sanlb/<iface>/`).
//!
//! The ingress hook is chosen per NIC ([`choose_ingress`]): native (driver)
//! XDP on a NIC with a bus device, whose driver runs XDP before any skb is
//! built; TC ingress on a virtual NIC (veth and the like), where native XDP
//! costs most of the throughput (veth copies every packet into an XDP buffer
//! and its peer loses GSO/TSO) and generic XDP would count GRO-merged packets;
//! TC ingress also where the driver refuses native XDP. [`XdpAttachMode`]
//! forces a hook. The choice is recorded in a pinned map that `sanlb counters` shows.
//! [`Programs`] is the same object loaded but attached nowhere, which the
//! test harness of the `sanlb-test` crate runs with `BPF_PROG_TEST_RUN`.
//! [`PinnedMaps`] reads those pins from any process, which is how
//! `sanlb counters` and `bpftool` see the same numbers the agent reports.

use std::{
    collections::HashMap,
    fmt,
    fs::{self, File},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use sanlb_common::{
    ATTACH_MAP, AttachInfo, FAMILY_IPV4, FAMILY_IPV6, FLOWS4_MAP, FLOWS6_MAP, FLOWSETS4_MAP,
    FLOWSETS6_MAP, FlowCounters, FlowKey4, FlowKey6, FlowSet4, FlowSet6, HOOK_EGRESS, HOOK_INGRESS,
    HookStats, INGRESS_TC, INGRESS_XDP_DRIVER, INGRESS_XDP_GENERIC, PORT_BITMAP_WORDS,
    PORT_BITS_GLOBAL, PORT_ONLY_GLOBAL, PORTS_MAP, PortBitmap, REASON_DRIVER_REFUSED,
    REASON_FORCED, REASON_NATIVE_NIC, REASON_VIRTUAL_NIC, SETS_USED_MAP, STATS_MAP, SetsUsed,
    TC_INGRESS_PROG, TC_PROG, XDP_PROG,
};
use serde::Serialize;

/// The counting programs, built by `build.rs` from `sanlb-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sanlb"));

/// Where pins live unless the operator says otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/sanlb";
/// Directory of the per-NIC agent locks.
pub const LOCK_DIR: &str = "/run/sanlb";
/// File names of the pinned maps inside the pin directory: the per-CPU sets
/// of IPv4 pairs.
pub const PIN_FLOWSETS4: &str = "flowsets4";
/// IPv4 flows (pairs of full sets).
pub const PIN_FLOWS4: &str = "flows4";
/// The per-CPU sets of IPv6 pairs.
pub const PIN_FLOWSETS6: &str = "flowsets6";
/// IPv6 flows.
pub const PIN_FLOWS6: &str = "flows6";
/// Which flow sets hold pairs.
pub const PIN_SETS_USED: &str = "sets_used";
/// Per-hook statistics.
pub const PIN_STATS: &str = "stats";
/// The iSCSI port bitmap.
pub const PIN_PORTS: &str = "ports";
/// Where ingress is counted and why.
pub const PIN_ATTACH: &str = "attach";
/// Every pin, with the map behind it.
const PINS: [(&str, &str); 8] = [
    (FLOWSETS4_MAP, PIN_FLOWSETS4),
    (FLOWS4_MAP, PIN_FLOWS4),
    (FLOWSETS6_MAP, PIN_FLOWSETS6),
    (FLOWS6_MAP, PIN_FLOWS6),
    (SETS_USED_MAP, PIN_SETS_USED),
    (STATS_MAP, PIN_STATS),
    (PORTS_MAP, PIN_PORTS),
    (ATTACH_MAP, PIN_ATTACH),
];

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The interface does not exist in this network namespace.
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    /// Another sanlb agent holds the interface.
    #[error(
        "another sanlb agent already counts on {iface} (lock {lock} is held); \
         stop it first, two agents on one NIC would count every packet twice"
    )]
    AlreadyAttached {
        /// The interface.
        iface: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// No iSCSI port was configured.
    #[error("at least one iSCSI port is needed")]
    NoPorts,
    /// Port 0 is not a TCP port one can listen on.
    #[error("invalid iSCSI port 0")]
    PortZero,
    /// The flow table size is out of range.
    #[error("--max-flows must be between 1 and {max}, got {got}")]
    MaxFlows {
        /// Given value.
        got: u32,
        /// Upper bound.
        max: u32,
    },
    /// The embedded object is empty (built with AYA_BUILD_SKIP).
    #[error("this binary was built without its eBPF object (AYA_BUILD_SKIP was set)")]
    NoObject,
    /// Loading the object failed.
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    /// Loading (verifying) or attaching a program failed.
    #[error("{what}")]
    Program {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("{what}")]
    Map {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// Pinning failed.
    #[error("pinning {path}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: aya::pin::PinError,
    },
    /// No pinned maps at the path (no agent, or it exited without --keep-pins).
    #[error("no sanlb maps pinned at {0} (is `sanlb agent` running on this NIC?)")]
    NotPinned(PathBuf),
    /// Some pins are there, not this one: pinned by another sanlb version.
    #[error(
        "{0} is missing beside the other pins: they were made by another sanlb version \
         (restart `sanlb agent` on this NIC with this version)"
    )]
    PinMissing(PathBuf),
    /// A file system operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// How to count ingress traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// The hook that counts exactly at the least cost on this NIC
    /// ([`choose_ingress`]).
    #[default]
    Auto,
    /// Driver (native) XDP only.
    Driver,
    /// Generic (skb) XDP only.
    Generic,
    /// No XDP: the TC ingress hook.
    Tc,
}

/// Where ingress traffic is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngressHook {
    /// XDP in the driver (native), before an skb exists.
    XdpDriver,
    /// Generic XDP, in the stack after GRO: packet counts are of merged packets.
    XdpGeneric,
    /// TC ingress (TCX, or clsact before 6.6), after GRO; a merged packet
    /// counts as its segments.
    Tc,
}

impl fmt::Display for IngressHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::XdpDriver => "xdp-driver",
            Self::XdpGeneric => "xdp-generic",
            Self::Tc => "tc",
        })
    }
}

/// Why the agent counts ingress where it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachReason {
    /// The operator chose the hook ([`XdpAttachMode`] other than auto).
    Forced,
    /// A NIC with a bus device: its driver runs XDP before an skb is built.
    NativeNic,
    /// A virtual NIC (veth, ...): native XDP there costs throughput (veth
    /// copies packets into XDP buffers, its peer loses GSO/TSO) and generic
    /// XDP counts GRO-merged packets, so TC ingress counts.
    VirtualNic,
    /// The driver refused native XDP.
    DriverRefused,
}

impl fmt::Display for AttachReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Forced => "forced by the operator",
            Self::NativeNic => "a NIC whose driver runs XDP natively",
            Self::VirtualNic => {
                "a virtual NIC: native XDP would cost throughput, generic XDP would count merged packets"
            }
            Self::DriverRefused => "the driver refused native XDP",
        })
    }
}

/// Where the agent attached the ingress counter, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// The hook.
    pub ingress: IngressHook,
    /// Why that one.
    pub reason: AttachReason,
}

impl Attachment {
    fn to_info(self) -> AttachInfo {
        AttachInfo {
            ingress: match self.ingress {
                IngressHook::XdpDriver => INGRESS_XDP_DRIVER,
                IngressHook::XdpGeneric => INGRESS_XDP_GENERIC,
                IngressHook::Tc => INGRESS_TC,
            },
            reason: match self.reason {
                AttachReason::Forced => REASON_FORCED,
                AttachReason::NativeNic => REASON_NATIVE_NIC,
                AttachReason::VirtualNic => REASON_VIRTUAL_NIC,
                AttachReason::DriverRefused => REASON_DRIVER_REFUSED,
            },
        }
    }

    fn from_info(info: AttachInfo) -> Option<Self> {
        let ingress = match info.ingress {
            INGRESS_XDP_DRIVER => IngressHook::XdpDriver,
            INGRESS_XDP_GENERIC => IngressHook::XdpGeneric,
            INGRESS_TC => IngressHook::Tc,
            _ => return None,
        };
        let reason = match info.reason {
            REASON_FORCED => AttachReason::Forced,
            REASON_NATIVE_NIC => AttachReason::NativeNic,
            REASON_VIRTUAL_NIC => AttachReason::VirtualNic,
            REASON_DRIVER_REFUSED => AttachReason::DriverRefused,
            _ => return None,
        };
        Some(Self { ingress, reason })
    }
}

/// What kind of NIC, as far as the choice of hook goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicKind {
    /// A device on a bus (PCI, ...): a driver with its own receive path.
    Physical,
    /// No bus device (veth, bridge, bond, tun, ...).
    Virtual,
}

/// The hook to attach for `mode` on a NIC of `kind`; `None` for auto on a
/// physical NIC, which tries driver XDP and falls back to TC ingress.
pub fn choose_ingress(mode: XdpAttachMode, kind: NicKind) -> Option<Attachment> {
    let forced = |ingress| {
        Some(Attachment {
            ingress,
            reason: AttachReason::Forced,
        })
    };
    match (mode, kind) {
        (XdpAttachMode::Driver, _) => forced(IngressHook::XdpDriver),
        (XdpAttachMode::Generic, _) => forced(IngressHook::XdpGeneric),
        (XdpAttachMode::Tc, _) => forced(IngressHook::Tc),
        (XdpAttachMode::Auto, NicKind::Virtual) => Some(Attachment {
            ingress: IngressHook::Tc,
            reason: AttachReason::VirtualNic,
        }),
        (XdpAttachMode::Auto, NicKind::Physical) => None,
    }
}

/// What to attach where.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Host-facing NIC.
    pub iface: String,
    /// iSCSI TCP ports (the initiator is the side not on one of these).
    pub ports: Vec<u16>,
    /// Entries of the LRU flow table.
    pub max_flows: u32,
    /// Directory for the pins; `None` = `/sys/fs/bpf/sanlb/<iface>`.
    pub pin_dir: Option<PathBuf>,
    /// How to count ingress.
    pub xdp_mode: XdpAttachMode,
}

impl DataplaneConfig {
    /// The pin directory this configuration uses.
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir
            .clone()
            .unwrap_or_else(|| default_pin_dir(&self.iface))
    }
}

/// `/sys/fs/bpf/sanlb/<iface>`.
pub fn default_pin_dir(iface: &str) -> PathBuf {
    Path::new(DEFAULT_PIN_ROOT).join(iface)
}

/// Upper bound of `--max-flows` (each entry holds 88 bytes per CPU; there
/// are two tables, IPv4 and IPv6, of this many entries each).
pub const MAX_FLOWS_LIMIT: u32 = 1 << 24;

/// The counting programs loaded into the kernel, configured (iSCSI ports,
/// flow-table size) and verified, attached to no NIC.
///
/// [`Dataplane::attach`] starts from one; test harnesses run one with
/// `BPF_PROG_TEST_RUN` through [`Programs::ebpf_mut`] (see the `sanlb-test`
/// crate).
pub struct Programs {
    ebpf: Ebpf,
}

impl Programs {
    /// Loads the embedded object with `ports` as the iSCSI ports and a flow
    /// table of `max_flows` entries, and verifies its programs.
    pub fn load(ports: &[u16], max_flows: u32) -> Result<Self> {
        validate(ports, max_flows)?;
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let bits = port_bits(ports);
        let only = port_only(ports);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS4_MAP, max_flows)
            .map_max_entries(FLOWS6_MAP, max_flows)
            .override_global(PORT_BITS_GLOBAL, &bits, true)
            .override_global(PORT_ONLY_GLOBAL, &only, true)
            .load(EBPF_OBJECT)
            .map_err(DataplaneError::Load)?;
        write_ports(&mut ebpf, ports)?;
        let verifier = |name: &str| {
            let what = format!("loading {name} (verifier)");
            move |source| DataplaneError::Program { what, source }
        };
        let xdp: &mut Xdp = prog(&mut ebpf, XDP_PROG)?;
        xdp.load().map_err(verifier(XDP_PROG))?;
        for name in [TC_PROG, TC_INGRESS_PROG] {
            let tc: &mut SchedClassifier = prog(&mut ebpf, name)?;
            tc.load().map_err(verifier(name))?;
        }
        Ok(Self { ebpf })
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let map = |name| self.ebpf.map(name).ok_or_else(|| missing_map(name));
        read_snapshot(&Maps {
            flowsets4: map(FLOWSETS4_MAP)?,
            flows4: map(FLOWS4_MAP)?,
            flowsets6: map(FLOWSETS6_MAP)?,
            flows6: map(FLOWS6_MAP)?,
            sets_used: map(SETS_USED_MAP)?,
            stats: map(STATS_MAP)?,
            ports: map(PORTS_MAP)?,
            attach: map(ATTACH_MAP)?,
        })
    }

    /// The loaded object: its programs (named in `sanlb_common`) and maps.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object, mutably (to run or attach its programs).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// The attached programs. Dropping it detaches them; call
/// [`Dataplane::detach`] to also decide about the pins.
pub struct Dataplane {
    programs: Programs,
    iface: String,
    pin_dir: PathBuf,
    attachment: Attachment,
    _lock: File,
}

impl Dataplane {
    /// Loads, configures, attaches and pins. Fails without side effects left
    /// behind (what was attached is detached, what was pinned is removed).
    pub fn attach(cfg: &DataplaneConfig) -> Result<Self> {
        validate(&cfg.ports, cfg.max_flows)?;
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let ifindex = ifindex(&cfg.iface)?;
        let lock = lock_iface(&cfg.iface, ifindex)?;
        let pin_dir = cfg.pin_dir();
        ensure_bpffs(&pin_dir)?;
        // We hold the lock, so pins left here are from an agent that was
        // killed or ran with --keep-pins: start from fresh maps.
        remove_pins(&pin_dir);
        fs::create_dir_all(&pin_dir).map_err(|source| DataplaneError::Io {
            what: "creating",
            path: pin_dir.clone(),
            source,
        })?;

        let programs = Programs::load(&cfg.ports, cfg.max_flows)?;
        let kind = nic_kind(&cfg.iface);

        let mut dp = Self {
            programs,
            iface: cfg.iface.clone(),
            pin_dir,
            attachment: Attachment {
                ingress: IngressHook::Tc,
                reason: AttachReason::Forced,
            },
            _lock: lock,
        };
        // From here on a failure drops `dp`, which detaches what was attached.
        dp.pin()?;
        let attached = dp.attach_programs(cfg.xdp_mode, kind);
        if let Err(e) = attached {
            remove_pins(&dp.pin_dir);
            return Err(e);
        }
        Ok(dp)
    }

    fn attach_programs(&mut self, mode: XdpAttachMode, kind: NicKind) -> Result<()> {
        let iface = self.iface.clone();
        let ebpf = self.programs.ebpf_mut();
        self.attachment = match choose_ingress(mode, kind) {
            Some(a) => {
                attach_ingress(ebpf, &iface, a.ingress)?;
                a
            }
            None => match attach_ingress(ebpf, &iface, IngressHook::XdpDriver) {
                Ok(()) => Attachment {
                    ingress: IngressHook::XdpDriver,
                    reason: AttachReason::NativeNic,
                },
                Err(driver_err) => {
                    tracing::info!(iface, error = %crate::error_chain(&driver_err), "driver-mode XDP refused, counting ingress with TC");
                    attach_ingress(ebpf, &iface, IngressHook::Tc)?;
                    Attachment {
                        ingress: IngressHook::Tc,
                        reason: AttachReason::DriverRefused,
                    }
                }
            },
        };
        let ebpf = self.programs.ebpf_mut();
        attach_tc(ebpf, TC_PROG, &iface, TcAttachType::Egress)?;
        write_attach(ebpf, self.attachment)
    }

    fn pin(&mut self) -> Result<()> {
        for (map, file) in PINS {
            let path = self.pin_dir.join(file);
            let m = self
                .programs
                .ebpf()
                .map(map)
                .ok_or_else(|| missing_map(map))?;
            if let Err(source) = m.pin(&path) {
                remove_pins(&self.pin_dir);
                return Err(DataplaneError::Pin { path, source });
            }
        }
        Ok(())
    }

    /// The interface the programs are attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Where ingress is counted, and why.
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// Reads the counters of this agent's own maps.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.programs.snapshot()
    }

    /// Detaches the programs; removes the pins unless `keep_pins`.
    pub fn detach(self, keep_pins: bool) {
        if !keep_pins {
            remove_pins(&self.pin_dir);
        }
        // Dropping the object closes the link fds, which detaches the programs.
        drop(self);
    }
}

/// Maps pinned by an agent, opened from another process.
pub struct PinnedMaps {
    flowsets4: Map,
    flows4: Map,
    flowsets6: Map,
    flows6: Map,
    sets_used: Map,
    stats: Map,
    ports: Map,
    attach: Map,
}

impl PinnedMaps {
    /// Opens the pins in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let open = |file: &str| -> Result<Map> {
            let path = dir.join(file);
            if !path.exists() {
                let others = PINS.iter().any(|(_, f)| dir.join(f).exists());
                return Err(if others {
                    DataplaneError::PinMissing(path)
                } else {
                    DataplaneError::NotPinned(dir.to_owned())
                });
            }
            let data = MapData::from_pin(&path).map_err(|source| DataplaneError::Map {
                what: format!("opening {}", path.display()),
                source,
            })?;
            Map::from_map_data(data).map_err(|source| DataplaneError::Map {
                what: format!("opening {}", path.display()),
                source,
            })
        };
        Ok(Self {
            flowsets4: open(PIN_FLOWSETS4)?,
            flows4: open(PIN_FLOWS4)?,
            flowsets6: open(PIN_FLOWSETS6)?,
            flows6: open(PIN_FLOWS6)?,
            sets_used: open(PIN_SETS_USED)?,
            stats: open(PIN_STATS)?,
            ports: open(PIN_PORTS)?,
            attach: open(PIN_ATTACH)?,
        })
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> Result<Snapshot> {
        read_snapshot(&Maps {
            flowsets4: &self.flowsets4,
            flows4: &self.flows4,
            flowsets6: &self.flowsets6,
            flows6: &self.flows6,
            sets_used: &self.sets_used,
            stats: &self.stats,
            ports: &self.ports,
            attach: &self.attach,
        })
    }
}

/// Counters of one (initiator, target) pair, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// Initiator (host) address.
    pub initiator: IpAddr,
    /// Target (storage entity) address.
    pub target: IpAddr,
    /// The counters (flattened into the JSON object).
    #[serde(flatten)]
    pub counters: Counters,
}

/// The counters of one pair ([`FlowCounters`], serializable with the
/// `user` feature of sanlb-common).
pub type Counters = FlowCounters;
/// What one hook saw ([`HookStats`]).
pub type Stats = HookStats;

/// Everything the maps hold at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Per (initiator, target), in no particular order.
    pub flows: Vec<FlowRecord>,
    /// XDP (ingress) statistics.
    pub ingress: Stats,
    /// TC (egress) statistics.
    pub egress: Stats,
    /// Configured iSCSI ports.
    pub ports: Vec<u16>,
    /// Where ingress is counted and why (`None` before an agent attached).
    pub attachment: Option<Attachment>,
}

/// The maps of one object, loaded or pinned.
struct Maps<'a> {
    flowsets4: &'a Map,
    flows4: &'a Map,
    flowsets6: &'a Map,
    flows6: &'a Map,
    sets_used: &'a Map,
    stats: &'a Map,
    ports: &'a Map,
    attach: &'a Map,
}

fn map_err(what: &str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    let what = what.to_owned();
    move |source| DataplaneError::Map {
        what: what.clone(),
        source,
    }
}

/// A flow set of either family: its ways as (key, counters).
trait FlowSet: aya::Pod {
    type Key: Copy + Default + Eq + std::hash::Hash;
    fn ways(&self) -> impl Iterator<Item = (Self::Key, &FlowCounters)>;
}

impl FlowSet for FlowSet4 {
    type Key = FlowKey4;
    fn ways(&self) -> impl Iterator<Item = (FlowKey4, &FlowCounters)> {
        self.ways.iter().map(|w| (w.key, &w.counters))
    }
}

impl FlowSet for FlowSet6 {
    type Key = FlowKey6;
    fn ways(&self) -> impl Iterator<Item = (FlowKey6, &FlowCounters)> {
        self.ways.iter().map(|w| (w.key, &w.counters))
    }
}

/// The sets of `family` that hold a pair on some CPU ([`SETS_USED_MAP`]).
pub fn sets_used(map: &Map, family: u32) -> Result<SetsUsed> {
    let used: PerCpuArray<&MapData, SetsUsed> =
        PerCpuArray::try_from(map).map_err(map_err("opening the used-set record"))?;
    let per_cpu = used
        .get(&family, 0)
        .map_err(map_err("reading the used-set record"))?;
    let mut all = SetsUsed::default();
    for u in per_cpu.iter() {
        all.union(u);
    }
    Ok(all)
}

/// The pairs of every CPU's flow sets, their counts added up: the sets that
/// `used` marks (read first, see [`SetsUsed`]), each on every CPU. A way
/// whose key is all zeros is free.
fn read_flow_sets<S: FlowSet>(
    map: &Map,
    used: &Map,
    family: u32,
) -> Result<HashMap<S::Key, FlowCounters>> {
    let used = sets_used(used, family)?;
    let sets: PerCpuArray<&MapData, S> =
        PerCpuArray::try_from(map).map_err(map_err("opening the flow sets"))?;
    let mut pairs: HashMap<S::Key, FlowCounters> = HashMap::new();
    for set in (0..sets.len()).filter(|s| used.has(*s)) {
        let per_cpu = sets.get(&set, 0).map_err(map_err("reading a flow set"))?;
        for s in per_cpu.iter() {
            for (key, counters) in s.ways().filter(|(k, _)| *k != S::Key::default()) {
                pairs.entry(key).or_default().accumulate(counters);
            }
        }
    }
    Ok(pairs)
}

/// Appends the flows of one table to `records`, adding to each the counts
/// `extra` holds for its key (taking them out of `extra`).
fn read_flows<K: aya::Pod + Eq + std::hash::Hash>(
    map: &Map,
    addrs: impl Fn(&K) -> (IpAddr, IpAddr),
    extra: &mut HashMap<K, FlowCounters>,
    records: &mut Vec<FlowRecord>,
) -> Result<()> {
    let flows: PerCpuHashMap<&MapData, K, FlowCounters> =
        PerCpuHashMap::try_from(map).map_err(map_err("opening a flow map"))?;
    for key in flows.keys() {
        let key = key.map_err(map_err("listing flows"))?;
        // An entry can be evicted between listing and reading it.
        let values = match flows.get(&key, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err("reading a flow")(e)),
        };
        let mut counters = sum_per_cpu(&values);
        if let Some(more) = extra.remove(&key) {
            counters.accumulate(&more);
        }
        records.push(record(addrs(&key), counters));
    }
    Ok(())
}

fn record((initiator, target): (IpAddr, IpAddr), counters: FlowCounters) -> FlowRecord {
    FlowRecord {
        initiator,
        target,
        counters,
    }
}

fn read_snapshot(maps: &Maps<'_>) -> Result<Snapshot> {
    let mut records = Vec::new();
    // A pair can be in both tables of its family (in a set on one CPU, in
    // the LRU table from another whose set was full): one record with the
    // sum. The sets are read first; a pair's counts never move between the
    // tables, so each read sees them no lower than the one before.
    let mut in_sets = read_flow_sets::<FlowSet4>(maps.flowsets4, maps.sets_used, FAMILY_IPV4)?;
    read_flows(maps.flows4, v4_addrs, &mut in_sets, &mut records)?;
    records.extend(in_sets.iter().map(|(key, c)| record(v4_addrs(key), *c)));
    let mut in_sets = read_flow_sets::<FlowSet6>(maps.flowsets6, maps.sets_used, FAMILY_IPV6)?;
    read_flows(maps.flows6, v6_addrs, &mut in_sets, &mut records)?;
    records.extend(in_sets.iter().map(|(key, c)| record(v6_addrs(key), *c)));
    let stats_map: PerCpuArray<&MapData, HookStats> =
        PerCpuArray::try_from(maps.stats).map_err(map_err("opening the stats map"))?;
    let hook = |i: u32| -> Result<Stats> {
        let per_cpu = stats_map.get(&i, 0).map_err(map_err("reading stats"))?;
        let mut sum = HookStats::default();
        for s in per_cpu.iter() {
            sum.accumulate(s);
        }
        Ok(sum)
    };
    let port_map: Array<&MapData, PortBitmap> =
        Array::try_from(maps.ports).map_err(map_err("opening the port map"))?;
    let record = port_map.get(&0, 0).map_err(map_err("reading ports"))?;
    let port_list = (0..=u16::MAX).filter(|p| record.has(*p)).collect();
    let attach_map: Array<&MapData, AttachInfo> =
        Array::try_from(maps.attach).map_err(map_err("opening the attach map"))?;
    let info = attach_map
        .get(&0, 0)
        .map_err(map_err("reading the attach map"))?;
    Ok(Snapshot {
        flows: records,
        ingress: hook(HOOK_INGRESS)?,
        egress: hook(HOOK_EGRESS)?,
        ports: port_list,
        attachment: Attachment::from_info(info),
    })
}

/// Sums the per-CPU values of one flow.
pub fn sum_per_cpu(per_cpu: &PerCpuValues<FlowCounters>) -> FlowCounters {
    let mut sum = FlowCounters::default();
    for v in per_cpu.iter() {
        sum.accumulate(v);
    }
    sum
}

/// (initiator, target) of an IPv4 key.
pub fn v4_addrs(key: &FlowKey4) -> (IpAddr, IpAddr) {
    (
        IpAddr::V4(Ipv4Addr::from(key.initiator)),
        IpAddr::V4(Ipv4Addr::from(key.target)),
    )
}

/// (initiator, target) of an IPv6 key.
pub fn v6_addrs(key: &FlowKey6) -> (IpAddr, IpAddr) {
    (
        IpAddr::V6(Ipv6Addr::from(key.initiator)),
        IpAddr::V6(Ipv6Addr::from(key.target)),
    )
}

/// The one port in network byte order read as a native `u16`, as the
/// programs read it from the frame, when `ports` holds one port (repeats
/// aside), else 0 ([`PORT_ONLY_GLOBAL`]).
fn port_only(ports: &[u16]) -> u16 {
    match ports.split_first() {
        Some((first, rest)) if rest.iter().all(|p| p == first) => first.to_be(),
        _ => 0,
    }
}

/// The port bitmap the programs check ([`PORT_BITS_GLOBAL`]): indexed by
/// the port in network byte order read as a native `u16`, as the programs
/// read it from the frame.
fn port_bits(ports: &[u16]) -> [u64; PORT_BITMAP_WORDS as usize] {
    let raw: Vec<u16> = ports.iter().map(|p| p.to_be()).collect();
    PortBitmap::from_ports(&raw).words
}

fn write_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<()> {
    let map = ebpf
        .map_mut(PORTS_MAP)
        .ok_or_else(|| missing_map(PORTS_MAP))?;
    let mut array: Array<&mut MapData, PortBitmap> =
        Array::try_from(map).map_err(map_err("opening the port map"))?;
    array
        .set(0, PortBitmap::from_ports(ports), 0)
        .map_err(map_err("writing the port map"))
}

fn write_attach(ebpf: &mut Ebpf, attachment: Attachment) -> Result<()> {
    let map = ebpf
        .map_mut(ATTACH_MAP)
        .ok_or_else(|| missing_map(ATTACH_MAP))?;
    let mut array: Array<&mut MapData, AttachInfo> =
        Array::try_from(map).map_err(map_err("opening the attach map"))?;
    array
        .set(0, attachment.to_info(), 0)
        .map_err(map_err("writing the attach map"))
}

/// Attaches the ingress counter to `iface` at `hook`.
fn attach_ingress(ebpf: &mut Ebpf, iface: &str, hook: IngressHook) -> Result<()> {
    let mode = match hook {
        IngressHook::XdpDriver => XdpMode::Driver,
        IngressHook::XdpGeneric => XdpMode::Skb,
        IngressHook::Tc => return attach_tc(ebpf, TC_INGRESS_PROG, iface, TcAttachType::Ingress),
    };
    let xdp: &mut Xdp = prog(ebpf, XDP_PROG)?;
    xdp.attach(iface, mode)
        .map(|_| ())
        .map_err(|source| DataplaneError::Program {
            what: format!("attaching {XDP_PROG} to {iface} in {mode:?} mode"),
            source,
        })
}

/// Attaches the TC program `name` (TCX; a clsact qdisc before 6.6).
fn attach_tc(ebpf: &mut Ebpf, name: &str, iface: &str, at: TcAttachType) -> Result<()> {
    let tc: &mut SchedClassifier = prog(ebpf, name)?;
    if let Err(first) = tc.attach(iface, at) {
        // Kernels before 6.6 (no TCX) need a clsact qdisc; EEXIST is fine.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        tc.attach(iface, at)
            .map_err(|source| DataplaneError::Program {
                what: format!("attaching {name} to {at:?} of {iface} (first try: {first})"),
                source,
            })?;
    }
    Ok(())
}

fn validate(ports: &[u16], max_flows: u32) -> Result<()> {
    if ports.is_empty() {
        return Err(DataplaneError::NoPorts);
    }
    if ports.contains(&0) {
        return Err(DataplaneError::PortZero);
    }
    if max_flows == 0 || max_flows > MAX_FLOWS_LIMIT {
        return Err(DataplaneError::MaxFlows {
            got: max_flows,
            max: MAX_FLOWS_LIMIT,
        });
    }
    Ok(())
}

fn prog<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| DataplaneError::Program {
            what: format!("program {name} missing from the object"),
            source: aya::programs::ProgramError::NotLoaded,
        })?;
    p.try_into().map_err(|source| DataplaneError::Program {
        what: format!("program {name} has an unexpected type"),
        source,
    })
}

fn missing_map(name: &str) -> DataplaneError {
    DataplaneError::Map {
        what: format!("map {name} missing from the object"),
        source: aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        },
    }
}

/// Removes the pins sanlb creates in `dir`, and `dir` if it is then empty
/// (and `/sys/fs/bpf/sanlb` too when `dir` was in it and it is now empty).
pub fn remove_pins(dir: &Path) {
    for (_, file) in PINS {
        let _ = fs::remove_file(dir.join(file));
    }
    // The single flow table of earlier versions.
    let _ = fs::remove_file(dir.join("flows"));
    // remove_dir only removes empty directories: other NICs' pins stay.
    let _ = fs::remove_dir(dir);
    if dir.parent() == Some(Path::new(DEFAULT_PIN_ROOT)) {
        let _ = fs::remove_dir(DEFAULT_PIN_ROOT);
    }
}

fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface)
        .map_err(|_| DataplaneError::NoSuchInterface(iface.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DataplaneError::NoSuchInterface(iface.to_owned())),
        i => Ok(i),
    }
}

/// Whether `iface` is a bus device or a virtual one, from the driver
/// information ethtool reports (`ETHTOOL_GDRVINFO`): a virtual device has no
/// bus address, and veth is named for certain. Asked through the ioctl on a
/// socket of this network namespace (sysfs may show another one's NICs); no
/// crate wraps this ioctl, and ethtool's netlink API has no driver info.
/// Unknown (the ioctl fails) counts as physical: driver XDP is then tried,
/// and TC ingress taken if the driver refuses it.
pub fn nic_kind(iface: &str) -> NicKind {
    match driver_info(iface) {
        Some((driver, bus)) if driver == "veth" || bus.is_empty() => NicKind::Virtual,
        _ => NicKind::Physical,
    }
}

/// (driver, bus address) of `iface`.
fn driver_info(iface: &str) -> Option<(String, String)> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // struct ethtool_drvinfo (uapi/linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return None;
    }
    // SAFETY: plain C structs, valid when zeroed.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in req.ifr_name.iter_mut().zip(name) {
        *dst = b as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a datagram socket only to carry the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` names the interface and points at `info`, which lives
    // across the call and is as large as the kernel writes.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &raw mut req) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Some((text(&info.driver), text(&info.bus_info)))
}

/// One agent per NIC: an exclusive lock on a file named by the network
/// namespace and the interface, released by the kernel when the agent dies.
fn lock_iface(iface: &str, ifindex: u32) -> Result<File> {
    let netns = fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    let dir = Path::new(LOCK_DIR);
    fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
        what: "creating",
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(format!("{netns}-{ifindex}-{iface}.lock"));
    let file = File::create(&path).map_err(|source| DataplaneError::Io {
        what: "creating",
        path: path.clone(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(DataplaneError::AlreadyAttached {
            iface: iface.to_owned(),
            lock: path,
        }),
        Err(fs::TryLockError::Error(source)) => Err(DataplaneError::Io {
            what: "locking",
            path,
            source,
        }),
    }
}

/// Whether an agent counts on `iface` in this network namespace now (it
/// holds the NIC's lock). `None` when the NIC or the lock cannot be looked
/// at (no such NIC, no permission).
pub fn agent_running(iface: &str) -> Option<bool> {
    let ifindex = nix_ifindex(iface)?;
    let netns = fs::metadata("/proc/self/ns/net").ok()?.ino();
    let path = Path::new(LOCK_DIR).join(format!("{netns}-{ifindex}-{iface}.lock"));
    let Ok(file) = File::open(&path) else {
        // Never locked here: no agent ever ran on it in this namespace.
        return Some(false);
    };
    match file.try_lock() {
        Ok(()) => Some(false),
        Err(fs::TryLockError::WouldBlock) => Some(true),
        Err(fs::TryLockError::Error(_)) => None,
    }
}

fn nix_ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: `name` is NUL-terminated.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

/// Mounts bpffs on /sys/fs/bpf when `pin_dir` lies under it and it is not
/// mounted (common in containers and under `ip netns exec`).
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) || is_bpffs(root) {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("static string");
    let (src, target, fstype, opts) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"), c("mode=0700"));
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(DataplaneError::Io {
            what: "mounting bpffs on",
            path: root.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted bpffs on /sys/fs/bpf");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; `c` is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_sets_one_bit_per_port() {
        let set = |ports: &[u16]| -> Vec<(usize, u64)> {
            let b = PortBitmap::from_ports(ports);
            b.words
                .iter()
                .enumerate()
                .filter(|(_, w)| **w != 0)
                .map(|(i, w)| (i, *w))
                .collect()
        };
        assert_eq!(set(&[3260]), vec![(50, 1 << 60)]);
        assert_eq!(set(&[0, 63, 64]), vec![(0, 1 | 1 << 63), (1, 1)]);
        assert_eq!(set(&[65535]), vec![(1023, 1 << 63)]);
        assert!(PortBitmap::from_ports(&[3260]).has(3260));
        assert!(!PortBitmap::from_ports(&[3260]).has(3261));
    }

    #[test]
    fn pins_of_another_version_are_named() {
        let dir = std::env::temp_dir().join(format!("sanlb-pins-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let err = PinnedMaps::open(&dir).err().unwrap();
        assert!(matches!(err, DataplaneError::NotPinned(_)), "{err}");
        // Some pins there, others missing, as another version leaves them.
        fs::write(dir.join(PIN_STATS), b"").unwrap();
        let err = PinnedMaps::open(&dir).err().unwrap();
        fs::remove_dir_all(&dir).unwrap();
        match err {
            DataplaneError::PinMissing(p) => assert!(p.ends_with(PIN_FLOWSETS4), "{p:?}"),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn a_single_port_is_compared_directly() {
        // As read from the frame: the wire bytes 0x0c 0xbc as a native u16.
        assert_eq!(port_only(&[3260]), u16::from_ne_bytes([0x0c, 0xbc]));
        assert_eq!(port_only(&[3260, 3260]), port_only(&[3260]));
        assert_eq!(port_only(&[3260, 860]), 0);
        assert_eq!(port_only(&[]), 0);
    }

    #[test]
    fn config_is_validated() {
        assert!(matches!(validate(&[], 10), Err(DataplaneError::NoPorts)));
        assert!(matches!(validate(&[0], 10), Err(DataplaneError::PortZero)));
        assert!(matches!(
            validate(&[3260], 0),
            Err(DataplaneError::MaxFlows { .. })
        ));
        assert!(validate(&[3260, 860], 10).is_ok());
    }

    #[test]
    fn keys_decode_to_addresses() {
        let k4 = FlowKey4 {
            initiator: [198, 18, 0, 10],
            target: [198, 18, 1, 50],
        };
        assert_eq!(
            v4_addrs(&k4),
            (
                "198.18.0.10".parse().unwrap(),
                "198.18.1.50".parse().unwrap()
            )
        );
        let mut k6 = FlowKey6::default();
        k6.initiator[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        k6.target[15] = 5;
        assert_eq!(
            v6_addrs(&k6),
            ("2001:db8::".parse().unwrap(), "::5".parse().unwrap())
        );
    }

    #[test]
    fn ingress_hook_per_mode_and_nic() {
        use IngressHook::*;
        let hook = |m, k| choose_ingress(m, k).map(|a| (a.ingress, a.reason));
        // Auto: TC on a virtual NIC; on a physical one driver XDP is tried.
        assert_eq!(
            hook(XdpAttachMode::Auto, NicKind::Virtual),
            Some((Tc, AttachReason::VirtualNic))
        );
        assert_eq!(hook(XdpAttachMode::Auto, NicKind::Physical), None);
        // --xdp-mode forces whatever the NIC.
        for kind in [NicKind::Virtual, NicKind::Physical] {
            assert_eq!(
                hook(XdpAttachMode::Driver, kind),
                Some((XdpDriver, AttachReason::Forced))
            );
            assert_eq!(
                hook(XdpAttachMode::Generic, kind),
                Some((XdpGeneric, AttachReason::Forced))
            );
            assert_eq!(
                hook(XdpAttachMode::Tc, kind),
                Some((Tc, AttachReason::Forced))
            );
        }
    }

    #[test]
    fn attachment_round_trips_through_the_map_codes() {
        for ingress in [
            IngressHook::XdpDriver,
            IngressHook::XdpGeneric,
            IngressHook::Tc,
        ] {
            for reason in [
                AttachReason::Forced,
                AttachReason::NativeNic,
                AttachReason::VirtualNic,
                AttachReason::DriverRefused,
            ] {
                let a = Attachment { ingress, reason };
                assert_eq!(Attachment::from_info(a.to_info()), Some(a));
            }
        }
        assert_eq!(Attachment::from_info(AttachInfo::default()), None);
    }

    #[test]
    fn an_unknown_nic_counts_as_physical() {
        // The ioctl fails (no such NIC; lo has no driver info either):
        // driver XDP is tried, then TC ingress.
        assert_eq!(driver_info("nosuchnic0"), None);
        assert_eq!(nic_kind("nosuchnic0"), NicKind::Physical);
        assert_eq!(driver_info("a-name-far-too-long-for-a-nic"), None);
    }
}
