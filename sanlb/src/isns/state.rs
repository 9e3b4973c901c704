//! What the server holds: its objects read back one by one (DevGetNext, then
//! a DevAttrQry per node and portal for its entity and portal groups), as a
//! control node, whose queries are not scoped by discovery domains.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use super::{
    IsnsError,
    client::Client,
    codec::{Attr, Function, Request, Status, ip_from_raw, tag},
};

/// A portal as the server identifies it: the 16 address bytes exactly as
/// stored (open-isns compares them byte for byte, so `::ffff:a.b.c.d` and
/// `::a.b.c.d` are two portals) and the port word (bit 16 = UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RawPortal {
    /// Address bytes.
    pub addr: [u8; 16],
    /// Port word.
    pub port: u32,
}

impl RawPortal {
    /// The address.
    pub fn ip(&self) -> IpAddr {
        ip_from_raw(self.addr)
    }

    /// The two attributes naming it under the given tags.
    pub(crate) fn attrs(&self, ip_tag: u32, port_tag: u32) -> [Attr; 2] {
        [
            Attr::ip_raw(ip_tag, self.addr),
            Attr::u32(port_tag, self.port),
        ]
    }
}

impl fmt::Display for RawPortal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            IpAddr::V4(v4) => write!(f, "{v4}:{}", self.port & 0xffff)?,
            IpAddr::V6(v6) => write!(f, "[{v6}]:{}", self.port & 0xffff)?,
        }
        if self.port & 0x1_0000 != 0 {
            f.write_str("/udp")?;
        }
        if self.ip().is_ipv4() && self.addr[10] == 0 {
            f.write_str(" (v4-compatible)")?;
        }
        Ok(())
    }
}

/// A network entity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntityState {
    /// Registration period in seconds, when the server expires it.
    pub period: Option<u32>,
}

/// An iSCSI storage node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The entity holding it.
    pub entity: Option<String>,
    /// Node type bitmap.
    pub node_type: Option<u32>,
    /// Portals it is reachable through: portal groups with a non-NULL tag.
    pub portals: BTreeMap<RawPortal, u32>,
}

/// A portal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortalState {
    /// The entity holding it.
    pub entity: Option<String>,
}

/// A member of a discovery domain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DdMember {
    /// A storage node, by name when the server gives one.
    Node {
        /// Node index.
        index: Option<u32>,
        /// iSCSI name.
        name: Option<String>,
    },
    /// A portal.
    Portal {
        /// Portal index.
        index: Option<u32>,
        /// Address and port.
        portal: Option<RawPortal>,
    },
}

/// A discovery domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DdState {
    /// Symbolic name.
    pub name: Option<String>,
    /// Members in the server's order.
    pub members: Vec<DdMember>,
}

