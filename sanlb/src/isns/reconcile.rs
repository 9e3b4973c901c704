//! Make the server's registrations equal a routing map.
//!
//! What sanlb registers (all names start with the configured prefix, by
//! default `sanlb`; anything else on the server is left alone, except as
//! said under "foreign domains"):
//! - entity `sanlb:control` holding sanlb's own node (the client's source
//!   name) with node type Control, so its queries see the whole database;
//! - one entity `sanlb:target:<first target>` per group of targets that
//!   share portals (portals are unique server-wide, and a portal group can
//!   only link a node and a portal of the same entity), holding the target
//!   nodes, their portals, and an explicit portal group for every (target,
//!   portal) pair of the entity: tag 1 where the target is reachable through
//!   the portal, NULL (no access) elsewhere;
//! - one discovery domain `sanlb:dd:<host>|<target>` per (host, target)
//!   pair holding the host, the target and the assigned portal (RFC 4171
//!   §2.2.2: a query scoped to that domain reports only that portal).
//!
//! Foreign domains (not named by sanlb) lose the members that would change
//! what a host sees of sanlb's targets: sanlb's target nodes and portals.
//!
//! Each [`Reconciler::sync`] reads the server's state back, plans the
//! difference, applies it (new registrations and domain members before the
//! removal of old ones), reads again, and repeats until nothing differs (at
//! most [`ReconcilerConfig::max_rounds`] rounds): results are checked, never
//! assumed, and hand-made changes are put right at the next sync.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{
    IsnsError,
    client::{Client, ClientConfig},
    codec::{
        Attr, CodecError, ENTITY_PROTOCOL_ISCSI, Function, MAX_ISCSI_NAME, Request, Status,
        check_string, ip_to_raw, node_type, tag,
    },
    state::{self, DdMember, Obj, RawPortal, ServerState},
};

/// Requests are kept below this payload size: open-isns 0.101 handles
/// messages up to 8 KiB (`ISNS_MAX_MESSAGE`) and echoes registrations in its
/// reply, so half of that leaves room for the answer.
const REQUEST_BUDGET: usize = 4096;
/// Longest discovery domain name (RFC 4171 §6.11.1.2).
const MAX_DD_NAME: usize = 255;

/// A portal: the address and TCP port an initiator logs in to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Portal {
    /// Address.
    pub addr: IpAddr,
    /// TCP port.
    pub port: u16,
}

impl Portal {
    /// A portal.
    pub fn new(addr: IpAddr, port: u16) -> Self {
        Portal { addr, port }
    }

    /// How sanlb registers it: IPv4 as IPv4-mapped, TCP.
    pub fn raw(self) -> RawPortal {
        RawPortal {
            addr: ip_to_raw(self.addr),
            port: u32::from(self.port),
        }
    }
}

impl From<SocketAddr> for Portal {
    fn from(s: SocketAddr) -> Self {
        Portal {
            addr: s.ip(),
            port: s.port(),
        }
    }
}

impl FromStr for Portal {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<SocketAddr>().map(Portal::from)
    }
}

impl fmt::Display for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

/// The routing map as iSNS registrations: every storage target with the
/// portals it is reachable through, and for every host (initiator) the
/// portal it must use for each of its targets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Target iSCSI name → portals.
    pub targets: BTreeMap<String, BTreeSet<Portal>>,
    /// Host iSCSI name → target iSCSI name → assigned portal.
    pub hosts: BTreeMap<String, BTreeMap<String, Portal>>,
}

/// A (host, target) pair for which open-isns will report more than the
/// assigned portal (see [`Desired::ambiguities`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ambiguity {
    /// Host.
    pub host: String,
    /// Target.
    pub target: String,
    /// Every portal the host will see for the target.
    pub portals: BTreeSet<Portal>,
}

impl Desired {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a target reachable through `portals`.
    pub fn add_target(
        &mut self,
        name: impl Into<String>,
        portals: impl IntoIterator<Item = Portal>,
    ) -> &mut Self {
        self.targets.entry(name.into()).or_default().extend(portals);
        self
    }

    /// Assign `portal` to (`host`, `target`).
    pub fn assign(
        &mut self,
        host: impl Into<String>,
        target: impl Into<String>,
        portal: Portal,
    ) -> &mut Self {
        self.hosts
            .entry(host.into())
            .or_default()
            .insert(target.into(), portal);
        self
    }

