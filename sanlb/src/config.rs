//! The configuration file, [`DEFAULT_PATH`]: one table per role
//! (`[controller]`, `[agent]`, `[status]`) and `[log]`. Every key is
//! optional and has the default written on its field; command-line flags
//! override the file. Unknown keys and values of the wrong type are
//! refused with the file, the line and the key.
//!
//! ```
//! let cfg: sanlb::config::ConfigFile = "[agent]\ngateway = \"gw1\"\ninterval = \"2s\"\n".parse().unwrap();
//! assert_eq!(cfg.agent.gateway.as_deref(), Some("gw1"));
//! assert_eq!(cfg.agent.interval, std::time::Duration::from_secs(2));
//! assert_eq!(cfg.controller.window, 6);
//! ```

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::{
    agent::OnStop, controller::server, dataplane::XdpAttachMode, optimize::Solver, proto::Mode,
};

/// Where the file is read from unless `--config` names another.
pub const DEFAULT_PATH: &str = "/etc/sanlb/sanlb.toml";
/// The controller's state file unless the file or `--state` says otherwise.
pub const DEFAULT_STATE: &str = "/var/lib/sanlb/controller.json";
/// Default `lease`: three heartbeats (100 ms apart) missed.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(300);

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("{path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a bad value.
    #[error("{path}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse {
        /// The file (`<text>` when parsed from a string).
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: Option<usize>,
        /// The parser's message, naming the key.
        message: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// `[log]`: every role.
    pub log: LogSection,
    /// `[controller]`: `sanlb controller`.
    pub controller: ControllerSection,
    /// `[agent]`: `sanlb agent`.
    pub agent: AgentSection,
    /// `[status]`: `sanlb status`.
    pub status: StatusSection,
    /// `[control]`: `sanlb pause`, `resume`, `pin`, `unpin`.
    pub control: ControlSection,
}

