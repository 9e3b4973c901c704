//! A real open-isns server (Debian `open-isns-server`) on loopback with its
//! own configuration and database in a temporary directory, and `isnsadm`
//! (open-isns-utils) to see what a host is told. Shared by `isns.rs` and
//! `isns_controller.rs`.
#![allow(dead_code, reason = "each test crate uses a part")]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sanlb::isns::{ClientConfig, Portal, Reconciler, ReconcilerConfig};

pub const CONTROL: &str = "iqn.2024-01.test.sanlb:control";

/// An isnsd on 127.0.0.1, killed and its directory removed on drop.
pub struct Isnsd {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Isnsd {
    pub fn start() -> Isnsd {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(
            dir.path().join("isnsd.conf"),
            format!(
                "SourceName = iqn.2024-01.test:isnsd\n\
                 Database = {d}/db\n\
                 BindAddress = 127.0.0.1:{port}\n\
                 ControlSocket = {d}/isnsctl\n\
                 PIDFile = {d}/isnsd.pid\n\
                 RegistrationPeriod = 0\n\
                 DefaultDiscoveryDomain = 0\n\
                 SLPRegister = 0\n\
                 Security = 0\n\
                 AuthKeyFile = {d}/no_auth_key\n\
                 ServerKeyFile = {d}/no_server_key.pub\n"
            ),
        )
        .unwrap();
        let mut s = Isnsd {
            dir,
            port,
            child: None,
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("isnsd.log"))
            .unwrap();
        let child = Command::new("isnsd")
            .arg("--config")
            .arg(self.dir.path().join("isnsd.conf"))
            .arg("--foreground")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("isnsd (Debian open-isns-server) must be installed: cargo xtask setup");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "isnsd did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn wipe_db(&self) {
        let db = self.dir.path().join("db");
        std::fs::remove_dir_all(&db).unwrap();
        std::fs::create_dir(&db).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("isnsd.log")).unwrap_or_default()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn reconciler(&self) -> Reconciler {
        Reconciler::new(
            ClientConfig::new(self.addr(), CONTROL),
            ReconcilerConfig::default(),
        )
        .unwrap()
    }

    /// Run isnsadm as `source`.
    pub fn isnsadm(&self, source: &str, args: &[&str]) -> String {
        let cfg = self
            .dir
            .path()
            .join(format!("isnsadm-{}.conf", sanitize(source)));
        std::fs::write(
            &cfg,
            format!(
                "ServerAddress = {}\nSourceName = {source}\nSecurity = 0\nNetwork.CallTimeout = 5\n",
                self.addr()
            ),
        )
        .unwrap();
        let out = Command::new("timeout")
            .args(["20", "isnsadm", "--config"])
            .arg(&cfg)
            .args(args)
            .output()
            .expect("isnsadm (Debian open-isns-utils) must be installed: cargo xtask setup");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("initiatorname.iscsi"))
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "isnsadm {args:?} as {source}: {}\n{stdout}\n{stderr}",
            out.status
        );
        stdout
    }

    /// What `host` is told: target → portals, from the portal groups of the
    /// DevAttrQry open-iscsi sends.
    pub fn view(&self, host: &str) -> BTreeMap<String, BTreeSet<Portal>> {
        let out = self.isnsadm(
            host,
            &[
                "--query",
                "iscsi-node-type=Target",
                "?iscsi-name",
                "?iscsi-node-type",
                "?portal-addr",
                "?portal-port",
                "?pg-name",
                "?pg-addr",
                "?pg-port",
                "?pg-tag",
            ],
        );
        parse_pgs(&out)
    }
}

impl Drop for Isnsd {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Portal group objects of isnsadm's output, with a non-zero tag.
pub fn parse_pgs(out: &str) -> BTreeMap<String, BTreeSet<Portal>> {
    let mut view: BTreeMap<String, BTreeSet<Portal>> = BTreeMap::new();
    let value = |l: &str| {
        l.split_once(" = ")
            .map(|(_, v)| v.trim().to_string())
            .unwrap()
    };
    let mut cur: Option<(String, Option<String>, Option<u16>)> = None;
    let mut flush = |cur: &mut Option<(String, Option<String>, Option<u16>)>, tag_ok: bool| {
        if let Some((name, Some(addr), Some(port))) = cur.take()
            && tag_ok
        {
            view.entry(name)
                .or_default()
                .insert(Portal::new(addr.parse().unwrap(), port));
        }
    };
    for line in out.lines() {
        if line.contains("Portal group name") {
            cur = Some((value(line).trim_matches('"').to_string(), None, None));
        } else if line.contains("Portal group address") {
            cur.as_mut().unwrap().1 = Some(value(line));
        } else if line.contains("Portal group port") {
            let v = value(line);
            cur.as_mut().unwrap().2 = Some(v.trim_end_matches("/tcp").parse().unwrap());
        } else if line.contains("Portal group tag") {
            let v = value(line);
            flush(&mut cur, v != "0" && !v.contains("NIL"));
        }
    }
    view
}