    /// Check names and references: every name 1 to 223 printable ASCII
    /// bytes, no name both a host and a target, every assignment to a known
    /// target through one of its portals, no port 0 or unspecified address.
    pub fn validate(&self) -> Result<(), IsnsError> {
        let bad = |s: String| Err(IsnsError::Desired(s));
        for (t, portals) in &self.targets {
            check_name("target", t)?;
            for p in portals {
                if p.port == 0 || p.addr.is_unspecified() || p.addr.is_multicast() {
                    return bad(format!("target {t}: portal {p} cannot be logged in to"));
                }
            }
        }
        for (h, assigned) in &self.hosts {
            check_name("host", h)?;
            if self.targets.contains_key(h) {
                return bad(format!("{h} is both a host and a target"));
            }
            for (t, p) in assigned {
                let Some(portals) = self.targets.get(t) else {
                    return bad(format!("host {h}: target {t} is not in the map"));
                };
                if !portals.contains(p) {
                    return bad(format!(
                        "host {h}: portal {p} is not a portal of target {t}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The (host, target) pairs that open-isns 0.101 will not steer exactly.
    ///
    /// open-isns scopes a query to the union of the source's domains
    /// (scope.c): a host sees a target through every portal of the target
    /// that is in any of the host's domains. So when a host is assigned, for
    /// another target, a portal through which this target is reachable too,
    /// it sees both. Giving each (target, gateway) its own portal (address
    /// or port) makes every pair exact.
    pub fn ambiguities(&self) -> Vec<Ambiguity> {
        let mut out = Vec::new();
        for (h, assigned) in &self.hosts {
            let in_domains: BTreeSet<Portal> = assigned.values().copied().collect();
            for t in assigned.keys() {
                let Some(reachable) = self.targets.get(t) else {
                    continue;
                };
                let portals: BTreeSet<Portal> =
                    reachable.intersection(&in_domains).copied().collect();
                if portals.len() > 1 {
                    out.push(Ambiguity {
                        host: h.clone(),
                        target: t.clone(),
                        portals,
                    });
                }
            }
        }
        out
    }
}

pub(crate) fn check_name(what: &'static str, s: &str) -> Result<(), IsnsError> {
    check_string(what, s, MAX_ISCSI_NAME).map_err(|e| IsnsError::Desired(e.to_string()))?;
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IsnsError::Desired(format!(
            "{what} {s:?}: not printable ascii without spaces"
        )));
    }
    Ok(())
}

/// Settings of the reconciler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcilerConfig {
    /// Prefix of every entity and domain sanlb owns (`[a-z0-9.-]`, 1 to 16).
    pub prefix: String,
    /// Read–apply rounds before a sync gives up.
    pub max_rounds: u32,
    /// Most objects of one kind a read accepts.
    pub max_objects: usize,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            prefix: "sanlb".to_string(),
            max_rounds: 3,
            max_objects: 100_000,
        }
    }
}

/// Counters for metrics; shared with whoever exports them.
#[derive(Debug, Default)]
pub struct IsnsCounters {
    syncs: AtomicU64,
    failures: AtomicU64,
    added: AtomicU64,
    removed: AtomicU64,
}

/// A copy of [`IsnsCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Syncs that ended with the server equal to the map.
    pub syncs: u64,
    /// Syncs that failed (server away, refusing, bad replies, no convergence).
    pub failures: u64,
    /// Registrations made: nodes, portals, portal group fixes, domains,
    /// domain members.
    pub added: u64,
    /// Registrations removed: nodes, portals, entities, domains, domain
    /// members.
    pub removed: u64,
}

impl IsnsCounters {
    /// Current values.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            syncs: self.syncs.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            added: self.added.load(Ordering::Relaxed),
            removed: self.removed.load(Ordering::Relaxed),
        }
    }
}

/// What one successful sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Registrations made.
    pub added: u64,
    /// Registrations removed.
    pub removed: u64,
    /// Reads of the server's state (1 when nothing had to change).
    pub rounds: u32,
    /// Requests sent.
    pub requests: u64,
    /// Pairs open-isns will not steer exactly ([`Desired::ambiguities`]).
    pub ambiguous: Vec<Ambiguity>,
}

/// The names sanlb gives its objects.
#[derive(Clone, Debug)]
struct Names {
    prefix: String,
    control: String,
}

impl Names {
    fn owned(&self) -> String {
        format!("{}:", self.prefix)
    }
    fn control_eid(&self) -> String {
        format!("{}:control", self.prefix)
    }
    fn target_eid(&self, first_target: &str) -> String {
        format!("{}:target:{first_target}", self.prefix)
    }
    fn dd_prefix(&self) -> String {
        format!("{}:dd:", self.prefix)
    }
    fn dd_name(&self, host: &str, target: &str) -> String {
        let readable = format!("{}{host}|{target}", self.dd_prefix());
        if readable.len() <= MAX_DD_NAME {
            return readable;
        }
        // FNV-1a 64: stable across releases, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in host.bytes().chain([0]).chain(target.bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{}#{h:016x}", self.dd_prefix())
    }
}

/// An entity's content: target → portals it is reachable through; the
/// entity's portals.
type EntityContent = (BTreeMap<String, BTreeSet<RawPortal>>, BTreeSet<RawPortal>);

/// Where everything of the map goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Layout {
    /// EID → content.
    entities: BTreeMap<String, EntityContent>,
    target_eid: BTreeMap<String, String>,
    portal_eid: BTreeMap<RawPortal, String>,
    /// Domain name → (host, target, portal).
    dds: BTreeMap<String, (String, String, RawPortal)>,
}

impl Layout {
    fn new(desired: &Desired, names: &Names) -> Layout {
        // Group targets that share a portal (union-find over target indices).
        let targets: Vec<&String> = desired.targets.keys().collect();
        let mut parent: Vec<usize> = (0..targets.len()).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        let mut first_user: BTreeMap<RawPortal, usize> = BTreeMap::new();
        for (i, t) in targets.iter().enumerate() {
            for p in &desired.targets[*t] {
                match first_user.get(&p.raw()) {
                    Some(&j) => {
                        let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                        // The smaller index (the first name) stays the root.
                        parent[a.max(b)] = a.min(b);
                    }
                    None => {
                        first_user.insert(p.raw(), i);
                    }
                }
            }
        }
        let mut layout = Layout::default();
        for (i, t) in targets.iter().enumerate() {
            let eid = names.target_eid(targets[root(&mut parent, i)]);
            let raw: BTreeSet<RawPortal> = desired.targets[*t].iter().map(|p| p.raw()).collect();
            let entry = layout.entities.entry(eid.clone()).or_default();
            entry.1.extend(raw.iter().copied());
            for p in &raw {
                layout.portal_eid.insert(*p, eid.clone());
            }
            entry.0.insert((*t).clone(), raw);
            layout.target_eid.insert((*t).clone(), eid);
        }
        for (h, assigned) in &desired.hosts {
            for (t, p) in assigned {
                layout
                    .dds
                    .insert(names.dd_name(h, t), (h.clone(), t.clone(), p.raw()));
            }
        }
        layout
    }
}