/// Log lines' format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event; colours only on a terminal, a
    /// priority prefix (`<4>`) when stderr is the systemd journal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Line format. Default `text`.
    pub format: LogFormat,
    /// Which events are logged, as `RUST_LOG` (which wins when set):
    /// `info`, `debug`, `sanlb=debug,info`… Default `info`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// `[controller]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerSection {
    /// Address and port of the API. Required (here or `--listen`).
    pub listen: Option<SocketAddr>,
    /// State file, replaced atomically. Default [`DEFAULT_STATE`].
    pub state: PathBuf,
    /// The agents' bearer token. Required (here or `--token-file`).
    pub token_file: Option<PathBuf>,
    /// A read-only bearer token (`/v1/status`, `/metrics`) for Prometheus
    /// and `sanlb status`. Default none.
    pub read_token_file: Option<PathBuf>,
    /// Certificate chain (PEM) to serve HTTPS with; needs `tls_key`.
    /// Default none: plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Connections served at once. Default 1024.
    pub max_connections: usize,
    /// Longest wait for a request's headers, also the idle limit of a
    /// kept-alive connection and the TLS handshake's deadline. Default
    /// `10s`.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// Longest wait for a request's body. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// Rebalance period and length of one window sample. Default `5s`.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Samples averaged. Default 6.
    pub window: usize,
    /// Weight of the normalised variance of utilisation. Default 1.0.
    pub w_var: f64,
    /// Weight of one move. Default 0.01.
    pub w_change: f64,
    /// Smallest fall of the cost for which a new map is adopted. Default
    /// 0.01.
    pub min_gain: f64,
    /// Silence (no heartbeat, no report) after which a gateway is suspect:
    /// its addresses are probed on the data path and move only if it does
    /// not serve them. Default `300ms`.
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
    /// After a start, how long nothing is steered while the agents report
    /// in. Default `3s`.
    #[serde(deserialize_with = "duration")]
    pub startup_grace: Duration,
    /// How long an old owner has to release a moving address before the
    /// move is abandoned. Default `3s`.
    #[serde(deserialize_with = "duration")]
    pub release_timeout: Duration,
    /// How long a probe of a silent gateway may take before another
    /// gateway is asked. Default `1s`.
    #[serde(deserialize_with = "duration")]
    pub probe_timeout: Duration,
    /// How often a silent gateway that still serves is probed again.
    /// Default `1s`.
    #[serde(deserialize_with = "duration")]
    pub reprobe: Duration,
    /// A dead gateway that owns nothing is forgotten after this long (it
    /// stays in status until then); at least the lease. Default `1h`.
    #[serde(deserialize_with = "duration")]
    pub forget_after: Duration,
    /// Unit of assignment, `target` or `pair`. Default `target`.
    pub mode: Mode,
    /// Storage address ranges (CIDR). Default none.
    pub storage: Vec<IpNet>,
    /// Storage addresses known up front. Default none.
    pub targets: Vec<IpAddr>,
    /// Pair mode: iSCSI target names per storage address, which discovery
    /// through the portal lists and logins must name (`{ "198.18.1.1" =
    /// ["iqn.…"] }`). Default none: any name.
    pub target_names: std::collections::BTreeMap<IpAddr, Vec<String>>,
    /// Pair mode: the range data addresses are allocated from (CIDR).
    /// Required in pair mode.
    pub data_pool: Option<IpNet>,
    /// Pair mode: the port of the target software on the data addresses.
    /// Default 3261.
    pub data_port: u16,
    /// A-priori traffic matrix (CSV). Default none.
    pub traffic: Option<PathBuf>,
    /// Use only the a-priori matrix. Default false.
    pub traffic_replace: bool,
    /// Optimiser: `auto`, `exact`, `greedy`, `anneal`, `genetic`, `tabu`.
    /// Default `auto`.
    pub solver: Solver,
    /// Time limit of one optimisation. Default `1s`.
    #[serde(deserialize_with = "duration")]
    pub time_limit: Duration,
    /// Seed of the randomised solvers. Default 0.
    pub seed: u64,
    /// etcd's client URLs (`http://HOST:2379`), a list or one string
    /// separated by commas: run as one of several controllers, one leading,
    /// the state in etcd instead of `state`. Default none: alone.
    #[serde(deserialize_with = "urls")]
    pub etcd: Vec<String>,
    /// sanlb's key prefix in etcd; one per sanlb cluster sharing an etcd.
    /// Default `/sanlb/`.
    pub etcd_prefix: String,
    /// The URL agents and `sanlb status` reach this controller at, published
    /// while it leads (with `etcd`). Default `http://LISTEN` (`https://`
    /// with TLS) when `listen` names an address, else required.
    pub advertise: Option<String>,
    /// Time-to-live of the leader's etcd lease: how long the others wait
    /// for a leader that vanished. Whole seconds. Default `2s`.
    #[serde(deserialize_with = "duration")]
    pub leader_ttl: Duration,
    /// Time etcd is given to answer one request. Default `2s`.
    #[serde(deserialize_with = "duration")]
    pub etcd_timeout: Duration,
    /// `[controller.isns]`: publish the map to an iSNS server.
    pub isns: IsnsSection,
    /// Advise mode: compute and show every decision, enforce none.
    /// Default false.
    pub advise: bool,
    /// Minimum time before the same route may move again (failover
    /// excepted); `"0s"` for none. Default `5m`.
    #[serde(deserialize_with = "duration")]
    pub move_cooldown: Duration,
}

/// `[controller.isns]`: Storage Name Server mode (docs/isns.md).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsnsSection {
    /// The iSNS server, `HOST[:PORT]` (port 3205 by default). Default none:
    /// nothing is published.
    pub server: Option<String>,
    /// The iSCSI name the controller registers as a control node and speaks
    /// as. Default `iqn.2026-01.org.sanlb:controller`.
    pub source: String,
    /// A full sync at least this often, besides one at every new map.
    /// Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub period: Duration,
    /// Prefix of the entities and domains sanlb owns on the server
    /// (`[a-z0-9.-]`, 1 to 16). Default `sanlb`.
    pub prefix: String,
    /// The hosts the server answers: initiator address → its iSCSI
    /// initiator name (`{ "198.18.0.11" = "iqn.…" }`). Default none.
    pub hosts: std::collections::BTreeMap<IpAddr, String>,
}

