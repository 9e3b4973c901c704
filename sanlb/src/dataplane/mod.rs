//! Loading, attaching and reading the eBPF counting programs.
//!
//! This is the only module that talks to aya. [`Dataplane::attach`] loads the
//! embedded object, writes the iSCSI port bitmap, attaches XDP on ingress
//! (driver mode, else generic) and TC on egress (TCX on kernels ≥ 6.6), and
//! pins the maps under `<pin dir>` (default `/sys/fs/bpf/sanlb/<iface>/`).
//! [`PinnedMaps`] reads those pins from any process, which is how
//! `sanlb counters` and `bpftool` see the same numbers the agent reports.

use std::{
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
    FAMILY_IPV4, FAMILY_IPV6, FLOWS_MAP, FlowCounters, FlowKey, HOOK_EGRESS, HOOK_INGRESS,
    HookStats, PORT_BITMAP_WORDS, PORTS_MAP, STATS_MAP, TC_PROG, XDP_PROG,
};
use serde::Serialize;

pub mod testrun;

/// The counting programs, built by `build.rs` from `sanlb-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sanlb"));
/// An XDP program that only passes: the baseline of `cargo xtask bench`.
pub static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sanlb-baseline"));

/// Where pins live unless the operator says otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/sanlb";
/// Directory of the per-NIC agent locks.
pub const LOCK_DIR: &str = "/run/sanlb";
/// File names of the pinned maps inside the pin directory.
pub const PIN_FLOWS: &str = "flows";
/// See [`PIN_FLOWS`].
pub const PIN_STATS: &str = "stats";
/// See [`PIN_FLOWS`].
pub const PIN_PORTS: &str = "ports";

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

/// How to attach XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Driver (native) mode where the NIC supports it, else generic.
    #[default]
    Auto,
    /// Driver mode only.
    Driver,
    /// Generic (skb) mode only.
    Generic,
}

/// The mode XDP ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeUsed {
    /// Native, in the driver.
    Driver,
    /// Generic, in the kernel stack (after GRO: packet counts may be merged).
    Generic,
}

impl fmt::Display for XdpModeUsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Driver => "driver",
            Self::Generic => "generic",
        })
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
    /// XDP attach mode.
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

/// Upper bound of `--max-flows` (each entry holds 88 bytes per CPU).
pub const MAX_FLOWS_LIMIT: u32 = 1 << 24;

/// The attached programs. Dropping it detaches both programs; call
/// [`Dataplane::detach`] to also decide about the pins.
pub struct Dataplane {
    ebpf: Ebpf,
    iface: String,
    pin_dir: PathBuf,
    xdp_mode: XdpModeUsed,
    _lock: File,
}

impl Dataplane {
    /// Loads, configures, attaches and pins. Fails without side effects left
    /// behind (what was attached is detached, what was pinned is removed).
    pub fn attach(cfg: &DataplaneConfig) -> Result<Self> {
        validate(cfg)?;
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

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_MAP, cfg.max_flows)
            .load(EBPF_OBJECT)
            .map_err(DataplaneError::Load)?;
        write_ports(&mut ebpf, &cfg.ports)?;