/// One change to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    DeregNode(String),
    DeregPortal(RawPortal),
    DeregEntity(String),
    /// Register (or update) an entity with all its nodes, portals and portal
    /// groups; `added` counts what was missing or wrong.
    RegEntity {
        eid: String,
        nodes: Vec<String>,
        portals: Vec<RawPortal>,
        pgs: Vec<(String, RawPortal, Option<u32>)>,
        added: u64,
    },
    CreateDd {
        name: String,
        nodes: Vec<String>,
        portals: Vec<RawPortal>,
    },
    AddDdMembers {
        id: u32,
        name: String,
        nodes: Vec<String>,
        portals: Vec<RawPortal>,
    },
    RemoveDdMembers {
        id: u32,
        name: String,
        members: Vec<DdMember>,
    },
    DeleteDd {
        id: u32,
        name: String,
    },
}

impl Op {
    fn counts(&self) -> (u64, u64) {
        match self {
            Op::DeregNode(_) | Op::DeregPortal(_) | Op::DeregEntity(_) | Op::DeleteDd { .. } => {
                (0, 1)
            }
            Op::RegEntity { added, .. } => (*added, 0),
            Op::CreateDd { nodes, portals, .. } => (1 + (nodes.len() + portals.len()) as u64, 0),
            Op::AddDdMembers { nodes, portals, .. } => ((nodes.len() + portals.len()) as u64, 0),
            Op::RemoveDdMembers { members, .. } => (0, members.len() as u64),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[RawPortal]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Op::DeregNode(n) => write!(f, "deregister node {n}"),
            Op::DeregPortal(p) => write!(f, "deregister portal {p}"),
            Op::DeregEntity(e) => write!(f, "deregister entity {e}"),
            Op::RegEntity {
                eid,
                nodes,
                portals,
                ..
            } => {
                write!(
                    f,
                    "register entity {eid}: nodes {nodes:?}, portals [{}]",
                    list(portals)
                )
            }
            Op::CreateDd {
                name,
                nodes,
                portals,
            } => {
                write!(f, "create domain {name}: {nodes:?}, [{}]", list(portals))
            }
            Op::AddDdMembers {
                id,
                name,
                nodes,
                portals,
            } => {
                write!(
                    f,
                    "add to domain {id} ({name}): {nodes:?}, [{}]",
                    list(portals)
                )
            }
            Op::RemoveDdMembers { id, name, members } => {
                write!(f, "remove from domain {id} ({name}): {members:?}")
            }
            Op::DeleteDd { id, name } => write!(f, "delete domain {id} ({name})"),
        }
    }
}