impl Default for IsnsSection {
    fn default() -> Self {
        let d = crate::controller::isns::IsnsSettings::new("");
        Self {
            server: None,
            source: d.source,
            period: d.period,
            prefix: d.prefix,
            hosts: Default::default(),
        }
    }
}

impl Default for ControllerSection {
    fn default() -> Self {
        Self {
            listen: None,
            state: DEFAULT_STATE.into(),
            token_file: None,
            read_token_file: None,
            tls_cert: None,
            tls_key: None,
            max_connections: server::DEFAULT_MAX_CONNECTIONS,
            header_timeout: server::DEFAULT_HEADER_TIMEOUT,
            body_timeout: server::DEFAULT_BODY_TIMEOUT,
            interval: Duration::from_secs(5),
            window: 6,
            w_var: crate::optimize::DEFAULT_W_VAR,
            w_change: crate::optimize::DEFAULT_W_CHANGE,
            min_gain: 0.01,
            lease: DEFAULT_LEASE,
            startup_grace: Duration::from_secs(3),
            release_timeout: Duration::from_secs(3),
            probe_timeout: Duration::from_secs(1),
            reprobe: Duration::from_secs(1),
            forget_after: Duration::from_secs(3600),
            mode: Mode::Target,
            storage: vec![],
            targets: vec![],
            target_names: Default::default(),
            data_pool: None,
            data_port: crate::portal::DEFAULT_DATA_PORT,
            traffic: None,
            traffic_replace: false,
            solver: Solver::Auto,
            time_limit: Duration::from_secs(1),
            seed: 0,
            etcd: vec![],
            etcd_prefix: crate::cluster::DEFAULT_PREFIX.into(),
            advertise: None,
            leader_ttl: crate::cluster::DEFAULT_TTL,
            etcd_timeout: crate::cluster::DEFAULT_TIMEOUT,
            isns: IsnsSection::default(),
            advise: false,
            move_cooldown: crate::controller::controls::DEFAULT_MOVE_COOLDOWN,
        }
    }
}

/// `[agent]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// The host-facing NIC. Usually given by the service instance
    /// (`sanlb-agent@NIC`) as `--iface`.
    pub iface: Option<String>,
    /// The controller's URL, `http://HOST:PORT` or `https://HOST:PORT`;
    /// every controller of a cluster (a list, or one string separated by
    /// commas): the agent follows the leader among them. Default none:
    /// count only.
    #[serde(deserialize_with = "urls")]
    pub controller: Vec<String>,
    /// This gateway's name in reports; required with `controller`.
    pub gateway: Option<String>,
    /// The agents' bearer token; required with `controller`.
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) an `https://` controller's certificate must
    /// chain to. Default: the system's CA store.
    pub ca_file: Option<PathBuf>,
    /// Relative capacity of this gateway. Default 1.0.
    pub capacity: f64,
    /// Report period. Default `1s`.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Gratuitous ARP / unsolicited NA rounds on acquiring an address.
    /// Default 3.
    pub garp_count: u32,
    /// Time between those rounds. Default `200ms`.
    #[serde(deserialize_with = "duration")]
    pub garp_interval: Duration,
    /// iSCSI TCP ports. Default `[3260]`.
    pub ports: Vec<u16>,
    /// Size of the (initiator, target) table. Default 65536.
    pub max_flows: u32,
    /// XDP attach mode: `auto`, `driver`, `generic`. Default `auto`.
    pub xdp_mode: XdpAttachMode,
    /// Directory of the pinned maps. Default `/sys/fs/bpf/sanlb/<NIC>`.
    pub pin_dir: Option<PathBuf>,
    /// Leave the maps pinned on exit. Default false.
    pub keep_pins: bool,
    /// Serve the agent's own `/metrics` (no token) on this address, e.g.
    /// `127.0.0.1:7391`. Default none.
    pub metrics_listen: Option<SocketAddr>,
    /// Heartbeat period; `0s` sends none. Default `100ms`.
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// Period of the probes of the addresses held, for a second station
    /// answering; `0s` never. Default `2s`.
    #[serde(deserialize_with = "duration")]
    pub self_probe: Duration,
    /// How long a probe collects answers (each of its two phases). Default
    /// `100ms`.
    #[serde(deserialize_with = "duration")]
    pub probe_window: Duration,
    /// On SIGTERM: `keep` the addresses (fail-static) or `handoff` them to
    /// the other gateways first. Default `keep`.
    pub on_stop: OnStop,
    /// Longest hand-off on stop. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub handoff_timeout: Duration,
}