        let mut dp = Self {
            ebpf,
            iface: cfg.iface.clone(),
            pin_dir,
            xdp_mode: XdpModeUsed::Driver,
            _lock: lock,
        };
        // From here on a failure drops `dp`, which detaches what was attached.
        dp.pin()?;
        let attached = dp.attach_programs(cfg.xdp_mode);
        if let Err(e) = attached {
            remove_pins(&dp.pin_dir);
            return Err(e);
        }
        Ok(dp)
    }

    fn attach_programs(&mut self, mode: XdpAttachMode) -> Result<()> {
        let iface = self.iface.clone();
        let xdp: &mut Xdp = prog(&mut self.ebpf, XDP_PROG)?;
        xdp.load().map_err(|source| DataplaneError::Program {
            what: format!("loading {XDP_PROG} (verifier)"),
            source,
        })?;
        self.xdp_mode = match mode {
            XdpAttachMode::Driver => {
                attach_xdp(xdp, &iface, XdpMode::Driver)?;
                XdpModeUsed::Driver
            }
            XdpAttachMode::Generic => {
                attach_xdp(xdp, &iface, XdpMode::Skb)?;
                XdpModeUsed::Generic
            }
            XdpAttachMode::Auto => match attach_xdp(xdp, &iface, XdpMode::Driver) {
                Ok(()) => XdpModeUsed::Driver,
                Err(driver_err) => {
                    tracing::info!(iface, error = %crate::error_chain(&driver_err), "driver-mode XDP refused, trying generic mode");
                    attach_xdp(xdp, &iface, XdpMode::Skb)?;
                    XdpModeUsed::Generic
                }
            },
        };
        let tc: &mut SchedClassifier = prog(&mut self.ebpf, TC_PROG)?;
        tc.load().map_err(|source| DataplaneError::Program {
            what: format!("loading {TC_PROG} (verifier)"),
            source,
        })?;
        if let Err(first) = tc.attach(&iface, TcAttachType::Egress) {
            // Kernels before 6.6 (no TCX) need a clsact qdisc; EEXIST is fine.
            let _ = aya::programs::tc::qdisc_add_clsact(&iface);
            tc.attach(&iface, TcAttachType::Egress)
                .map_err(|source| DataplaneError::Program {
                    what: format!("attaching {TC_PROG} to egress of {iface} (first try: {first})"),
                    source,
                })?;
        }
        Ok(())
    }

    fn pin(&mut self) -> Result<()> {
        for (map, file) in [
            (FLOWS_MAP, PIN_FLOWS),
            (STATS_MAP, PIN_STATS),
            (PORTS_MAP, PIN_PORTS),
        ] {
            let path = self.pin_dir.join(file);
            let m = self.ebpf.map(map).ok_or_else(|| missing_map(map))?;
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

    /// The XDP mode in use.
    pub fn xdp_mode(&self) -> XdpModeUsed {
        self.xdp_mode
    }

    /// Reads the counters of this agent's own maps.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let flows = self
            .ebpf
            .map(FLOWS_MAP)
            .ok_or_else(|| missing_map(FLOWS_MAP))?;
        let stats = self
            .ebpf
            .map(STATS_MAP)
            .ok_or_else(|| missing_map(STATS_MAP))?;
        let ports = self
            .ebpf
            .map(PORTS_MAP)
            .ok_or_else(|| missing_map(PORTS_MAP))?;
        read_snapshot(flows, stats, ports)
    }

    /// Detaches both programs; removes the pins unless `keep_pins`.
    pub fn detach(self, keep_pins: bool) {
        if !keep_pins {
            remove_pins(&self.pin_dir);
        }
        // Dropping `ebpf` closes the link fds, which detaches the programs.
        drop(self);
    }
}

/// Maps pinned by an agent, opened from another process.
pub struct PinnedMaps {
    flows: Map,
    stats: Map,
    ports: Map,
}

impl PinnedMaps {
    /// Opens the pins in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let open = |file: &str| -> Result<Map> {
            let path = dir.join(file);
            if !path.exists() {
                return Err(DataplaneError::NotPinned(dir.to_owned()));
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
            flows: open(PIN_FLOWS)?,
            stats: open(PIN_STATS)?,
            ports: open(PIN_PORTS)?,
        })
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> Result<Snapshot> {
        read_snapshot(&self.flows, &self.stats, &self.ports)
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
}

fn read_snapshot(flows: &Map, stats: &Map, ports: &Map) -> Result<Snapshot> {
    let map_err = |what: &str| {
        let what = what.to_owned();
        move |source| DataplaneError::Map { what, source }
    };
    let flow_map: PerCpuHashMap<&MapData, FlowKey, FlowCounters> =
        PerCpuHashMap::try_from(flows).map_err(map_err("opening the flow map"))?;
    let mut records = Vec::new();
    for key in flow_map.keys() {
        let key = key.map_err(map_err("listing flows"))?;
        // An entry can be evicted between listing and reading it.
        let values = match flow_map.get(&key, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err("reading a flow")(e)),
        };
        if let Some(record) = flow_record(&key, &values) {
            records.push(record);
        }
    }
    let stats_map: PerCpuArray<&MapData, HookStats> =
        PerCpuArray::try_from(stats).map_err(map_err("opening the stats map"))?;
    let hook = |i: u32| -> Result<Stats> {
        let per_cpu = stats_map.get(&i, 0).map_err(map_err("reading stats"))?;
        let mut sum = HookStats::default();
        for s in per_cpu.iter() {
            sum.accumulate(s);
        }
        Ok(sum)
    };
    let port_map: Array<&MapData, u64> =
        Array::try_from(ports).map_err(map_err("opening the port map"))?;
    let mut port_list = Vec::new();
    for word in 0..PORT_BITMAP_WORDS {
        let bits = port_map.get(&word, 0).map_err(map_err("reading ports"))?;
        for bit in 0..64 {
            if bits >> bit & 1 == 1 {
                port_list.push((word * 64 + bit) as u16);
            }
        }
    }
    Ok(Snapshot {
        flows: records,
        ingress: hook(HOOK_INGRESS)?,
        egress: hook(HOOK_EGRESS)?,
        ports: port_list,
    })
}