/// The changes that make `state` equal `layout` (pure; ordered: misplaced
/// objects out, registrations, domain additions, domain removals, stale
/// objects out).
fn plan(layout: &Layout, state: &ServerState, names: &Names) -> Vec<Op> {
    let owned = names.owned();
    let control_eid = names.control_eid();
    let is_ours = |eid: &Option<String>| eid.as_deref().is_some_and(|e| e.starts_with(&owned));
    let mut ops = Vec::new();
    let mut gone_nodes: BTreeSet<&str> = BTreeSet::new();
    let mut gone_portals: BTreeSet<RawPortal> = BTreeSet::new();

    // 1. Desired objects registered in another entity: out first (a node or
    //    portal cannot move between entities).
    for (t, eid) in &layout.target_eid {
        if let Some(n) = state.nodes.get(t)
            && n.entity.as_deref() != Some(eid)
        {
            ops.push(Op::DeregNode(t.clone()));
            gone_nodes.insert(t);
        }
    }
    for (p, eid) in &layout.portal_eid {
        if let Some(s) = state.portals.get(p)
            && s.entity.as_deref() != Some(eid)
        {
            ops.push(Op::DeregPortal(*p));
            gone_portals.insert(*p);
        }
    }

    // 2. Entities, nodes, portals, portal groups.
    for (eid, (targets, portals)) in &layout.entities {
        let mut added = 0u64;
        for (t, reachable) in targets {
            let want: BTreeMap<RawPortal, u32> = reachable.iter().map(|p| (*p, 1)).collect();
            match state.nodes.get(t) {
                Some(n) if !gone_nodes.contains(t.as_str()) => {
                    // Groups with portals about to be deregistered (strays
                    // in this entity) vanish with them.
                    let have: BTreeMap<RawPortal, u32> = n
                        .portals
                        .iter()
                        .filter(|(q, _)| portals.contains(q))
                        .map(|(q, t)| (*q, *t))
                        .collect();
                    added += u64::from(n.node_type != Some(node_type::TARGET));
                    added += u64::from(have != want);
                }
                _ => added += 1,
            }
        }
        for p in portals {
            if !state.portals.contains_key(p) || gone_portals.contains(p) {
                added += 1;
            }
        }
        if added > 0 || !state.entities.contains_key(eid) {
            let mut pgs = Vec::new();
            for (t, reachable) in targets {
                for p in portals {
                    pgs.push((t.clone(), *p, reachable.contains(p).then_some(1)));
                }
            }
            ops.push(Op::RegEntity {
                eid: eid.clone(),
                nodes: targets.keys().cloned().collect(),
                portals: portals.iter().copied().collect(),
                pgs,
                added,
            });
        }
    }

    // 3. Domain additions (before removals: a moved host sees its new portal
    //    before it loses the old one).
    let dd_prefix = names.dd_prefix();
    let mut by_name: BTreeMap<&str, u32> = BTreeMap::new();
    let mut duplicate: BTreeSet<u32> = BTreeSet::new();
    for (id, dd) in &state.dds {
        if let Some(n) = dd.name.as_deref()
            && by_name.insert(n, *id).is_some()
        {
            duplicate.insert(*id);
        }
    }
    for (name, (h, t, p)) in &layout.dds {
        let nodes = [h.clone(), t.clone()];
        match by_name.get(name.as_str()) {
            None => ops.push(Op::CreateDd {
                name: name.clone(),
                nodes: nodes.to_vec(),
                portals: vec![*p],
            }),
            Some(id) => {
                let dd = &state.dds[id];
                let have_nodes = dd.node_names();
                let nodes: Vec<String> = nodes
                    .into_iter()
                    .filter(|n| !have_nodes.contains(n.as_str()))
                    .collect();
                let portals: Vec<RawPortal> = [*p]
                    .into_iter()
                    .filter(|p| !dd.portals().contains(p))
                    .collect();
                if !nodes.is_empty() || !portals.is_empty() {
                    ops.push(Op::AddDdMembers {
                        id: *id,
                        name: name.clone(),
                        nodes,
                        portals,
                    });
                }
            }
        }
    }

    // 4. Domain removals.
    let our_nodes: BTreeSet<&str> = state
        .nodes
        .iter()
        .filter(|(n, s)| is_ours(&s.entity) && **n != names.control)
        .map(|(n, _)| n.as_str())
        .chain(layout.target_eid.keys().map(String::as_str))
        .collect();
    let our_portals: BTreeSet<RawPortal> = state
        .portals
        .iter()
        .filter(|(_, s)| is_ours(&s.entity))
        .map(|(p, _)| *p)
        .chain(layout.portal_eid.keys().copied())
        .collect();
    for (id, dd) in &state.dds {
        let name = dd.name.clone().unwrap_or_default();
        let wanted = if duplicate.contains(id) {
            None
        } else {
            layout.dds.get(&name)
        };
        if name.starts_with(&dd_prefix) && wanted.is_none() {
            ops.push(Op::DeleteDd { id: *id, name });
            continue;
        }
        let stale: Vec<DdMember> = dd
            .members
            .iter()
            .filter(|m| match (wanted, m) {
                (Some((h, t, _)), DdMember::Node { name: Some(n), .. }) => n != h && n != t,
                (
                    Some((_, _, p)),
                    DdMember::Portal {
                        portal: Some(q), ..
                    },
                ) => p != q,
                (Some(_), _) => true,
                (None, DdMember::Node { name: Some(n), .. }) => our_nodes.contains(n.as_str()),
                (
                    None,
                    DdMember::Portal {
                        portal: Some(q), ..
                    },
                ) => our_portals.contains(q),
                (None, _) => false,
            })
            .cloned()
            .collect();
        if !stale.is_empty() {
            ops.push(Op::RemoveDdMembers {
                id: *id,
                name,
                members: stale,
            });
        }
    }

    // 5. Stale registrations in sanlb's entities.
    let stale_entities: BTreeSet<&str> = state
        .entities
        .keys()
        .filter(|e| {
            e.starts_with(&owned) && **e != control_eid && !layout.entities.contains_key(*e)
        })
        .map(String::as_str)
        .collect();
    for (n, s) in &state.nodes {
        let Some(e) = s.entity.as_deref() else {
            continue;
        };
        if !e.starts_with(&owned) || stale_entities.contains(e) || gone_nodes.contains(n.as_str()) {
            continue;
        }
        let wanted = if e == control_eid {
            *n == names.control
        } else {
            layout.target_eid.get(n).map(String::as_str) == Some(e)
        };
        if !wanted {
            ops.push(Op::DeregNode(n.clone()));
        }
    }
    for (p, s) in &state.portals {
        let Some(e) = s.entity.as_deref() else {
            continue;
        };
        if !e.starts_with(&owned) || stale_entities.contains(e) || gone_portals.contains(p) {
            continue;
        }
        if layout.portal_eid.get(p).map(String::as_str) != Some(e) {
            ops.push(Op::DeregPortal(*p));
        }
    }
    for e in stale_entities {
        ops.push(Op::DeregEntity(e.to_string()));
    }
    ops
}

/// Keeps an iSNS server's registrations equal to a [`Desired`] map.
#[derive(Debug)]
pub struct Reconciler {
    client: Client,
    names: Names,
    config: ReconcilerConfig,
    counters: Arc<IsnsCounters>,
}