impl Default for AgentSection {
    fn default() -> Self {
        let faults = crate::agent::FaultConfig::default();
        Self {
            iface: None,
            controller: vec![],
            gateway: None,
            token_file: None,
            ca_file: None,
            capacity: 1.0,
            interval: Duration::from_secs(1),
            garp_count: crate::enforce::DEFAULT_GARP_COUNT,
            garp_interval: crate::enforce::DEFAULT_GARP_INTERVAL,
            ports: vec![sanlb_common::DEFAULT_ISCSI_PORT],
            max_flows: sanlb_common::DEFAULT_MAX_FLOWS,
            xdp_mode: XdpAttachMode::Auto,
            pin_dir: None,
            keep_pins: false,
            metrics_listen: None,
            heartbeat: faults.heartbeat,
            self_probe: faults.self_probe,
            probe_window: faults.probe_window,
            on_stop: faults.on_stop,
            handoff_timeout: faults.handoff_timeout,
        }
    }
}

/// `[status]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusSection {
    /// The controller's URL, or every controller of a cluster (a list, or
    /// one string separated by commas): the first that answers is asked,
    /// and a follower's redirect to the leader followed.
    #[serde(deserialize_with = "urls")]
    pub controller: Vec<String>,
    /// A bearer token, the read-only one (or the agents').
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) for an `https://` controller.
    pub ca_file: Option<PathBuf>,
}

/// `[control]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSection {
    /// The controller's URL, or every controller of a cluster (a list, or
    /// one string separated by commas): the leader is found.
    #[serde(deserialize_with = "urls")]
    pub controller: Vec<String>,
    /// The agents' bearer token (the read-only one may not steer).
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) for an `https://` controller.
    pub ca_file: Option<PathBuf>,
}

/// A duration in the one grammar of every flag (`"5s"`, `"250ms"`,
/// `"1m 30s"`), as a string.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a duration as a string, such as \"5s\" or \"250ms\"")
    })?;
    sanlb_common::duration::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

/// URLs: a list of strings, or one string of URLs separated by commas
/// (as the flags take them).
fn urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    let list = match Urls::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a URL, URLs separated by commas, or a list of URLs, as strings",
        )
    })? {
        Urls::One(s) => s.split(',').map(str::to_owned).collect(),
        Urls::Many(v) => v,
    };
    let list: Vec<String> = list.iter().map(|u| u.trim().to_owned()).collect();
    if list.iter().any(String::is_empty) {
        return Err(serde::de::Error::custom("an empty URL"));
    }
    Ok(list)
}

impl ConfigFile {
    /// Parses `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigFileError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            // The key is on that line; the message names it for unknown
            // keys, the line's text does for bad values.
            let key = line
                .and_then(|l| text.lines().nth(l - 1))
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !k.starts_with('['));
            let message = e.message().trim().replace('\n', " ");
            let message = match key {
                Some(k) if !message.contains(&format!("`{k}`")) => format!("{k}: {message}"),
                _ => message,
            };
            ConfigFileError::Parse {
                path: path.to_owned(),
                line,
                message,
            }
        })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// [`DEFAULT_PATH`] if it exists, else every default.
    pub fn load_default() -> Result<Self, ConfigFileError> {
        let path = Path::new(DEFAULT_PATH);
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            _ => Self::load(path),
        }
    }
}

