//! The subcommands: read or write the registry through [`fabricmq_registry::Registry`], derive the
//! views ([`super::view`]) and print them ([`super::render`], or JSON with `--json`).
//!
//! Every registry call is bounded by `--timeout` twice over: the registry's own `op_timeout` is set
//! to it, and `Fabric::call` wraps the call in a tokio timeout of the same length, so a stalled
//! ZooKeeper can never make the tool hang.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use fabricmq_registry::{Profile, Registry, RegistryConfig, RegistryError};
use serde::Serialize;

use super::cli::{
    validate_profile, Command, ContainerCommand, CreateArgs, EditArgs, MasterCommand,
    ProfileCommand,
};
use super::render;
use super::view::{self, ClusterView, ContainerList, ContainerView, StatusView};
use super::Exit;

/// `host:port,host:port` of a connect string, as error messages name it (IPv6 in brackets).
pub fn servers_text(config: &RegistryConfig) -> String {
    config.servers_string()
}

/// The message of an unreachable ensemble, e.g.
/// `cannot reach ZooKeeper at 127.0.0.1:2181 within 5s`.
pub fn unreachable_message(servers: &str, timeout: Duration) -> String {
    format!(
        "cannot reach ZooKeeper at {servers} within {}",
        humantime::format_duration(timeout)
    )
}

/// A connected registry session plus what error messages need.
pub struct Fabric {
    registry: Registry,
    timeout: Duration,
    servers: String,
}

impl Fabric {
    /// Connects to the ensemble of `zk` with the fabric rooted at `root`. Both the connect and
    /// every later call are bounded by `timeout`; an unreachable ensemble gives the one-line
    /// [`unreachable_message`].
    pub async fn connect(
        zk: &RegistryConfig,
        root: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut config = zk.clone();
        config.root = root.to_owned();
        config.connect_timeout = timeout;
        config.op_timeout = timeout;
        let servers = servers_text(&config);
        match tokio::time::timeout(timeout, Registry::connect(config)).await {
            Ok(Ok(registry)) => Ok(Fabric {
                registry,
                timeout,
                servers,
            }),
            Err(_)
            | Ok(Err(
                RegistryError::Unreachable { .. }
                | RegistryError::Timeout { .. }
                | RegistryError::ConnectionLoss { .. },
            )) => Err(anyhow!(unreachable_message(&servers, timeout))),
            Ok(Err(e)) => {
                Err(anyhow::Error::new(e)
                    .context(format!("cannot connect to ZooKeeper at {servers}")))
            }
        }
    }

    /// Closes the session (bounded by the timeout; errors are irrelevant at that point).
    pub async fn close(self) {
        let _ = tokio::time::timeout(self.timeout, self.registry.close()).await;
    }