impl Reconciler {
    /// A reconciler speaking as `client.source` (registered as a control
    /// node). Nothing is sent before the first [`Reconciler::sync`].
    pub fn new(client: ClientConfig, config: ReconcilerConfig) -> Result<Self, IsnsError> {
        let prefix_ok = !config.prefix.is_empty()
            && config.prefix.len() <= 16
            && config
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !prefix_ok {
            return Err(IsnsError::Config {
                field: "prefix",
                why: format!("{:?}: 1 to 16 of [a-z0-9.-]", config.prefix),
            });
        }
        if config.max_rounds == 0 || config.max_objects == 0 {
            return Err(IsnsError::Config {
                field: "max_rounds/max_objects",
                why: "must be positive".to_string(),
            });
        }
        check_name("source", &client.source).map_err(|e| IsnsError::Config {
            field: "source",
            why: e.to_string(),
        })?;
        let names = Names {
            prefix: config.prefix.clone(),
            control: client.source.clone(),
        };
        Ok(Reconciler {
            client: Client::new(client),
            names,
            config,
            counters: Arc::default(),
        })
    }

    /// The counters, to export as metrics.
    pub fn counters(&self) -> Arc<IsnsCounters> {
        Arc::clone(&self.counters)
    }

    /// Make the server's registrations equal `desired`. On error nothing is
    /// assumed: the next sync reads everything again (after a server
    /// restart that is a full resynchronisation).
    pub async fn sync(&mut self, desired: &Desired) -> Result<SyncReport, IsnsError> {
        let result = self.sync_inner(desired).await;
        match &result {
            Ok(report) => {
                self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                if report.added + report.removed > 0 {
                    tracing::info!(
                        added = report.added,
                        removed = report.removed,
                        rounds = report.rounds,
                        requests = report.requests,
                        "isns: registrations synchronised"
                    );
                }
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.client.disconnect();
                tracing::warn!(error = %e, "isns: sync failed");
            }
        }
        result
    }

    /// Read the server's state as sanlb's control node sees it (registers
    /// the control node first).
    pub async fn read_state(&mut self) -> Result<ServerState, IsnsError> {
        let mut requests = 0;
        self.ensure_control(&mut requests).await?;
        state::read(&mut self.client, self.config.max_objects, &mut requests).await
    }

    async fn sync_inner(&mut self, desired: &Desired) -> Result<SyncReport, IsnsError> {
        desired.validate()?;
        let layout = Layout::new(desired, &self.names);
        let mut report = SyncReport {
            ambiguous: desired.ambiguities(),
            ..Default::default()
        };
        for a in &report.ambiguous {
            tracing::warn!(host = %a.host, target = %a.target, portals = ?a.portals,
                "isns: open-isns will show this host more than its assigned portal");
        }
        self.ensure_control(&mut report.requests).await?;
        for round in 1..=self.config.max_rounds + 1 {
            let state = state::read(
                &mut self.client,
                self.config.max_objects,
                &mut report.requests,
            )
            .await?;
            let ops = plan(&layout, &state, &self.names);
            if ops.is_empty() {
                report.rounds = round;
                self.refresh(&layout, &state, &mut report.requests).await?;
                return Ok(report);
            }
            if round > self.config.max_rounds {
                let remaining: Vec<String> = ops.iter().map(ToString::to_string).collect();
                return Err(IsnsError::NotConverged {
                    rounds: self.config.max_rounds,
                    remaining: remaining.join("; "),
                });
            }
            for op in &ops {
                tracing::debug!(%op, "isns");
                self.apply(op, &mut report.requests).await?;
                let (a, r) = op.counts();
                report.added += a;
                report.removed += r;
                self.counters.added.fetch_add(a, Ordering::Relaxed);
                self.counters.removed.fetch_add(r, Ordering::Relaxed);
            }
        }
        unreachable!("the loop returns in its last round")
    }

    fn request(&self, function: Function, key: Vec<Attr>, operating: Vec<Attr>) -> Request {
        Request::new(function, &self.names.control, key, operating)
    }

    /// Register sanlb's control node (idempotent; it also refreshes the
    /// control entity's registration period).
    async fn ensure_control(&mut self, requests: &mut u64) -> Result<(), IsnsError> {
        let eid = self.names.control_eid();
        let req = self.request(
            Function::DevAttrReg,
            vec![Attr::string(tag::ENTITY_ID, &eid).map_err(codec_err)?],
            vec![
                Attr::string(tag::ENTITY_ID, &eid).map_err(codec_err)?,
                Attr::u32(tag::ENTITY_PROTOCOL, ENTITY_PROTOCOL_ISCSI),
                Attr::string(tag::ISCSI_NAME, &self.names.control).map_err(codec_err)?,
                Attr::u32(tag::ISCSI_NODE_TYPE, node_type::CONTROL),
            ],
        );
        *requests += 1;
        let resp = self.client.call(&req).await?;
        if resp.status == Status::INVALID_REGISTRATION {
            // The name is registered in another entity: take it back.
            tracing::warn!(node = %self.names.control, "isns: control node found in another entity, re-registering it");
            self.apply(&Op::DeregNode(self.names.control.clone()), requests)
                .await?;
            *requests += 1;
            self.client.call_ok(&req, "control node").await?;
        } else if resp.status != Status::SUCCESS {
            return Err(self
                .client
                .status_error(Function::DevAttrReg, resp.status, "control node")
                .into());
        }
        Ok(())
    }