/// Sums the per-CPU values of one flow; `None` for a key of unknown family.
pub fn flow_record(key: &FlowKey, per_cpu: &PerCpuValues<FlowCounters>) -> Option<FlowRecord> {
    let mut sum = FlowCounters::default();
    for v in per_cpu.iter() {
        sum.accumulate(v);
    }
    Some(FlowRecord {
        initiator: key_addr(key.family, &key.initiator)?,
        target: key_addr(key.family, &key.target)?,
        counters: sum,
    })
}

/// The address stored in a [`FlowKey`] field.
pub fn key_addr(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

/// The bitmap words for `ports` (word = port / 64, bit = port % 64).
pub fn port_bitmap(ports: &[u16]) -> Vec<(u32, u64)> {
    let mut words = std::collections::BTreeMap::<u32, u64>::new();
    for &p in ports {
        *words.entry(u32::from(p >> 6)).or_default() |= 1 << (p & 63);
    }
    words.into_iter().collect()
}

fn write_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<()> {
    let map = ebpf
        .map_mut(PORTS_MAP)
        .ok_or_else(|| missing_map(PORTS_MAP))?;
    let mut array: Array<&mut MapData, u64> =
        Array::try_from(map).map_err(|source| DataplaneError::Map {
            what: "opening the port map".into(),
            source,
        })?;
    for (word, bits) in port_bitmap(ports) {
        array
            .set(word, bits, 0)
            .map_err(|source| DataplaneError::Map {
                what: "writing the port map".into(),
                source,
            })?;
    }
    Ok(())
}

fn validate(cfg: &DataplaneConfig) -> Result<()> {
    if cfg.ports.is_empty() {
        return Err(DataplaneError::NoPorts);
    }
    if cfg.ports.contains(&0) {
        return Err(DataplaneError::PortZero);
    }
    if cfg.max_flows == 0 || cfg.max_flows > MAX_FLOWS_LIMIT {
        return Err(DataplaneError::MaxFlows {
            got: cfg.max_flows,
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

fn attach_xdp(xdp: &mut Xdp, iface: &str, mode: XdpMode) -> Result<()> {
    xdp.attach(iface, mode)
        .map(|_| ())
        .map_err(|source| DataplaneError::Program {
            what: format!("attaching {XDP_PROG} to {iface} in {mode:?} mode"),
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
    for file in [PIN_FLOWS, PIN_STATS, PIN_PORTS] {
        let _ = fs::remove_file(dir.join(file));
    }
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
        assert_eq!(port_bitmap(&[3260]), vec![(50, 1 << 60)]);
        assert_eq!(port_bitmap(&[0, 63, 64]), vec![(0, 1 | 1 << 63), (1, 1)]);
        assert_eq!(port_bitmap(&[65535]), vec![(1023, 1 << 63)]);
    }

    #[test]
    fn config_is_validated() {
        let cfg = |ports: Vec<u16>, max_flows| DataplaneConfig {
            iface: "lo".into(),
            ports,
            max_flows,
            pin_dir: None,
            xdp_mode: XdpAttachMode::Auto,
        };
        assert!(matches!(
            validate(&cfg(vec![], 10)),
            Err(DataplaneError::NoPorts)
        ));
        assert!(matches!(
            validate(&cfg(vec![0], 10)),
            Err(DataplaneError::PortZero)
        ));
        assert!(matches!(
            validate(&cfg(vec![3260], 0)),
            Err(DataplaneError::MaxFlows { .. })
        ));
        assert!(validate(&cfg(vec![3260, 860], 10)).is_ok());
    }

    #[test]
    fn key_addresses_decode_by_family() {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[198, 18, 1, 50]);
        assert_eq!(
            key_addr(FAMILY_IPV4, &b),
            Some("198.18.1.50".parse().unwrap())
        );
        assert_eq!(
            key_addr(FAMILY_IPV6, &b),
            Some("c612:132::".parse().unwrap())
        );
        assert_eq!(key_addr(0, &b), None);
    }
}