impl DdState {
    /// Node members by name.
    pub fn node_names(&self) -> BTreeSet<&str> {
        self.members
            .iter()
            .filter_map(|m| match m {
                DdMember::Node { name: Some(n), .. } => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Portal members by address.
    pub fn portals(&self) -> BTreeSet<RawPortal> {
        self.members
            .iter()
            .filter_map(|m| match m {
                DdMember::Portal {
                    portal: Some(p), ..
                } => Some(*p),
                _ => None,
            })
            .collect()
    }
}

/// Everything the server holds, as far as sanlb reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerState {
    /// Entities by EID.
    pub entities: BTreeMap<String, EntityState>,
    /// Nodes by iSCSI name.
    pub nodes: BTreeMap<String, NodeState>,
    /// Portals.
    pub portals: BTreeMap<RawPortal, PortalState>,
    /// Discovery domains by id.
    pub dds: BTreeMap<u32, DdState>,
}

/// One object of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Obj {
    Entity {
        eid: String,
        period: Option<u32>,
    },
    Node {
        name: String,
        node_type: Option<u32>,
    },
    Portal(RawPortal),
    Pg {
        name: String,
        portal: RawPortal,
        tag: Option<u32>,
    },
    Dd {
        id: u32,
        state: DdState,
    },
}

/// Split a reply's attribute list into objects. An object starts at its key
/// attribute; other attributes belong to the object before them. Unknown
/// attributes are skipped; an attribute outside the object it belongs to, a
/// missing half of an address/port pair, a NULL key, are errors.
pub(crate) fn group(attrs: &[Attr]) -> Result<Vec<Obj>, String> {
    #[derive(Default)]
    struct Half {
        ip: Option<[u8; 16]>,
        port: Option<u32>,
    }
    enum Cur {
        None,
        Entity(String, Option<u32>),
        Node(String, Option<u32>),
        Portal(Half),
        Pg(String, Half, Option<u32>),
        Dd(u32, DdState),
    }
    fn finish(cur: Cur, out: &mut Vec<Obj>) -> Result<(), String> {
        let pair = |h: Half, what: &str| match (h.ip, h.port) {
            (Some(addr), Some(port)) => Ok(RawPortal { addr, port }),
            _ => Err(format!("{what} without both address and port")),
        };
        match cur {
            Cur::None => {}
            Cur::Entity(eid, period) => out.push(Obj::Entity { eid, period }),
            Cur::Node(name, node_type) => out.push(Obj::Node { name, node_type }),
            Cur::Portal(h) => out.push(Obj::Portal(pair(h, "portal")?)),
            Cur::Pg(name, h, tag) => out.push(Obj::Pg {
                name,
                portal: pair(h, "portal group")?,
                tag,
            }),
            Cur::Dd(id, state) => out.push(Obj::Dd { id, state }),
        }
        Ok(())
    }
    let mut out = Vec::new();
    let mut cur = Cur::None;
    for a in attrs {
        let misplaced = || {
            format!(
                "attribute {} ({}) outside its object",
                a.tag,
                tag::name(a.tag)
            )
        };
        let nonnil_str = || {
            if a.is_nil() {
                Err(format!("NULL {}", tag::name(a.tag)))
            } else {
                a.as_str().map(str::to_string).map_err(|e| e.to_string())
            }
        };
        let opt_u32 = || {
            if a.is_nil() {
                Ok(None)
            } else {
                a.as_u32().map(Some).map_err(|e| e.to_string())
            }
        };
        let nonnil_u32 = || opt_u32()?.ok_or_else(|| format!("NULL {}", tag::name(a.tag)));
        let nonnil_ip = || {
            if a.is_nil() {
                Err(format!("NULL {}", tag::name(a.tag)))
            } else {
                a.as_ip().map_err(|e| e.to_string())
            }
        };
        match a.tag {
            tag::ENTITY_ID => {
                finish(std::mem::replace(&mut cur, Cur::None), &mut out)?;
                cur = Cur::Entity(nonnil_str()?, None);
            }
            tag::REGISTRATION_PERIOD => match &mut cur {
                Cur::Entity(_, p) => *p = opt_u32()?,
                _ => return Err(misplaced()),
            },
            tag::ENTITY_PROTOCOL | tag::ENTITY_INDEX | tag::TIMESTAMP | tag::MGMT_IP
                if !matches!(cur, Cur::Entity(..)) =>
            {
                return Err(misplaced());
            }
            tag::ISCSI_NAME => {
                finish(std::mem::replace(&mut cur, Cur::None), &mut out)?;
                cur = Cur::Node(nonnil_str()?, None);
            }
            tag::ISCSI_NODE_TYPE => match &mut cur {
                Cur::Node(_, t) => *t = opt_u32()?,
                _ => return Err(misplaced()),
            },
            tag::ISCSI_ALIAS | tag::ISCSI_NODE_INDEX if !matches!(cur, Cur::Node(..)) => {
                return Err(misplaced());
            }
            tag::PORTAL_IP => {
                finish(std::mem::replace(&mut cur, Cur::None), &mut out)?;
                cur = Cur::Portal(Half {
                    ip: Some(nonnil_ip()?),
                    port: None,
                });
            }
            tag::PORTAL_PORT => match &mut cur {
                Cur::Portal(h) if h.port.is_none() => h.port = Some(nonnil_u32()?),
                _ => return Err(misplaced()),
            },
            tag::PORTAL_INDEX | tag::PORTAL_NAME if !matches!(cur, Cur::Portal(..)) => {
                return Err(misplaced());
            }
            tag::PG_ISCSI_NAME => {
                finish(std::mem::replace(&mut cur, Cur::None), &mut out)?;
                cur = Cur::Pg(nonnil_str()?, Half::default(), None);
            }
            tag::PG_PORTAL_IP => match &mut cur {
                Cur::Pg(_, h, _) if h.ip.is_none() => h.ip = Some(nonnil_ip()?),
                _ => return Err(misplaced()),
            },
            tag::PG_PORTAL_PORT => match &mut cur {
                Cur::Pg(_, h, _) if h.port.is_none() => h.port = Some(nonnil_u32()?),
                _ => return Err(misplaced()),
            },
            tag::PG_TAG => match &mut cur {
                Cur::Pg(_, _, t) => *t = opt_u32()?,
                _ => return Err(misplaced()),
            },
            tag::PG_INDEX if !matches!(cur, Cur::Pg(..)) => {
                return Err(misplaced());
            }
            tag::DD_ID => {
                finish(std::mem::replace(&mut cur, Cur::None), &mut out)?;
                cur = Cur::Dd(nonnil_u32()?, DdState::default());
            }
            tag::DD_NAME => match &mut cur {
                Cur::Dd(_, d) => {
                    d.name = if a.is_nil() {
                        None
                    } else {
                        Some(nonnil_str()?)
                    }
                }
                _ => return Err(misplaced()),
            },
            tag::DD_FEATURES if !matches!(cur, Cur::Dd(..)) => {
                return Err(misplaced());
            }
            tag::DD_MEMBER_ISCSI_INDEX | tag::DD_MEMBER_ISCSI_NAME => {
                let Cur::Dd(_, d) = &mut cur else {
                    return Err(misplaced());
                };
                if a.tag == tag::DD_MEMBER_ISCSI_INDEX {
                    d.members.push(DdMember::Node {
                        index: Some(nonnil_u32()?),
                        name: None,
                    });
                } else {
                    let name = nonnil_str()?;
                    // The name completes an index-only member just before it.
                    match d.members.last_mut() {
                        Some(DdMember::Node {
                            name: n @ None,
                            index: Some(_),
                        }) => *n = Some(name),
                        _ => d.members.push(DdMember::Node {
                            index: None,
                            name: Some(name),
                        }),
                    }
                }
            }
            tag::DD_MEMBER_PORTAL_INDEX => {
                let Cur::Dd(_, d) = &mut cur else {
                    return Err(misplaced());
                };
                d.members.push(DdMember::Portal {
                    index: Some(nonnil_u32()?),
                    portal: None,
                });
            }
            tag::DD_MEMBER_PORTAL_IP => {
                let Cur::Dd(_, d) = &mut cur else {
                    return Err(misplaced());
                };
                let addr = nonnil_ip()?;
                let half = RawPortal {
                    addr,
                    port: u32::MAX,
                };
                match d.members.last_mut() {
                    Some(DdMember::Portal {
                        portal: p @ None,
                        index: Some(_),
                    }) => *p = Some(half),
                    _ => d.members.push(DdMember::Portal {
                        index: None,
                        portal: Some(half),
                    }),
                }
            }
            tag::DD_MEMBER_PORTAL_PORT => {
                let Cur::Dd(_, d) = &mut cur else {
                    return Err(misplaced());
                };
                match d.members.last_mut() {
                    Some(DdMember::Portal {
                        portal: Some(p), ..
                    }) if p.port == u32::MAX => p.port = nonnil_u32()?,
                    _ => return Err("dd member portal port without its address".to_string()),
                }
            }
            _ => {}
        }
    }
    finish(cur, &mut out)?;
    for o in &out {
        if let Obj::Dd { id, state } = o
            && state.members.iter().any(
                |m| matches!(m, DdMember::Portal { portal: Some(p), .. } if p.port == u32::MAX),
            )
        {
            return Err(format!(
                "discovery domain {id}: portal member address without its port"
            ));
        }
    }
    Ok(out)
}

/// Bounds of one read.
const GETNEXT_WHAT: [(&str, &[u32]); 4] = [
    ("entities", &[tag::ENTITY_ID]),
    ("nodes", &[tag::ISCSI_NAME]),
    ("portals", &[tag::PORTAL_IP, tag::PORTAL_PORT]),
    ("discovery domains", &[tag::DD_ID]),
];

/// Walk every object of one type with DevGetNext; each item is the object's
/// key attributes followed by the operating attributes asked for.
async fn getnext_all(
    client: &mut Client,
    kind: usize,
    operating: Vec<Attr>,
    max: usize,
    requests: &mut u64,
) -> Result<Vec<Vec<Attr>>, IsnsError> {
    let (what, key_tags) = GETNEXT_WHAT[kind];
    let source = client.config().source.clone();
    let mut key: Vec<Attr> = key_tags.iter().map(|&t| Attr::nil(t)).collect();
    let mut out = Vec::new();
    loop {
        let req = Request::new(
            Function::DevGetNext,
            &source,
            key.clone(),
            operating.clone(),
        );
        *requests += 1;
        let resp = client.call(&req).await?;
        if resp.status == Status::NO_SUCH_ENTRY {
            return Ok(out);
        }
        if resp.status != Status::SUCCESS {
            return Err(client
                .status_error(Function::DevGetNext, resp.status, what)
                .into());
        }
        let tags: Vec<u32> = resp.key.iter().map(|a| a.tag).collect();
        if tags != key_tags || resp.key.iter().any(Attr::is_nil) {
            return Err(IsnsError::Reply {
                function: Function::DevGetNext,
                why: format!(
                    "listing {what}: reply key {:?} is not the key of the next object",
                    resp.key
                ),
            });
        }
        if resp.key == key {
            return Err(IsnsError::Reply {
                function: Function::DevGetNext,
                why: format!("listing {what}: the server returned {:?} again", resp.key),
            });
        }
        if out.len() >= max {
            return Err(IsnsError::TooMany { what, max });
        }
        key = resp.key.clone();
        // Asked for all attributes, the server repeats the key first.
        let repeated = resp
            .operating
            .iter()
            .zip(&resp.key)
            .take_while(|(a, b)| a == b)
            .count();
        let mut item = resp.key;
        item.extend(resp.operating.into_iter().skip(repeated));
        out.push(item);
    }
}

fn reply_err(function: Function, why: String) -> IsnsError {
    IsnsError::Reply { function, why }
}

/// Read the server's state. Needs the client's source registered as a
/// control node (else the server scopes every answer to that node's domains).
pub(crate) async fn read(
    client: &mut Client,
    max: usize,
    requests: &mut u64,
) -> Result<ServerState, IsnsError> {
    let source = client.config().source.clone();
    let mut st = ServerState::default();
    let grouped = |items: Vec<Vec<Attr>>| -> Result<Vec<Obj>, IsnsError> {
        let mut out = Vec::new();
        for item in items {
            let objs = group(&item).map_err(|why| reply_err(Function::DevGetNext, why))?;
            match objs.as_slice() {
                [one] => out.push(one.clone()),
                _ => {
                    return Err(reply_err(
                        Function::DevGetNext,
                        format!("expected one object, got {objs:?}"),
                    ));
                }
            }
        }
        Ok(out)
    };

    let items = getnext_all(
        client,
        0,
        vec![Attr::nil(tag::REGISTRATION_PERIOD)],
        max,
        requests,
    )
    .await?;
    for o in grouped(items)? {
        if let Obj::Entity { eid, period } = o {
            st.entities.insert(eid, EntityState { period });
        }
    }

    let items = getnext_all(
        client,
        1,
        vec![Attr::nil(tag::ISCSI_NODE_TYPE)],
        max,
        requests,
    )
    .await?;
    for o in grouped(items)? {
        let Obj::Node { name, node_type } = o else {
            continue;
        };
        // Its entity and its portal groups.
        let req = Request::new(
            Function::DevAttrQry,
            &source,
            vec![
                Attr::string(tag::ISCSI_NAME, &name)
                    .map_err(|e| reply_err(Function::DevGetNext, e.to_string()))?,
            ],
            [
                tag::ENTITY_ID,
                tag::ISCSI_NAME,
                tag::ISCSI_NODE_TYPE,
                tag::PG_ISCSI_NAME,
                tag::PG_PORTAL_IP,
                tag::PG_PORTAL_PORT,
                tag::PG_TAG,
            ]
            .into_iter()
            .map(Attr::nil)
            .collect(),
        );
        *requests += 1;
        let resp = client.call(&req).await?;
        let mut node = NodeState {
            node_type,
            ..Default::default()
        };
        if resp.status == Status::NO_SUCH_ENTRY {
            // Gone since it was listed.
            continue;
        }
        if resp.status != Status::SUCCESS {
            return Err(client
                .status_error(Function::DevAttrQry, resp.status, &name)
                .into());
        }
        let objs = group(&resp.operating).map_err(|why| reply_err(Function::DevAttrQry, why))?;
        let mut seen = false;
        for o in objs {
            match o {
                Obj::Entity { eid, .. } if !seen => node.entity = Some(eid),
                Obj::Node { name: n, node_type } if n == name && !seen => {
                    seen = true;
                    node.node_type = node_type;
                }
                Obj::Pg {
                    name: n,
                    portal,
                    tag,
                } if n == name && seen => {
                    if let Some(t) = tag.filter(|&t| t != 0) {
                        node.portals.insert(portal, t);
                    }
                }
                other => {
                    return Err(reply_err(
                        Function::DevAttrQry,
                        format!("query of node {name}: unexpected {other:?}"),
                    ));
                }
            }
        }
        if !seen {
            return Err(reply_err(
                Function::DevAttrQry,
                format!("query of node {name}: the node is not in the reply"),
            ));
        }
        st.nodes.insert(name, node);
    }

    let items = getnext_all(client, 2, vec![], max, requests).await?;
    for o in grouped(items)? {
        let Obj::Portal(p) = o else { continue };
        let req = Request::new(
            Function::DevAttrQry,
            &source,
            p.attrs(tag::PORTAL_IP, tag::PORTAL_PORT).to_vec(),
            [tag::ENTITY_ID, tag::PORTAL_IP, tag::PORTAL_PORT]
                .into_iter()
                .map(Attr::nil)
                .collect(),
        );
        *requests += 1;
        let resp = client.call(&req).await?;
        if resp.status == Status::NO_SUCH_ENTRY {
            continue;
        }
        if resp.status != Status::SUCCESS {
            return Err(client
                .status_error(Function::DevAttrQry, resp.status, &p.to_string())
                .into());
        }
        let mut portal = PortalState::default();
        let mut seen = false;
        for o in group(&resp.operating).map_err(|why| reply_err(Function::DevAttrQry, why))? {
            match o {
                Obj::Entity { eid, .. } if !seen => portal.entity = Some(eid),
                Obj::Portal(q) if q == p && !seen => seen = true,
                other => {
                    return Err(reply_err(
                        Function::DevAttrQry,
                        format!("query of portal {p}: unexpected {other:?}"),
                    ));
                }
            }
        }
        if !seen {
            return Err(reply_err(
                Function::DevAttrQry,
                format!("query of portal {p}: the portal is not in the reply"),
            ));
        }
        st.portals.insert(p, portal);
    }

    let items = getnext_all(client, 3, vec![], max, requests).await?;
    for o in grouped(items)? {
        if let Obj::Dd { id, state } = o {
            st.dds.insert(id, state);
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: u32, v: &str) -> Attr {
        Attr::string(t, v).unwrap()
    }

    #[test]
    fn groups_node_query_reply() {
        let p = RawPortal {
            addr: super::super::codec::ip_to_raw("198.18.0.1".parse().unwrap()),
            port: 3260,
        };
        let attrs = vec![
            s(tag::ENTITY_ID, "sanlb:target:t1"),
            s(tag::ISCSI_NAME, "t1"),
            Attr::u32(tag::ISCSI_NODE_TYPE, 1),
            s(tag::PG_ISCSI_NAME, "t1"),
            Attr::ip_raw(tag::PG_PORTAL_IP, p.addr),
            Attr::u32(tag::PG_PORTAL_PORT, 3260),
            Attr::nil(tag::PG_TAG),
        ];
        assert_eq!(
            group(&attrs).unwrap(),
            vec![
                Obj::Entity {
                    eid: "sanlb:target:t1".into(),
                    period: None
                },
                Obj::Node {
                    name: "t1".into(),
                    node_type: Some(1)
                },
                Obj::Pg {
                    name: "t1".into(),
                    portal: p,
                    tag: None
                },
            ]
        );
    }

    #[test]
    fn groups_dd_members() {
        let p = RawPortal {
            addr: [7; 16],
            port: 3260,
        };
        let attrs = vec![
            Attr::u32(tag::DD_ID, 4),
            s(tag::DD_NAME, "d"),
            Attr::u32(tag::DD_FEATURES, 0),
            Attr::u32(tag::DD_MEMBER_ISCSI_INDEX, 8),
            s(tag::DD_MEMBER_ISCSI_NAME, "h"),
            s(tag::DD_MEMBER_ISCSI_NAME, "t"),
            Attr::u32(tag::DD_MEMBER_PORTAL_INDEX, 3),
            Attr::ip_raw(tag::DD_MEMBER_PORTAL_IP, p.addr),
            Attr::u32(tag::DD_MEMBER_PORTAL_PORT, 3260),
            Attr::u32(tag::DD_MEMBER_ISCSI_INDEX, 9),
        ];
        let objs: [Obj; 1] = group(&attrs).unwrap().try_into().unwrap();
        let [Obj::Dd { id: 4, state }] = objs else {
            panic!("{objs:?}")
        };
        assert_eq!(state.name.as_deref(), Some("d"));
        assert_eq!(
            state.members,
            vec![
                DdMember::Node {
                    index: Some(8),
                    name: Some("h".into())
                },
                DdMember::Node {
                    index: None,
                    name: Some("t".into())
                },
                DdMember::Portal {
                    index: Some(3),
                    portal: Some(p)
                },
                DdMember::Node {
                    index: Some(9),
                    name: None
                },
            ]
        );
    }

    #[test]
    fn misplaced_and_half_objects_are_errors() {
        let e = group(&[Attr::u32(tag::ISCSI_NODE_TYPE, 1)]).unwrap_err();
        assert!(
            e.contains("iscsi node type") && e.contains("outside"),
            "{e}"
        );
        let e = group(&[Attr::ip_raw(tag::PORTAL_IP, [1; 16])]).unwrap_err();
        assert!(e.contains("portal without both"), "{e}");
        let e = group(&[
            Attr::u32(tag::DD_ID, 1),
            Attr::u32(tag::DD_MEMBER_PORTAL_PORT, 1),
        ])
        .unwrap_err();
        assert!(e.contains("without its address"), "{e}");
        let e = group(&[
            Attr::u32(tag::DD_ID, 1),
            Attr::ip_raw(tag::DD_MEMBER_PORTAL_IP, [1; 16]),
        ])
        .unwrap_err();
        assert!(e.contains("without its port"), "{e}");
        let e = group(&[Attr::nil(tag::ISCSI_NAME)]).unwrap_err();
        assert!(e.contains("NULL iscsi name"), "{e}");
    }
}