    /// open-isns refreshes only the entity of a message's source: touch each
    /// of sanlb's target entities that would expire, speaking as one of its
    /// nodes.
    async fn refresh(
        &mut self,
        layout: &Layout,
        state: &ServerState,
        requests: &mut u64,
    ) -> Result<(), IsnsError> {
        for (eid, (targets, _)) in &layout.entities {
            let expires = state.entities.get(eid).and_then(|e| e.period).unwrap_or(0) > 0;
            let Some(node) = targets.keys().next().filter(|_| expires) else {
                continue;
            };
            let req = Request::new(
                Function::DevAttrQry,
                node,
                vec![Attr::string(tag::ISCSI_NAME, node).map_err(codec_err)?],
                vec![Attr::nil(tag::ISCSI_NAME)],
            );
            *requests += 1;
            let resp = self.client.call(&req).await?;
            if resp.status != Status::SUCCESS && resp.status != Status::NO_SUCH_ENTRY {
                return Err(self
                    .client
                    .status_error(Function::DevAttrQry, resp.status, eid)
                    .into());
            }
        }
        Ok(())
    }

    async fn apply(&mut self, op: &Op, requests: &mut u64) -> Result<(), IsnsError> {
        let ctx = op.to_string();
        let reqs = self.requests_for(op)?;
        for req in reqs {
            *requests += 1;
            let resp = self.client.call_ok(&req, &ctx).await?;
            if let Op::CreateDd {
                name,
                nodes,
                portals,
            } = op
            {
                let objs = state::group(&resp.operating).map_err(|why| IsnsError::Reply {
                    function: Function::DdReg,
                    why,
                })?;
                let id = objs
                    .iter()
                    .find_map(|o| match o {
                        Obj::Dd { id, state } if state.name.as_deref() == Some(name) => Some(*id),
                        _ => None,
                    })
                    .ok_or_else(|| IsnsError::Reply {
                        function: Function::DdReg,
                        why: format!("creating domain {name}: no domain id in the reply"),
                    })?;
                // Members in a second message: open-isns drops nodes that
                // are already in another domain from a DDReg that creates a
                // domain (dd.c marks membership under id 0 before the id is
                // assigned).
                let add = Op::AddDdMembers {
                    id,
                    name: name.clone(),
                    nodes: nodes.clone(),
                    portals: portals.clone(),
                };
                for req in self.requests_for(&add)? {
                    *requests += 1;
                    self.client.call_ok(&req, &ctx).await?;
                }
            }
        }
        Ok(())
    }

    /// The requests of one op, each within [`REQUEST_BUDGET`].
    fn requests_for(&self, op: &Op) -> Result<Vec<Request>, IsnsError> {
        let s = |t, v: &str| Attr::string(t, v).map_err(codec_err);
        let pack = |function, key: Vec<Attr>, head: Vec<Attr>, objects: Vec<Vec<Attr>>| {
            let mut out: Vec<Request> = Vec::new();
            let mut cur = self.request(function, key.clone(), head.clone());
            for obj in objects {
                let mut next = cur.clone();
                next.operating.extend(obj.iter().cloned());
                if next.payload_len() > REQUEST_BUDGET && cur.operating.len() > head.len() {
                    out.push(cur);
                    cur = self.request(function, key.clone(), head.clone());
                    cur.operating.extend(obj);
                } else {
                    cur = next;
                }
            }
            if cur.operating.len() > head.len() || out.is_empty() {
                out.push(cur);
            }
            out
        };
        Ok(match op {
            Op::DeregNode(n) => {
                vec![self.request(Function::DevDereg, vec![], vec![s(tag::ISCSI_NAME, n)?])]
            }
            Op::DeregPortal(p) => vec![self.request(
                Function::DevDereg,
                vec![],
                p.attrs(tag::PORTAL_IP, tag::PORTAL_PORT).to_vec(),
            )],
            Op::DeregEntity(e) => {
                vec![self.request(Function::DevDereg, vec![], vec![s(tag::ENTITY_ID, e)?])]
            }
            Op::RegEntity {
                eid,
                nodes,
                portals,
                pgs,
                ..
            } => {
                let mut objects = Vec::new();
                for n in nodes {
                    objects.push(vec![
                        s(tag::ISCSI_NAME, n)?,
                        Attr::u32(tag::ISCSI_NODE_TYPE, node_type::TARGET),
                    ]);
                }
                for p in portals {
                    objects.push(p.attrs(tag::PORTAL_IP, tag::PORTAL_PORT).to_vec());
                }
                for (n, p, t) in pgs {
                    let mut o = vec![s(tag::PG_ISCSI_NAME, n)?];
                    o.extend(p.attrs(tag::PG_PORTAL_IP, tag::PG_PORTAL_PORT));
                    o.push(match t {
                        Some(t) => Attr::u32(tag::PG_TAG, *t),
                        None => Attr::nil(tag::PG_TAG),
                    });
                    objects.push(o);
                }
                pack(
                    Function::DevAttrReg,
                    vec![s(tag::ENTITY_ID, eid)?],
                    vec![
                        s(tag::ENTITY_ID, eid)?,
                        Attr::u32(tag::ENTITY_PROTOCOL, ENTITY_PROTOCOL_ISCSI),
                    ],
                    objects,
                )
            }
            Op::CreateDd { name, .. } => {
                vec![self.request(Function::DdReg, vec![], vec![s(tag::DD_NAME, name)?])]
            }
            Op::AddDdMembers {
                id, nodes, portals, ..
            } => {
                let mut objects = Vec::new();
                for n in nodes {
                    objects.push(vec![s(tag::DD_MEMBER_ISCSI_NAME, n)?]);
                }
                for p in portals {
                    objects.push(
                        p.attrs(tag::DD_MEMBER_PORTAL_IP, tag::DD_MEMBER_PORTAL_PORT)
                            .to_vec(),
                    );
                }
                pack(
                    Function::DdReg,
                    vec![Attr::u32(tag::DD_ID, *id)],
                    vec![Attr::u32(tag::DD_ID, *id)],
                    objects,
                )
            }
            Op::RemoveDdMembers { id, members, .. } => {
                let mut objects = Vec::new();
                for m in members {
                    objects.push(match m {
                        DdMember::Node { name: Some(n), .. } => {
                            vec![s(tag::DD_MEMBER_ISCSI_NAME, n)?]
                        }
                        DdMember::Node { index: Some(i), .. } => {
                            vec![Attr::u32(tag::DD_MEMBER_ISCSI_INDEX, *i)]
                        }
                        DdMember::Portal {
                            portal: Some(p), ..
                        } => p
                            .attrs(tag::DD_MEMBER_PORTAL_IP, tag::DD_MEMBER_PORTAL_PORT)
                            .to_vec(),
                        DdMember::Portal { index: Some(i), .. } => {
                            vec![Attr::u32(tag::DD_MEMBER_PORTAL_INDEX, *i)]
                        }
                        _ => continue,
                    });
                }
                if objects.is_empty() {
                    // An empty DDDereg deletes the whole domain: never send one.
                    return Ok(Vec::new());
                }
                pack(
                    Function::DdDereg,
                    vec![Attr::u32(tag::DD_ID, *id)],
                    vec![],
                    objects,
                )
            }
            Op::DeleteDd { id, .. } => {
                vec![self.request(Function::DdDereg, vec![Attr::u32(tag::DD_ID, *id)], vec![])]
            }
        })
    }
}