impl FromStr for ConfigFile {
    type Err = ConfigFileError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(Path::new("<text>"), text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        ConfigFile::parse(Path::new("/etc/sanlb/sanlb.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_empty_file_is_every_default() {
        assert_eq!("".parse::<ConfigFile>().unwrap(), ConfigFile::default());
        let d = ConfigFile::default();
        assert_eq!(d.controller.interval, Duration::from_secs(5));
        assert_eq!(d.controller.state, Path::new(DEFAULT_STATE));
        assert_eq!(d.agent.ports, vec![3260]);
        assert_eq!(d.log.level, "info");
    }

    #[test]
    fn every_key_of_a_complete_file() {
        let cfg: ConfigFile = r#"
[log]
format = "json"
level = "debug"

[controller]
listen = "10.0.0.5:7390"
state = "/srv/state.json"
token_file = "/etc/sanlb/token"
read_token_file = "/etc/sanlb/read-token"
tls_cert = "/etc/sanlb/cert.pem"
tls_key = "/etc/sanlb/key.pem"
max_connections = 256
header_timeout = "5s"
body_timeout = "1m"
interval = "10s"
window = 3
w_var = 2.0
w_change = 0.5
min_gain = 0.1
lease = "1500ms"
mode = "pair"
storage = ["198.18.1.0/24", "2001:db8::/64"]
targets = ["198.18.2.1"]
target_names = { "198.18.2.1" = ["iqn.2026-11.test.sanlb:t1"] }
data_pool = "198.18.3.0/24"
data_port = 3262
traffic = "/etc/sanlb/traffic.csv"
traffic_replace = true
solver = "tabu"
time_limit = "250ms"
seed = 7
etcd = ["http://10.0.0.11:2379", "http://10.0.0.12:2379"]
etcd_prefix = "/sanlb/san1/"
advertise = "http://10.0.0.5:7390"
leader_ttl = "3s"
etcd_timeout = "1s"
advise = true
move_cooldown = "2m"

[controller.isns]
server = "10.0.0.9"
source = "iqn.2026-11.test.sanlb:ctl"
period = "30s"
prefix = "lab"
hosts = { "198.18.0.11" = "iqn.2026-11.test.sanlb:h1" }

[agent]
iface = "ens1f0"
controller = "https://ctl:7390,https://ctl2:7390"
gateway = "gw1"
token_file = "/etc/sanlb/token"
ca_file = "/etc/sanlb/ca.pem"
capacity = 2.5
interval = "2s"
garp_count = 5
garp_interval = "100ms"
ports = [3260, 3261]
max_flows = 1024
xdp_mode = "generic"
pin_dir = "/sys/fs/bpf/x"
keep_pins = true
metrics_listen = "127.0.0.1:7391"

[status]
controller = "https://ctl:7390"
token_file = "/etc/sanlb/read-token"
ca_file = "/etc/sanlb/ca.pem"

[control]
controller = "https://ctl:7390"
token_file = "/etc/sanlb/token"
ca_file = "/etc/sanlb/ca.pem"
"#
        .parse()
        .unwrap();
        assert_eq!(cfg.log.format, LogFormat::Json);
        let c = &cfg.controller;
        assert_eq!(c.listen, Some("10.0.0.5:7390".parse().unwrap()));
        assert_eq!(c.max_connections, 256);
        assert_eq!(c.body_timeout, Duration::from_secs(60));
        assert_eq!(c.lease, Duration::from_millis(1500));
        assert_eq!(c.mode, Mode::Pair);
        assert_eq!(c.data_pool, Some("198.18.3.0/24".parse().unwrap()));
        assert_eq!(c.data_port, 3262);
        assert_eq!(
            c.target_names[&"198.18.2.1".parse::<IpAddr>().unwrap()],
            ["iqn.2026-11.test.sanlb:t1"]
        );
        assert_eq!(c.storage.len(), 2);
        assert_eq!(c.solver, Solver::Tabu);
        assert!(c.traffic_replace);
        assert_eq!(c.etcd, ["http://10.0.0.11:2379", "http://10.0.0.12:2379"]);
        assert_eq!(c.etcd_prefix, "/sanlb/san1/");
        assert_eq!(c.advertise.as_deref(), Some("http://10.0.0.5:7390"));
        assert_eq!(c.leader_ttl, Duration::from_secs(3));
        assert_eq!(c.etcd_timeout, Duration::from_secs(1));
        assert_eq!(c.isns.server.as_deref(), Some("10.0.0.9"));
        assert_eq!(c.isns.source, "iqn.2026-11.test.sanlb:ctl");
        assert_eq!(c.isns.period, Duration::from_secs(30));
        assert_eq!(c.isns.prefix, "lab");
        assert_eq!(
            c.isns.hosts[&"198.18.0.11".parse::<IpAddr>().unwrap()],
            "iqn.2026-11.test.sanlb:h1"
        );
        assert!(c.advise);
        assert_eq!(c.move_cooldown, Duration::from_secs(120));
        assert_eq!(
            cfg.control.token_file.as_deref(),
            Some(Path::new("/etc/sanlb/token"))
        );
        let a = &cfg.agent;
        assert_eq!(a.controller, ["https://ctl:7390", "https://ctl2:7390"]);
        assert_eq!(a.ports, vec![3260, 3261]);
        assert_eq!(a.xdp_mode, XdpAttachMode::Generic);
        assert_eq!(a.capacity, 2.5);
        assert_eq!(a.metrics_listen, Some("127.0.0.1:7391".parse().unwrap()));
        assert_eq!(a.garp_interval, Duration::from_millis(100));
        assert_eq!(
            cfg.status.ca_file.as_deref(),
            Some(Path::new("/etc/sanlb/ca.pem"))
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = ConfigFile::load(Path::new("/nonexistent/sanlb.toml")).unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "/nonexistent/sanlb.toml: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = err("[controller]\nlisten = \"127.0.0.1:1\"\n\nintreval = \"5s\"\n");
        assert!(
            e.starts_with("/etc/sanlb/sanlb.toml line 4: ")
                && e.contains("unknown field `intreval`"),
            "{e}"
        );
        let e = err("[agnet]\ngateway = \"gw1\"\n");
        assert!(e.contains("line 1") && e.contains("`agnet`"), "{e}");
    }

    #[test]
    fn a_bad_type_is_named_with_its_line() {
        for (text, line, says) in [
            ("[controller]\nwindow = \"six\"\n", 2, "window: "),
            (
                "[controller]\n\ninterval = 5\n",
                3,
                "interval: expected a duration as a string",
            ),
            ("[agent]\ninterval = \"soon\"\n", 2, "interval: \"soon\""),
            (
                "[controller]\nstorage = [\"198.18.1.0/33\"]\n",
                2,
                "storage: ",
            ),
            (
                "[controller]\nmode = \"both\"\n",
                2,
                "unknown variant `both`",
            ),
            ("[agent]\nports = 3260\n", 2, "ports: "),
            ("[log]\nformat = \"xml\"\n", 2, "unknown variant `xml`"),
            (
                "[agent]\ncontroller = 7390\n",
                2,
                "controller: expected a URL",
            ),
            (
                "[controller]\netcd = \"http://a:2379,\"\n",
                2,
                "etcd: an empty URL",
            ),
        ] {
            let e = err(text);
            assert!(
                e.starts_with(&format!("/etc/sanlb/sanlb.toml line {line}: ")) && e.contains(says),
                "{text:?}: {e}"
            );
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    /// What the package installs parses: the complete examples, and the
    /// commented /etc file with every key uncommented.
    #[test]
    fn the_packaged_files_parse() {
        for text in [
            include_str!("../../packaging/examples/controller.toml"),
            include_str!("../../packaging/examples/agent.toml"),
        ] {
            let cfg: ConfigFile = text.parse().unwrap();
            assert_ne!(cfg, ConfigFile::default());
        }
        let etc = include_str!("../../packaging/sanlb.toml");
        let all: String = etc
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|k| k.contains(" = "))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg: ConfigFile = all.parse().unwrap_or_else(|e| panic!("{e}\n{all}"));
        assert_eq!(
            cfg.controller.header_timeout,
            server::DEFAULT_HEADER_TIMEOUT
        );
        assert_eq!(cfg.agent.gateway.as_deref(), Some("gw1"));
        // As installed, every key commented: the defaults.
        assert_eq!(etc.parse::<ConfigFile>().unwrap(), ConfigFile::default());
    }

    #[test]
    fn invalid_toml_is_refused_with_its_line() {
        let e = err("[controller]\nlisten = \n");
        assert!(e.contains("line 2"), "{e}");
    }
}
