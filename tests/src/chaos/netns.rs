//! Network namespaces for the chaos runner: one namespace per node (ZooKeeper, each broker, the
//! clients) and a switch namespace holding a bridge, joined by veth pairs. Nothing is added to the
//! host's own namespace: the runner reaches a node only by joining its namespace
//! ([`in_netns`](fabricmq_registry::testing::in_netns)) or through `ip netns exec`.
//!
//! Faults: [`Net::cut`] adds blackhole routes both ways between two nodes (their packets to each
//! other are dropped, every other path still works); [`Net::isolate`] takes a node's switch port
//! down (cut from everybody). [`Net::heal`] undoes all of it.
//!
//! Every namespace is named `<tag>-<node>`, the tag starting with [`PREFIX`]; [`Net`] deletes its
//! namespaces on drop, and [`cleanup_stale`] removes those a killed runner left behind (after
//! killing the processes still inside them, which can only be the runner's own).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

/// Prefix of every namespace the chaos runner creates.
pub const PREFIX: &str = "fmqc";

/// One node of the test network.
#[derive(Debug, Clone)]
pub struct Node {
    /// Short name (`zk`, `b1`, `cl`, ...).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address (on `eth0`, 10.213.0.0/24).
    pub ip: Ipv4Addr,
    /// The bridge-side end of its veth pair (in the switch namespace).
    port: String,
}

/// The namespaces, bridge and veth pairs of one chaos run; removed on drop.
#[derive(Debug)]
pub struct Net {
    tag: String,
    switch: String,
    nodes: Vec<Node>,
    /// Namespaces created so far (removed on drop, also after a half-finished set-up).
    created: Vec<String>,
    /// Blackhole routes in place: (node index, peer index).
    cuts: Vec<(usize, usize)>,
    /// Nodes whose switch port is down.
    isolated: Vec<usize>,
}

/// Runs `ip` with `args`; fails with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_out(args).map(drop)
}

/// Runs `ip` with `args` and returns its stdout; fails with its stderr.
fn ip_out(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (Debian package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process may create network namespaces (root with `ip` present): probes by
/// creating and deleting one.
pub fn available() -> bool {
    let probe = format!("{PREFIX}probe{}", std::process::id());
    if ip(&["netns", "add", &probe]).is_err() {
        return false;
    }
    ip(&["netns", "del", &probe]).is_ok()
}

impl Net {
    /// Creates the switch namespace with a bridge and one namespace per name in `nodes`, each
    /// with `lo` up and `eth0` = 10.213.0.(10+i)/24 on the bridge. `tag` must be short (the
    /// switch-side interface names are `v<tag><i>`, at most 15 characters).
    pub fn create(tag: &str, nodes: &[&str]) -> anyhow::Result<Net> {
        anyhow::ensure!(tag.starts_with(PREFIX), "tag must start with {PREFIX}");
        anyhow::ensure!(tag.len() <= 11, "tag {tag} too long for interface names");
        let mut net = Net {
            tag: tag.to_owned(),
            switch: format!("{tag}-sw"),
            nodes: Vec::new(),
            created: Vec::new(),
            cuts: Vec::new(),
            isolated: Vec::new(),
        };
        let sw = net.switch.clone();
        ip(&["netns", "add", &sw])?;
        net.created.push(sw.clone());
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, name) in nodes.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            ip(&["netns", "add", &ns])?;
            net.created.push(ns.clone());
            let port = format!("v{tag}{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            let addr = Ipv4Addr::new(10, 213, 0, 10 + i as u8);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            net.nodes.push(Node {
                name: (*name).to_owned(),
                ns,
                ip: addr,
                port,
            });
        }
        Ok(net)
    }

    /// The run's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Drops all traffic between `a` and `b` (blackhole routes on both sides); other paths work.
    pub fn cut(&mut self, a: &str, b: &str) -> anyhow::Result<()> {
        let (ia, ib) = (self.index(a), self.index(b));
        for (from, to) in [(ia, ib), (ib, ia)] {
            if self.cuts.contains(&(from, to)) {
                continue;
            }
            let dst = format!("{}/32", self.nodes[to].ip);
            ip(&[
                "-n",
                &self.nodes[from].ns,
                "route",
                "add",
                "blackhole",
                &dst,
            ])?;
            self.cuts.push((from, to));
        }
        Ok(())
    }

    /// Takes `name`'s switch port down: it reaches nobody and nobody reaches it.
    pub fn isolate(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self.index(name);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.nodes[i].port,
            "down",
        ])?;
        if !self.isolated.contains(&i) {
            self.isolated.push(i);
        }
        Ok(())
    }

    /// Undoes every cut and isolation.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        for (from, to) in std::mem::take(&mut self.cuts) {
            let dst = format!("{}/32", self.nodes[to].ip);
            if let Err(e) = ip(&[
                "-n",
                &self.nodes[from].ns,
                "route",
                "del",
                "blackhole",
                &dst,
            ]) {
                first_err.get_or_insert(e);
            }
        }
        for i in std::mem::take(&mut self.isolated) {
            if let Err(e) = ip(&["-n", &self.switch, "link", "set", &self.nodes[i].port, "up"]) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Deletes the namespaces (killing any process still inside one: only the runner's own can
    /// be there). Idempotent; also done on drop.
    pub fn remove(&mut self) {
        for ns in self.created.drain(..).rev() {
            kill_inside(&ns);
            if let Err(e) = ip(&["netns", "del", &ns]) {
                tracing::warn!(ns, error = %e, "could not delete network namespace");
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

/// SIGKILLs every process inside namespace `ns`.
fn kill_inside(ns: &str) {
    let Ok(pids) = ip_out(&["netns", "pids", ns]) else {
        return;
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes namespaces named `<PREFIX>...` left by a chaos runner that was killed (SIGKILL gives
/// it no chance to clean up), with any process inside them. Returns their names.
pub fn cleanup_stale() -> anyhow::Result<Vec<String>> {
    let list = ip_out(&["netns", "list"])?;
    let mut removed = Vec::new();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name.starts_with(PREFIX) {
            kill_inside(name);
            ip(&["netns", "del", name])?;
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}