fn codec_err(e: CodecError) -> IsnsError {
    IsnsError::Desired(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isns::state::{EntityState, NodeState, PortalState};

    fn p(s: &str) -> Portal {
        s.parse().unwrap()
    }

    fn names() -> Names {
        Names {
            prefix: "sanlb".into(),
            control: "iqn.sanlb:ctl".into(),
        }
    }

    fn desired() -> Desired {
        let mut d = Desired::new();
        d.add_target("t1", [p("198.18.0.1:3261"), p("198.18.0.2:3261")])
            .add_target("t2", [p("198.18.0.1:3262"), p("198.18.0.2:3262")])
            .assign("h1", "t1", p("198.18.0.1:3261"))
            .assign("h1", "t2", p("198.18.0.2:3262"));
        d
    }

    /// The state the plan of `layout` leads to, as the server would show it.
    fn applied(layout: &Layout, n: &Names) -> ServerState {
        let mut st = ServerState::default();
        st.entities.insert(n.control_eid(), EntityState::default());
        st.nodes.insert(
            n.control.clone(),
            NodeState {
                entity: Some(n.control_eid()),
                node_type: Some(4),
                ..Default::default()
            },
        );
        for (eid, (targets, portals)) in &layout.entities {
            st.entities.insert(eid.clone(), EntityState::default());
            for (t, reach) in targets {
                st.nodes.insert(
                    t.clone(),
                    NodeState {
                        entity: Some(eid.clone()),
                        node_type: Some(1),
                        portals: reach.iter().map(|p| (*p, 1)).collect(),
                    },
                );
            }
            for q in portals {
                st.portals.insert(
                    *q,
                    PortalState {
                        entity: Some(eid.clone()),
                    },
                );
            }
        }
        for (i, (name, (h, t, q))) in layout.dds.iter().enumerate() {
            st.dds.insert(
                i as u32 + 1,
                state::DdState {
                    name: Some(name.clone()),
                    members: vec![
                        DdMember::Node {
                            index: None,
                            name: Some(h.clone()),
                        },
                        DdMember::Node {
                            index: None,
                            name: Some(t.clone()),
                        },
                        DdMember::Portal {
                            index: None,
                            portal: Some(*q),
                        },
                    ],
                },
            );
        }
        st
    }

    #[test]
    fn empty_server_gets_everything_and_a_matching_server_nothing() {
        let n = names();
        let layout = Layout::new(&desired(), &n);
        assert_eq!(
            layout.entities.len(),
            2,
            "distinct portals: one entity per target"
        );
        let ops = plan(&layout, &ServerState::default(), &n);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::RegEntity { .. }))
                .count(),
            2
        );
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::CreateDd { .. }))
                .count(),
            2
        );
        assert!(plan(&layout, &applied(&layout, &n), &n).is_empty());
    }

    #[test]
    fn shared_portals_share_an_entity_with_deny_groups() {
        let mut d = Desired::new();
        d.add_target("t1", [p("198.18.0.1:3260")])
            .add_target("t2", [p("198.18.0.1:3260"), p("198.18.0.2:3260")]);
        let layout = Layout::new(&d, &names());
        assert_eq!(
            layout.entities.keys().collect::<Vec<_>>(),
            ["sanlb:target:t1"]
        );
        let ops = plan(&layout, &ServerState::default(), &names());
        let Op::RegEntity { pgs, .. } = &ops[0] else {
            panic!("{ops:?}")
        };
        let deny: Vec<_> = pgs.iter().filter(|(_, _, t)| t.is_none()).collect();
        assert_eq!(
            deny,
            [&("t1".to_string(), p("198.18.0.2:3260").raw(), None)]
        );
    }

    #[test]
    fn moving_a_host_adds_then_removes_the_portal_member() {
        let n = names();
        let before = Layout::new(&desired(), &n);
        let st = applied(&before, &n);
        let mut d = desired();
        d.assign("h1", "t1", p("198.18.0.2:3261"));
        let ops = plan(&Layout::new(&d, &n), &st, &n);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(
            matches!(&ops[0], Op::AddDdMembers { portals, nodes, .. } if nodes.is_empty() && portals == &[p("198.18.0.2:3261").raw()])
        );
        assert!(
            matches!(&ops[1], Op::RemoveDdMembers { members, .. } if members == &[DdMember::Portal { index: None, portal: Some(p("198.18.0.1:3261").raw()) }])
        );
    }

    #[test]
    fn strays_are_removed() {
        let n = names();
        let layout = Layout::new(&desired(), &n);
        let mut st = applied(&layout, &n);
        // A stray member in a sanlb domain, a foreign domain with a sanlb
        // target, a hand-registered portal in a sanlb entity, a stale sanlb
        // domain and entity, a foreign entity left alone.
        let stray = p("198.18.0.9:3260").raw();
        st.dds.get_mut(&1).unwrap().members.push(DdMember::Portal {
            index: Some(7),
            portal: Some(stray),
        });
        st.dds.insert(
            50,
            state::DdState {
                name: Some("hand".into()),
                members: vec![
                    DdMember::Node {
                        index: None,
                        name: Some("t1".into()),
                    },
                    DdMember::Node {
                        index: None,
                        name: Some("other".into()),
                    },
                ],
            },
        );
        st.dds.insert(
            51,
            state::DdState {
                name: Some("sanlb:dd:old|t1".into()),
                members: vec![],
            },
        );
        st.portals.insert(
            stray,
            PortalState {
                entity: Some("sanlb:target:t1".into()),
            },
        );
        st.entities
            .insert("sanlb:target:gone".into(), EntityState::default());
        st.entities.insert("foreign".into(), EntityState::default());
        st.nodes.insert(
            "f".into(),
            NodeState {
                entity: Some("foreign".into()),
                ..Default::default()
            },
        );
        let ops = plan(&layout, &st, &n);
        let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
        assert_eq!(ops.len(), 5, "{text:#?}");
        assert!(ops.contains(&Op::RemoveDdMembers {
            id: 1,
            name: st.dds[&1].name.clone().unwrap(),
            members: vec![DdMember::Portal {
                index: Some(7),
                portal: Some(stray)
            }]
        }));
        assert!(ops.contains(&Op::RemoveDdMembers {
            id: 50,
            name: "hand".into(),
            members: vec![DdMember::Node {
                index: None,
                name: Some("t1".into())
            }]
        }));
        assert!(ops.contains(&Op::DeleteDd {
            id: 51,
            name: "sanlb:dd:old|t1".into()
        }));
        assert!(ops.contains(&Op::DeregPortal(stray)));
        assert!(ops.contains(&Op::DeregEntity("sanlb:target:gone".into())));
    }

    #[test]
    fn wrong_portal_groups_are_rewritten() {
        let n = names();
        let layout = Layout::new(&desired(), &n);
        let mut st = applied(&layout, &n);
        st.nodes
            .get_mut("t1")
            .unwrap()
            .portals
            .remove(&p("198.18.0.2:3261").raw());
        let ops = plan(&layout, &st, &n);
        assert!(
            matches!(&ops[..], [Op::RegEntity { eid, added: 1, .. }] if eid == "sanlb:target:t1"),
            "{ops:?}"
        );
    }

    #[test]
    fn validation_and_ambiguity() {
        let mut d = desired();
        assert!(d.validate().is_ok());
        assert!(d.ambiguities().is_empty());
        d.assign("h2", "t1", p("198.18.0.7:3260"));
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("not a portal of target t1")
        );
        let mut d = Desired::new();
        d.add_target("t1", [p("198.18.0.1:3260"), p("198.18.0.2:3260")])
            .add_target("t2", [p("198.18.0.1:3260"), p("198.18.0.2:3260")])
            .assign("h", "t1", p("198.18.0.1:3260"))
            .assign("h", "t2", p("198.18.0.2:3260"));
        assert_eq!(d.ambiguities().len(), 2);
        let mut d = Desired::new();
        d.add_target("t", [p("198.18.0.1:3260")])
            .assign("t", "t", p("198.18.0.1:3260"));
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("both a host and a target")
        );
        let mut d = Desired::new();
        d.add_target("bad name", []);
        assert!(d.validate().is_err());
    }

    #[test]
    fn long_names_hash_into_the_domain_name() {
        let n = names();
        let long = format!("iqn.2024-01.test:{}", "x".repeat(200));
        let name = n.dd_name(&long, &long);
        assert!(
            name.len() <= MAX_DD_NAME && name.starts_with("sanlb:dd:#"),
            "{name}"
        );
        assert_eq!(name, n.dd_name(&long, &long));
        assert_ne!(name, n.dd_name(&long, "t"));
    }
}