    /// Runs one registry call under the timeout. `op` names the call if the tokio timeout fires.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(RegistryError::Timeout {
                op,
                path: String::new(),
                after: self.timeout,
            }),
        }
    }

    /// Turns a registry error into the one-line error of the tool; `doing` says what failed.
    fn explain(&self, e: RegistryError, doing: &str) -> anyhow::Error {
        let timeout = humantime::format_duration(self.timeout);
        match e {
            RegistryError::Timeout { .. } => anyhow!(
                "ZooKeeper at {} did not answer within {timeout} ({doing})",
                self.servers
            ),
            RegistryError::Unreachable { .. } => {
                anyhow!(unreachable_message(&self.servers, self.timeout))
            }
            RegistryError::ConnectionLoss { .. } => anyhow!(
                "lost the connection to ZooKeeper at {} ({doing})",
                self.servers
            ),
            RegistryError::SessionExpired => {
                anyhow!("the ZooKeeper session expired ({doing})")
            }
            other => anyhow::Error::new(other).context(doing.to_owned()),
        }
    }

    /// Runs a subcommand and prints its output.
    pub async fn execute(&self, command: &Command, json: bool) -> anyhow::Result<Exit> {
        match command {
            Command::ClusterList { group } => self.cluster_list(group.as_deref(), json).await,
            Command::Container(ContainerCommand::List) => self.container_list(json).await,
            Command::Status { group } => self.status(group.as_deref(), json).await,
            Command::Master(MasterCommand::Yield { group, to, wait }) => {
                self.master_yield(group, to.as_deref(), *wait, json).await
            }
            Command::Secure => self.secure(json).await,
            Command::Profile(p) => match p {
                ProfileCommand::Create(args) => self.profile_create(args, json).await,
                ProfileCommand::List => self.profile_list(json).await,
                ProfileCommand::Show { name } => self.profile_show(name, json).await,
                ProfileCommand::Delete { name } => self.profile_delete(name, json).await,
                ProfileCommand::Edit(args) => self.profile_edit(args, json).await,
            },
        }
    }

    /// `secure`: repairs every open ACL under the root; prints what it repaired and what it
    /// could not. An open node left behind is an error (exit status 1).
    async fn secure(&self, json: bool) -> anyhow::Result<Exit> {
        let report = self
            .call("secure", self.registry.secure_tree())
            .await
            .map_err(|e| self.explain(e, "repairing registry ACLs"))?;
        if json {
            print_json(&serde_json::json!({
                "checked": report.checked,
                "repaired": report.repaired,
                "unrepairable": report
                    .unrepairable
                    .iter()
                    .map(|(node, why)| serde_json::json!({"node": node, "error": why}))
                    .collect::<Vec<_>>(),
            }))?;
        } else {
            let mut text = format!(
                "checked {} nodes, repaired {}\n",
                report.checked,
                report.repaired.len()
            );
            for node in &report.repaired {
                text.push_str(&format!("repaired  {node}\n"));
            }
            for (node, why) in &report.unrepairable {
                text.push_str(&format!("LEFT OPEN {node}: {why}\n"));
            }
            print_text(&text)?;
        }
        if !report.unrepairable.is_empty() {
            bail!(
                "{} node(s) are still open: this identity may not change their ACL",
                report.unrepairable.len()
            );
        }
        Ok(Exit::Success)
    }

    /// The groups to show: the one asked for, or every registered group in name order.
    async fn groups(&self, only: Option<&str>) -> anyhow::Result<Vec<String>> {
        if let Some(g) = only {
            return Ok(vec![g.to_owned()]);
        }
        let mut groups = match self.call("groups", self.registry.groups()).await {
            Ok(g) => g,
            Err(RegistryError::NoNode { .. }) => Vec::new(),
            Err(e) => return Err(self.explain(e, "listing the groups")),
        };
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    /// The live members of `group` (none if the group does not exist).
    async fn members(&self, group: &str) -> anyhow::Result<Vec<fabricmq_registry::MemberInfo>> {
        match self.call("members", self.registry.members(group)).await {
            Ok(m) => Ok(m),
            Err(RegistryError::NoNode { .. }) => Ok(Vec::new()),
            Err(e) => Err(self.explain(e, &format!("listing the members of group {group}"))),
        }
    }

    /// Members, master record and (without a master) the last epoch of `group`.
    async fn cluster(&self, group: &str) -> anyhow::Result<ClusterView> {
        let members = self.members(group).await?;
        let master = match self.call("master", self.registry.master(group)).await {
            Ok(m) => m,
            Err(RegistryError::NoNode { .. }) => None,
            Err(e) => return Err(self.explain(e, &format!("reading the master of group {group}"))),
        };
        let last_epoch = if master.is_some() {
            0
        } else {
            match self
                .call("current_epoch", self.registry.current_epoch(group))
                .await
            {
                Ok(e) => e,
                Err(RegistryError::NoNode { .. }) => 0,
                Err(e) => {
                    return Err(self.explain(e, &format!("reading the epoch of group {group}")))
                }
            }
        };
        Ok(ClusterView::new(
            group,
            &members,
            master.as_ref(),
            last_epoch,
            view::now_ms(),
        ))
    }

    async fn clusters(&self, only: Option<&str>) -> anyhow::Result<Vec<ClusterView>> {
        let mut out = Vec::new();
        for g in self.groups(only).await? {
            out.push(self.cluster(&g).await?);
        }
        Ok(out)
    }

    async fn cluster_list(&self, group: Option<&str>, json: bool) -> anyhow::Result<Exit> {
        let clusters = self.clusters(group).await?;
        if json {
            print_json(&clusters)?;
        } else {
            print_text(&render::cluster_table(&clusters))?;
        }
        Ok(Exit::Success)
    }

    /// `master yield`: writes the hand-over request, waits for a master other than the current
    /// one (the chosen container, if any), removes the request. On timeout the request is
    /// withdrawn and the command fails.
    async fn master_yield(
        &self,
        group: &str,
        to: Option<&str>,
        wait: Duration,
        json: bool,
    ) -> anyhow::Result<Exit> {
        let doing = format!("reading the master of group {group}");
        let Some(old) = self
            .call("master", self.registry.master(group))
            .await
            .map_err(|e| self.explain(e, &doing))?
        else {
            eprintln!("mq-fabric: group {group} has no master to hand over from");
            return Ok(Exit::NoMaster);
        };
        if let Some(to) = to {
            if to == old.container {
                bail!("{to} is already the master of group {group}");
            }
            let members = self.members(group).await?;
            if !members.iter().any(|m| m.record.container == to) {
                let slaves: Vec<&str> = members
                    .iter()
                    .map(|m| m.record.container.as_str())
                    .filter(|c| *c != old.container)
                    .collect();
                bail!(
                    "{to} is not a live member of group {group} (slaves: {})",
                    if slaves.is_empty() {
                        "none".to_string()
                    } else {
                        slaves.join(", ")
                    }
                );
            }
        } else if self.members(group).await?.len() < 2 {
            bail!("group {group} has no slave to hand over to");
        }
        let request = fabricmq_registry::HandoverRequest {
            id: uuid::Uuid::new_v4().to_string(),
            from: old.container.clone(),
            to: to.map(str::to_owned),
            requested: view::now_ms(),
        };
        self.call("handover", self.registry.request_handover(group, &request))
            .await
            .map_err(|e| self.explain(e, "writing the hand-over request"))?;
        let started = std::time::Instant::now();
        let deadline = started + wait;
        let new = loop {
            let current = self.call("master", self.registry.master(group)).await;
            if let Ok(Some(m)) = current {
                if m.container != old.container && to.is_none_or(|t| t == m.container) {
                    break Some(m);
                }
            }
            if std::time::Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = self
            .call("handover", self.registry.clear_handover(group, &request.id))
            .await;
        let Some(new) = new else {
            bail!(
                "no new master in group {group} within {} (request withdrawn; {} may still be draining)",
                humantime::format_duration(wait),
                old.container
            );
        };
        let took = started.elapsed();
        if json {
            print_json(&serde_json::json!({
                "group": group,
                "from": {"container": old.container, "epoch": old.epoch},
                "to": {"container": new.container, "epoch": new.epoch, "services": new.services},
                "took_ms": took.as_millis() as u64,
            }))?;
        } else {
            print_text(&format!(
                "group {group}: master {} (epoch {}) handed over to {} (epoch {}) in {} ms\n",
                old.container,
                old.epoch,
                new.container,
                new.epoch,
                took.as_millis()
            ))?;
        }
        Ok(Exit::Success)
    }

    async fn status(&self, group: Option<&str>, json: bool) -> anyhow::Result<Exit> {
        let clusters = self.clusters(group).await?;
        if json {
            let status: Vec<StatusView> = clusters.iter().map(StatusView::from).collect();
            print_json(&status)?;
        } else if clusters.is_empty() {
            print_text("no groups registered\n")?;
        } else {
            let lines: String = clusters
                .iter()
                .map(|c| render::status_line(c) + "\n")
                .collect();
            print_text(&lines)?;
        }
        Ok(if clusters.iter().all(|c| c.master.is_some()) {
            Exit::Success
        } else {
            Exit::NoMaster
        })
    }

    async fn profiles(&self) -> anyhow::Result<Vec<Profile>> {
        let mut profiles = match self.call("profiles", self.registry.profiles()).await {
            Ok(p) => p,
            Err(RegistryError::NoNode { .. }) => Vec::new(),
            Err(e) => return Err(self.explain(e, "listing the profiles")),
        };
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(profiles)
    }

    async fn container_list(&self, json: bool) -> anyhow::Result<Exit> {
        let now = view::now_ms();
        let mut containers = Vec::new();
        for g in self.groups(None).await? {
            for m in self.members(&g).await? {
                containers.push(ContainerView::new(&g, &m, now));
            }
        }
        let profiles = self.profiles().await?;
        let list = ContainerList {
            warnings: view::shortfalls(&profiles, &containers),
            containers,
        };
        if json {
            print_json(&list)?;
        } else {
            let mut text = render::container_table(&list.containers);
            for w in &list.warnings {
                text.push_str(&render::shortfall_line(w));
                text.push('\n');
            }
            print_text(&text)?;
        }
        Ok(Exit::Success)
    }

    async fn profile_create(&self, args: &CreateArgs, json: bool) -> anyhow::Result<Exit> {
        let profile = args.to_profile();
        validate_profile(&profile).map_err(|e| anyhow!("profile {}: {e}", profile.name))?;
        self.check_profile(&profile).await?;
        match self
            .call("create_profile", self.registry.create_profile(&profile))
            .await
        {
            Ok(()) => {}
            Err(RegistryError::NodeExists { .. }) => {
                return Err(anyhow!(
                    "profile {} already exists (use profile edit)",
                    profile.name
                ))
            }
            Err(e) => return Err(self.explain(e, &format!("creating profile {}", profile.name))),
        }
        if json {
            print_json(&profile)?;
        } else {
            let n = profile.containers;
            print_text(&format!(
                "created profile {} (group {}, {n} container{})\n",
                profile.name,
                profile.group,
                if n == 1 { "" } else { "s" }
            ))?;
        }
        Ok(Exit::Success)
    }

    /// The checks that need the other profiles or the files a profile names.
    async fn check_profile(&self, p: &Profile) -> anyhow::Result<()> {
        let others = self.profiles().await?;
        super::cli::check_against_others(p, &others)
            .map_err(|e| anyhow!("profile {}: {e}", p.name))?;
        for note in
            super::cli::check_profile_files(p).map_err(|e| anyhow!("profile {}: {e}", p.name))?
        {
            eprintln!("mq-fabric: note: {note}");
        }
        Ok(())
    }

    /// Reads a profile that must exist.
    async fn existing_profile(&self, name: &str) -> anyhow::Result<Profile> {
        match self.call("profile", self.registry.profile(name)).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) | Err(RegistryError::NoNode { .. }) => {
                Err(anyhow!("profile {name} does not exist"))
            }
            Err(e) => Err(self.explain(e, &format!("reading profile {name}"))),
        }
    }

    async fn profile_list(&self, json: bool) -> anyhow::Result<Exit> {
        let profiles = self.profiles().await?;
        if json {
            print_json(&profiles)?;
        } else {
            print_text(&render::profile_table(&profiles))?;
        }
        Ok(Exit::Success)
    }

    async fn profile_show(&self, name: &str, json: bool) -> anyhow::Result<Exit> {
        let profile = self.existing_profile(name).await?;
        if json {
            print_json(&profile)?;
            eprintln!("{}", render::RESTART_NOTE);
        } else {
            print_text(&render::profile_block(&profile))?;
        }
        Ok(Exit::Success)
    }

    async fn profile_delete(&self, name: &str, json: bool) -> anyhow::Result<Exit> {
        match self
            .call("delete_profile", self.registry.delete_profile(name))
            .await
        {
            Ok(()) => {}
            Err(RegistryError::NoNode { .. }) => {
                return Err(anyhow!("profile {name} does not exist"))
            }
            Err(e) => return Err(self.explain(e, &format!("deleting profile {name}"))),
        }
        if json {
            print_json(&serde_json::json!({ "deleted": name }))?;
        } else {
            print_text(&format!("deleted profile {name}\n"))?;
        }
        Ok(Exit::Success)
    }

    async fn profile_edit(&self, args: &EditArgs, json: bool) -> anyhow::Result<Exit> {
        let old = self.existing_profile(&args.name).await?;
        let new = args.apply(&old);
        validate_profile(&new).map_err(|e| anyhow!("profile {}: {e}", new.name))?;
        self.check_profile(&new).await?;
        let changes = render::profile_changes(&old, &new);
        if !changes.is_empty() {
            self.call("put_profile", self.registry.put_profile(&new))
                .await
                .map_err(|e| self.explain(e, &format!("writing profile {}", new.name)))?;
        }
        if json {
            print_json(&new)?;
            eprintln!("{}", render::RESTART_NOTE);
        } else if changes.is_empty() {
            print_text(&format!("profile {} unchanged\n", new.name))?;
        } else {
            let mut text = format!("updated profile {}\n", new.name);
            for c in &changes {
                text.push_str(&format!("  {c}\n"));
            }
            text.push_str(render::RESTART_NOTE);
            text.push('\n');
            print_text(&text)?;
        }
        Ok(Exit::Success)
    }
}

/// Writes `text` to stdout and flushes.
fn print_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// Writes `value` as one line of JSON to stdout.
fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    print_text(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_message_names_servers_and_timeout() {
        let mut config = RegistryConfig::parse("127.0.0.1:2181,zk2:2182/chroot").unwrap();
        assert_eq!(servers_text(&config), "127.0.0.1:2181,zk2:2182");
        config.servers.push(("::1".to_owned(), 2183));
        assert_eq!(servers_text(&config), "127.0.0.1:2181,zk2:2182,[::1]:2183");
        assert_eq!(
            unreachable_message("127.0.0.1:2181", Duration::from_secs(5)),
            "cannot reach ZooKeeper at 127.0.0.1:2181 within 5s"
        );
        assert_eq!(
            unreachable_message("h:1", Duration::from_millis(500)),
            "cannot reach ZooKeeper at h:1 within 500ms"
        );
    }
}
