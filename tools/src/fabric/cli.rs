//! Command-line definitions of `mq-fabric` (clap derive) and the validation of every value that
//! ends up in the registry.
//!
//! Flag names follow the JBoss A-MQ / fabric8 console commands where those had one (`--group`,
//! `--kind`, `--data`, `--config`, `--containers`); flags of our own are kebab-case (`--zk-root`,
//! `--clear-users`). Global flags (`--zk`, `--zk-root`, `--timeout`, `--json`) may be given before
//! or after the subcommand.
//!
//! Every check is a clap value parser, so a bad value is a clap usage error that names the flag
//! (exit status 2) and nothing is written to ZooKeeper. The parsers are plain functions, unit-tested
//! below, and [`validate_profile`] applies the same rules to a whole [`Profile`].

use std::path::Path;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use fabricmq_registry::{Profile, RegistryConfig};

/// Text appended to `--help`: exit statuses and the output contract.
const AFTER_HELP: &str = "\
Examples:
  mq-fabric --zk zk1:2181,zk2:2181/mq cluster-list
  mq-fabric status default          # exit status 3: no master right now
  mq-fabric profile create tolerantbroker --group default --containers 2 \\
      --listen stomp://0.0.0.0:61613 --data /srv/fabricmq/default
  mq-fabric profile edit tolerantbroker --containers 3
  mq-fabric master yield default --to broker2   # controlled hand-over (rolling upgrades)

Exit status: 0 success; 1 error (ZooKeeper unreachable or too slow, missing profile, ...);
2 bad flags or values; 3 `status`: some listed group has no master.

With --json every command prints exactly one JSON value (one line) on stdout; notes go to stderr.
Logs are off unless RUST_LOG is set (e.g. RUST_LOG=debug).";

/// `mq-fabric`: administer a fabricmq fabric (clusters, containers, profiles) through ZooKeeper.
#[derive(Debug, Parser)]
#[command(
    name = "mq-fabric",
    version,
    about = "Administer a fabricmq fabric: clusters, containers and profiles in ZooKeeper",
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// ZooKeeper ensemble: `host:port[,host:port...][/chroot]`.
    #[arg(
        long,
        global = true,
        env = "FABRIC_ZK",
        help_heading = "Global options",
        value_name = "HOST:PORT[,HOST:PORT][/CHROOT]",
        default_value = "127.0.0.1:2181",
        value_parser = parse_zk
    )]
    pub zk: RegistryConfig,

    /// Root of the fabric's nodes in ZooKeeper (below the chroot, if any).
    #[arg(
        long = "zk-root",
        help_heading = "Global options",
        global = true,
        value_name = "PATH",
        default_value = fabricmq_registry::DEFAULT_ROOT,
        value_parser = parse_zk_root
    )]
    pub zk_root: String,

    /// Bound on connecting to ZooKeeper and on every single registry call (`5s`, `500ms`, `1m`).
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        help_heading = "Global options",
        default_value = "5s",
        value_parser = parse_timeout
    )]
    pub timeout: Duration,

    /// File holding the registry's digest credentials `user:password` (else FABRIC_ZK_AUTH_FILE
    /// or FABRIC_ZK_AUTH): needed to change a secured fabric; reading needs none.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub zk_auth_file: Option<std::path::PathBuf>,

    /// Let commands that write (profile create/edit/delete, master yield) run WITHOUT registry
    /// credentials (also FABRIC_ZK_INSECURE=1): what they create is writable by anyone who can
    /// reach ZooKeeper. Without credentials and without this flag they refuse to run.
    #[arg(
        long,
        global = true,
        env = fabricmq_registry::INSECURE_ENV,
        value_parser = clap::builder::FalseyValueParser::new(),
        help_heading = "Global options"
    )]
    pub zk_insecure: bool,

    /// Print one JSON value (one line) on stdout instead of tables and text.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One row per cluster (group): master, slaves, services, epoch and how long the master has
    /// served (JBoss A-MQ `cluster-list` layout).
    #[command(name = "cluster-list")]
    ClusterList {
        /// Only this group (default: every group).
        #[arg(value_parser = parse_group_name)]
        group: Option<String>,
    },
    /// Live containers (members of the groups).
    #[command(subcommand)]
    Container(ContainerCommand),
    /// One line per group; exit status 3 when a listed group has no master (0 when every listed
    /// group has one, or when no group is registered at all).
    Status {
        /// Only this group (default: every group).
        #[arg(value_parser = parse_group_name)]
        group: Option<String>,
    },
    /// Broker profiles: what the containers of a group run.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// The master of a group.
    #[command(subcommand)]
    Master(MasterCommand),
    /// Repair open ACLs: every node of the fabric that anyone may change (created by a session
    /// without credentials) gets the secure ACL (these credentials: all; anyone: read). Needs
    /// the fabric's credentials.
    Secure,
}

impl Command {
    /// Whether the command changes the registry (and so needs credentials, or --zk-insecure).
    pub fn writes(&self) -> bool {
        match self {
            Command::ClusterList { .. } | Command::Container(_) | Command::Status { .. } => false,
            Command::Profile(p) => !matches!(p, ProfileCommand::List | ProfileCommand::Show { .. }),
            Command::Master(_) | Command::Secure => true,
        }
    }

    /// The command's name as typed (`profile create`, `master yield`, ...), for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::ClusterList { .. } => "cluster-list",
            Command::Container(_) => "container list",
            Command::Status { .. } => "status",
            Command::Profile(ProfileCommand::Create(_)) => "profile create",
            Command::Profile(ProfileCommand::List) => "profile list",
            Command::Profile(ProfileCommand::Show { .. }) => "profile show",
            Command::Profile(ProfileCommand::Delete { .. }) => "profile delete",
            Command::Profile(ProfileCommand::Edit(_)) => "profile edit",
            Command::Master(MasterCommand::Yield { .. }) => "master yield",
            Command::Secure => "secure",
        }
    }
}

/// `mq-fabric master ...`.
#[derive(Debug, Subcommand)]
pub enum MasterCommand {
    /// Controlled hand-over: the master drains (in-flight receipts are sent, clients move) and
    /// steps down, and a slave (the one given with --to, else the next in line) takes over.
    /// Waits until the new master serves.
    Yield {
        /// The group.
        #[arg(value_parser = parse_group_name)]
        group: String,
        /// The slave container that should take over.
        #[arg(long, value_name = "CONTAINER")]
        to: Option<String>,
        /// How long to wait for the new master.
        #[arg(long = "wait", value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
        wait: Duration,
    },
}

/// `mq-fabric container ...`.
#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Every live member of every group, then a warning for each profile that has fewer live
    /// containers than it asks for.
    List,
}

/// `mq-fabric profile ...`.
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Create a profile (fails if it exists: use `profile edit`).
    Create(CreateArgs),
    /// Table of every profile.
    List,
    /// Show one profile.
    Show {
        /// Profile name.
        #[arg(value_parser = parse_profile_name)]
        name: String,
    },
    /// Delete a profile (running containers keep running; they do not restart with it).
    Delete {
        /// Profile name.
        #[arg(value_parser = parse_profile_name)]
        name: String,
    },
    /// Change some fields of a profile; fields not given keep their value.
    Edit(EditArgs),
}

/// Kind of a profile. Only master/slave groups exist for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileKind {
    /// One master serves, the others wait on the shared data directory.
    MasterSlave,
}

impl ProfileKind {
    /// The name stored in the profile (`master-slave`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::MasterSlave => "master-slave",
        }
    }
}

/// `mq-fabric profile create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Profile name (letters, digits, `.`, `_`, `-`).
    #[arg(value_parser = parse_profile_name)]
    pub name: String,

    /// Group (cluster) the containers of this profile join.
    #[arg(long, value_name = "GROUP", value_parser = parse_group_name)]
    pub group: String,

    /// Kind of the group.
    #[arg(long, value_enum, default_value_t = ProfileKind::MasterSlave)]
    pub kind: ProfileKind,

    /// How many containers should run this profile (a master and N-1 slaves).
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub containers: u32,

    /// Client listener, `stomp://HOST:PORT` or `tcp://HOST:PORT` (repeatable, at least one).
    #[arg(long, value_name = "URL", required = true, value_parser = parse_listen_url)]
    pub listen: Vec<String>,

    /// Shared data directory of the group (absolute path).
    #[arg(long, value_name = "DIR", value_parser = parse_data_dir)]
    pub data: String,

    /// Users file of the brokers (stored as an absolute path; read by each container at start).
    #[arg(long, value_name = "FILE", value_parser = parse_file_path)]
    pub users: Option<String>,

    /// Extra broker configuration TOML (stored as an absolute path; read by each container).
    #[arg(long, value_name = "FILE", value_parser = parse_file_path)]
    pub config: Option<String>,
}

impl CreateArgs {
    /// The profile these flags describe.
    pub fn to_profile(&self) -> Profile {
        Profile {
            name: self.name.clone(),
            group: self.group.clone(),
            kind: self.kind.as_str().to_owned(),
            containers: self.containers,
            listen: self.listen.clone(),
            data: self.data.clone(),
            users: self.users.clone(),
            config: self.config.clone(),
        }
    }
}

/// `mq-fabric profile edit`: at least one change is required.
#[derive(Debug, Clone, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["group", "containers", "listen", "data", "users", "config", "clear_users", "clear_config"])
))]
pub struct EditArgs {
    /// Profile name.
    #[arg(value_parser = parse_profile_name)]
    pub name: String,

    /// New group.
    #[arg(long, value_name = "GROUP", value_parser = parse_group_name)]
    pub group: Option<String>,

    /// New number of containers.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub containers: Option<u32>,

    /// New client listeners (repeatable; the given list replaces the old one).
    #[arg(long, value_name = "URL", value_parser = parse_listen_url)]
    pub listen: Vec<String>,

    /// New shared data directory (absolute path).
    #[arg(long, value_name = "DIR", value_parser = parse_data_dir)]
    pub data: Option<String>,

    /// New users file.
    #[arg(long, value_name = "FILE", value_parser = parse_file_path, conflicts_with = "clear_users")]
    pub users: Option<String>,

    /// New extra broker configuration file.
    #[arg(long, value_name = "FILE", value_parser = parse_file_path, conflicts_with = "clear_config")]
    pub config: Option<String>,

    /// Remove the users file from the profile.
    #[arg(long = "clear-users")]
    pub clear_users: bool,

    /// Remove the extra configuration file from the profile.
    #[arg(long = "clear-config")]
    pub clear_config: bool,
}

impl EditArgs {
    /// `profile` with the given fields changed (the name never changes).
    pub fn apply(&self, profile: &Profile) -> Profile {
        let mut p = profile.clone();
        if let Some(g) = &self.group {
            p.group = g.clone();
        }
        if let Some(n) = self.containers {
            p.containers = n;
        }
        if !self.listen.is_empty() {
            p.listen = self.listen.clone();
        }
        if let Some(d) = &self.data {
            p.data = d.clone();
        }
        if self.clear_users {
            p.users = None;
        } else if let Some(u) = &self.users {
            p.users = Some(u.clone());
        }
        if self.clear_config {
            p.config = None;
        } else if let Some(c) = &self.config {
            p.config = Some(c.clone());
        }
        p
    }
}

/// Parses the `--zk` connect string.
pub fn parse_zk(s: &str) -> Result<RegistryConfig, String> {
    RegistryConfig::parse(s.trim()).map_err(|e| e.to_string())
}

/// Checks `--zk-root`: an absolute ZooKeeper path such as `/fabric`, without a trailing `/`.
pub fn parse_zk_root(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("`{s}` must start with / (e.g. /fabric)"));
    }
    if s.len() == 1 || s.ends_with('/') {
        return Err(format!("`{s}` must name a node below / (e.g. /fabric)"));
    }
    for part in s[1..].split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("`{s}` has an empty, `.` or `..` path element"));
        }
    }
    Ok(s.to_owned())
}

/// Parses `--timeout`: a positive humantime duration (`5s`, `500ms`, `1m`).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 5s or 500ms ({e})"))?;
    if d.is_zero() {
        return Err("the timeout must be longer than 0".to_owned());
    }
    Ok(d)
}

/// Checks a name that becomes a ZooKeeper node name: letters, digits, `.`, `_` and `-`, starting
/// with a letter or digit, at most 128 characters. `what` names the thing in errors.
fn check_name(s: &str, what: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err(format!("the {what} name is empty"));
    }
    if s.len() > 128 {
        return Err(format!("the {what} name is longer than 128 characters"));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "{what} name `{s}` must start with a letter or a digit"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{what} name `{s}` contains {c:?}: only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(s.to_owned())
}

/// Checks a profile name.
pub fn parse_profile_name(s: &str) -> Result<String, String> {
    check_name(s, "profile")
}

/// Checks a group (cluster) name.
pub fn parse_group_name(s: &str) -> Result<String, String> {
    check_name(s, "group")
}

/// Checks a listener URL: `stomp://HOST:PORT` or `tcp://HOST:PORT` with an explicit port
/// (0 = any free port) and nothing after it; IPv6 hosts in brackets (`stomp://[::1]:61613`).
/// The URL is stored as written.
pub fn parse_listen_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("stomp://")
        .or_else(|| s.strip_prefix("tcp://"))
        .ok_or_else(|| format!("`{s}` must be stomp://HOST:PORT or tcp://HOST:PORT"))?;
    let port = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: missing ] after the IPv6 address"))?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("`{s}`: `{host}` is not an IPv6 address"));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("`{s}`: missing :PORT"))?;
        port
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}`: missing :PORT"))?;
        if host.is_empty() {
            return Err(format!("`{s}`: missing host"));
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(format!(
                "`{s}`: host `{host}` contains {c:?} (IPv6 addresses go in brackets)"
            ));
        }
        port
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}`: port `{port}` is not a number"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("`{s}`: port {port} is out of range 0-65535"))?;
    Ok(s.to_owned())
}

/// Checks `--data`: an absolute path (every container of the group must see the same directory).
pub fn parse_data_dir(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the data directory is empty".to_owned());
    }
    if !Path::new(s).is_absolute() {
        return Err(format!(
            "`{s}` is not an absolute path (the containers of a group share one data directory)"
        ));
    }
    Ok(s.to_owned())
}

/// Takes a file path to store in a profile (`--users`, `--config`). The file is not read here (the
/// containers read it when they start, possibly on other hosts): a relative path is made absolute
/// against the current directory so that it does not depend on a container's working directory.
pub fn parse_file_path(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the file path is empty".to_owned());
    }
    let abs = std::path::absolute(s).map_err(|e| format!("`{s}`: {e}"))?;
    abs.into_os_string()
        .into_string()
        .map_err(|_| format!("`{s}` is not valid UTF-8"))
}

/// Applies the rules of the flags to a whole profile (for example one read back from ZooKeeper
/// before an edit). The error names the field.
pub fn validate_profile(p: &Profile) -> Result<(), String> {
    let field =
        |name: &str, r: Result<String, String>| r.map(drop).map_err(|e| format!("{name}: {e}"));
    field("name", parse_profile_name(&p.name))?;
    field("group", parse_group_name(&p.group))?;
    if p.kind != ProfileKind::MasterSlave.as_str() {
        return Err(format!(
            "kind: `{}` is not supported (only master-slave for now)",
            p.kind
        ));
    }
    if p.containers < 1 {
        return Err("containers: must be at least 1".to_owned());
    }
    if p.listen.is_empty() {
        return Err("listen: at least one listener URL is needed".to_owned());
    }
    for url in &p.listen {
        field("listen", parse_listen_url(url))?;
    }
    for (i, url) in p.listen.iter().enumerate() {
        let port = listen_port(url);
        if let Some(j) = p.listen[..i].iter().position(|u| listen_port(u) == port) {
            return Err(format!(
                "listen: `{url}` uses port {} like `{}`: two listeners of one broker cannot share a port",
                port.unwrap_or_default(),
                p.listen[j]
            ));
        }
    }
    field("data", parse_data_dir(&p.data))?;
    Ok(())
}

/// The port of a listener URL already checked by [`parse_listen_url`].
fn listen_port(url: &str) -> Option<u16> {
    url.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// Checks `p` against the other profiles of the fabric (`others` must not contain `p` itself):
/// - the containers of one group share one store, so every profile of a group must name the same
///   data directory (`data`);
/// - two groups cannot share a store (`data`);
/// - a port used by another group's profile would clash on a host running both (`listen`).
pub fn check_against_others(p: &Profile, others: &[Profile]) -> Result<(), String> {
    for o in others.iter().filter(|o| o.name != p.name) {
        if o.group == p.group && o.data != p.data {
            return Err(format!(
                "data: `{}` differs from `{}` used by profile {} of the same group {}: the containers of a master/slave group must share one data directory",
                p.data, o.data, o.name, p.group
            ));
        }
        if o.group != p.group && o.data == p.data {
            return Err(format!(
                "data: `{}` is already the store of group {} (profile {}): two groups cannot share a store",
                p.data, o.group, o.name
            ));
        }
        if o.group != p.group {
            for url in &p.listen {
                let port = listen_port(url);
                if let Some(theirs) = o.listen.iter().find(|u| listen_port(u) == port) {
                    return Err(format!(
                        "listen: port {} of `{url}` is already used by profile {} of group {} (`{theirs}`)",
                        port.unwrap_or_default(),
                        o.name,
                        o.group
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks the files a profile names when they exist on this machine: the broker configuration
/// (`config`: unknown keys and bad values are errors naming the key) and the users file
/// (`users`). Returns notes for files that are not here (the containers may run elsewhere).
pub fn check_profile_files(p: &Profile) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    if let Some(config) = &p.config {
        let path = Path::new(config);
        if path.exists() {
            let mut c = fabricmq_broker::config::BrokerConfig::from_file(path)
                .map_err(|e| format!("config: {e}"))?;
            c.validate().map_err(|e| format!("config: {config}: {e}"))?;
        } else {
            notes.push(format!(
                "config: {config} is not on this machine; not checked"
            ));
        }
    }
    if let Some(users) = &p.users {
        let path = Path::new(users);
        if path.exists() {
            fabricmq_broker::auth::Authenticator::load(Some(path), false)
                .map_err(|e| format!("users: {e}"))?;
        } else {
            notes.push(format!(
                "users: {users} is not on this machine; not checked"
            ));
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut v = vec!["mq-fabric"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
    }

    fn err(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    fn prof(name: &str, group: &str, data: &str, listen: &[&str]) -> Profile {
        Profile {
            name: name.into(),
            group: group.into(),
            kind: "master-slave".into(),
            containers: 2,
            listen: listen.iter().map(|s| s.to_string()).collect(),
            data: data.into(),
            users: None,
            config: None,
        }
    }

    #[test]
    fn profiles_are_checked_against_each_other() {
        let a = prof("a", "g1", "/srv/g1", &["stomp://0.0.0.0:61613"]);
        // Same group, same store and port: fine (only the master listens).
        let a2 = prof("a2", "g1", "/srv/g1", &["stomp://0.0.0.0:61613"]);
        assert_eq!(check_against_others(&a2, std::slice::from_ref(&a)), Ok(()));
        // Same group, another store: not shared.
        let e = check_against_others(
            &prof("b", "g1", "/srv/other", &["stomp://0.0.0.0:61613"]),
            std::slice::from_ref(&a),
        )
        .unwrap_err();
        assert!(
            e.starts_with("data: ") && e.contains("must share one data directory"),
            "{e}"
        );
        // Another group on the same store.
        let e = check_against_others(
            &prof("c", "g2", "/srv/g1", &["stomp://0.0.0.0:61700"]),
            std::slice::from_ref(&a),
        )
        .unwrap_err();
        assert!(
            e.starts_with("data: ") && e.contains("cannot share a store"),
            "{e}"
        );
        // Another group on the same port.
        let e = check_against_others(
            &prof("d", "g2", "/srv/g2", &["stomp://0.0.0.0:61613"]),
            std::slice::from_ref(&a),
        )
        .unwrap_err();
        assert!(e.starts_with("listen: port 61613"), "{e}");
        // Editing a profile is not a conflict with its old self.
        let a_edit = prof("a", "g1", "/srv/moved", &["stomp://0.0.0.0:61613"]);
        assert_eq!(
            check_against_others(&a_edit, std::slice::from_ref(&a)),
            Ok(())
        );
    }

    #[test]
    fn a_port_used_twice_in_one_profile_is_refused() {
        let p = prof(
            "a",
            "g",
            "/srv/g",
            &["stomp://0.0.0.0:61613", "stomp://127.0.0.1:61613"],
        );
        let e = validate_profile(&p).unwrap_err();
        assert!(
            e.starts_with("listen: ") && e.contains("cannot share a port"),
            "{e}"
        );
    }

    #[test]
    fn a_profiles_config_file_is_checked_when_it_is_here() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[limits]\nmax_conections = 5\n").unwrap();
        let mut p = prof("a", "g", "/srv/g", &["stomp://0.0.0.0:61613"]);
        p.config = Some(bad.display().to_string());
        let e = check_profile_files(&p).unwrap_err();
        assert!(
            e.starts_with("config: ") && e.contains("max_conections"),
            "{e}"
        );
        p.config = Some("/nowhere/broker.toml".into());
        let notes = check_profile_files(&p).unwrap();
        assert!(notes[0].contains("not on this machine"), "{notes:?}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_defaults() {
        // FABRIC_ZK may be set in the environment of whoever runs the tests.
        let cli = parse(&["--zk", "127.0.0.1:2181", "status"]).unwrap();
        assert_eq!(cli.zk_root, "/fabric");
        assert_eq!(cli.timeout, Duration::from_secs(5));
        assert!(!cli.json);
        assert_eq!(cli.zk.servers, vec![("127.0.0.1".to_owned(), 2181)]);
        assert!(matches!(cli.command, Command::Status { group: None }));
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let cli = parse(&[
            "cluster-list",
            "default",
            "--json",
            "--timeout",
            "250ms",
            "--zk",
            "zk1:2181,zk2:2182/apps",
            "--zk-root",
            "/mq",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_millis(250));
        assert_eq!(cli.zk_root, "/mq");
        assert_eq!(cli.zk.servers.len(), 2);
        assert_eq!(cli.zk.chroot.as_deref(), Some("/apps"));
        match cli.command {
            Command::ClusterList { group } => assert_eq!(group.as_deref(), Some("default")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeout_values() {
        assert_eq!(parse_timeout("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("5").is_err());
        assert!(err(&["--timeout", "soon", "status"]).contains("--timeout"));
    }

    #[test]
    fn zk_root_values() {
        assert_eq!(parse_zk_root("/fabric").unwrap(), "/fabric");
        assert_eq!(parse_zk_root("/a/b").unwrap(), "/a/b");
        for bad in ["fabric", "/", "/fabric/", "/a//b", "/a/../b"] {
            assert!(parse_zk_root(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(parse_profile_name("tolerant-broker_1.a").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", "zk:x", &"x".repeat(129)] {
            assert!(parse_profile_name(bad).is_err(), "{bad}");
        }
        assert!(err(&["status", "a/b"]).contains("group name"));
    }

    #[test]
    fn listen_urls() {
        for ok in [
            "stomp://0.0.0.0:61613",
            "tcp://broker-1.example.com:61614",
            "stomp://127.0.0.1:0",
            "stomp://[::1]:61613",
        ] {
            assert_eq!(parse_listen_url(ok).unwrap(), ok);
        }
        for bad in [
            "0.0.0.0:61613",
            "http://h:1",
            "stomp://h",
            "stomp://:61613",
            "stomp://h:port",
            "stomp://h:70000",
            "stomp://h:1/path",
            "stomp://::1:61613",
            "stomp://[zz]:1",
            "stomp://[::1]",
            "STOMP://h:1",
        ] {
            assert!(parse_listen_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn data_and_files() {
        assert!(parse_data_dir("/var/lib/fabricmq").is_ok());
        assert!(parse_data_dir("data").is_err());
        assert!(parse_data_dir("").is_err());
        let f = parse_file_path("users.toml").unwrap();
        assert!(
            Path::new(&f).is_absolute() && f.ends_with("users.toml"),
            "{f}"
        );
        assert_eq!(parse_file_path("/etc/u").unwrap(), "/etc/u");
    }

    fn create(args: &[&str]) -> Result<CreateArgs, String> {
        let mut v = vec!["profile", "create"];
        v.extend_from_slice(args);
        match parse(&v).map_err(|e| e.to_string())?.command {
            Command::Profile(ProfileCommand::Create(c)) => Ok(c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn profile_create_flags() {
        let c = create(&[
            "tolerantbroker",
            "--group",
            "default",
            "--containers",
            "3",
            "--listen",
            "stomp://0.0.0.0:61613",
            "--listen",
            "tcp://0.0.0.0:61614",
            "--data",
            "/srv/mq",
            "--users",
            "/etc/mq/users",
        ])
        .unwrap();
        let p = c.to_profile();
        assert_eq!(p.name, "tolerantbroker");
        assert_eq!(p.kind, "master-slave");
        assert_eq!(p.containers, 3);
        assert_eq!(p.listen.len(), 2);
        assert_eq!(p.users.as_deref(), Some("/etc/mq/users"));
        assert_eq!(p.config, None);
        assert_eq!(validate_profile(&p), Ok(()));

        // Defaults: master-slave, 2 containers.
        let c = create(&[
            "p",
            "--group",
            "g",
            "--listen",
            "stomp://h:1",
            "--data",
            "/d",
        ])
        .unwrap();
        assert_eq!((c.kind, c.containers), (ProfileKind::MasterSlave, 2));
    }

    #[test]
    fn profile_create_errors_name_the_field() {
        let base = [
            "p",
            "--group",
            "g",
            "--listen",
            "stomp://h:1",
            "--data",
            "/d",
        ];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            create(&v).unwrap_err()
        };
        assert!(with(&["--kind", "replicated"]).contains("--kind"));
        assert!(with(&["--containers", "0"]).contains("--containers"));
        assert!(with(&["--listen", "localhost:61613"]).contains("--listen"));
        let e = create(&[
            "p",
            "--group",
            "g",
            "--listen",
            "stomp://h:1",
            "--data",
            "rel",
        ])
        .unwrap_err();
        assert!(e.contains("--data") && e.contains("absolute"), "{e}");
        let e = create(&["p", "--listen", "stomp://h:1", "--data", "/d"]).unwrap_err();
        assert!(e.contains("--group"), "{e}");
        let e = create(&["p", "--group", "g", "--data", "/d"]).unwrap_err();
        assert!(e.contains("--listen"), "{e}");
    }

    fn edit(args: &[&str]) -> Result<EditArgs, String> {
        let mut v = vec!["profile", "edit"];
        v.extend_from_slice(args);
        match parse(&v).map_err(|e| e.to_string())?.command {
            Command::Profile(ProfileCommand::Edit(e)) => Ok(e),
            other => panic!("{other:?}"),
        }
    }

    fn sample() -> Profile {
        Profile {
            name: "p".into(),
            group: "g".into(),
            kind: "master-slave".into(),
            containers: 2,
            listen: vec!["stomp://0.0.0.0:61613".into()],
            data: "/d".into(),
            users: Some("/etc/users".into()),
            config: None,
        }
    }

    #[test]
    fn profile_edit_changes_only_given_fields() {
        let p = sample();
        let e = edit(&["p", "--containers", "3"]).unwrap();
        let q = e.apply(&p);
        assert_eq!(q.containers, 3);
        assert_eq!(
            Profile {
                containers: 2,
                ..q.clone()
            },
            p
        );

        let e = edit(&[
            "p",
            "--listen",
            "stomp://0.0.0.0:1",
            "--listen",
            "stomp://0.0.0.0:2",
            "--clear-users",
            "--config",
            "/etc/b.toml",
            "--group",
            "h",
            "--data",
            "/e",
        ])
        .unwrap();
        let q = e.apply(&p);
        assert_eq!(q.listen, vec!["stomp://0.0.0.0:1", "stomp://0.0.0.0:2"]);
        assert_eq!(q.users, None);
        assert_eq!(q.config.as_deref(), Some("/etc/b.toml"));
        assert_eq!((q.group.as_str(), q.data.as_str()), ("h", "/e"));
        assert_eq!(q.name, "p");
    }

    #[test]
    fn profile_edit_errors() {
        assert!(edit(&["p"]).unwrap_err().contains("required"));
        assert!(edit(&["p", "--containers", "0"])
            .unwrap_err()
            .contains("--containers"));
        assert!(edit(&["p", "--data", "x"]).unwrap_err().contains("--data"));
        assert!(edit(&["p", "--listen", "x"])
            .unwrap_err()
            .contains("--listen"));
        assert!(edit(&["p", "--users", "/u", "--clear-users"]).is_err());
    }

    #[test]
    fn whole_profile_validation_names_the_field() {
        let bad = |f: fn(&mut Profile)| {
            let mut p = sample();
            f(&mut p);
            validate_profile(&p).unwrap_err()
        };
        assert!(bad(|p| p.kind = "replicated".into()).starts_with("kind:"));
        assert!(bad(|p| p.containers = 0).starts_with("containers:"));
        assert!(bad(|p| p.listen.clear()).starts_with("listen:"));
        assert!(bad(|p| p.listen = vec!["x".into()]).starts_with("listen:"));
        assert!(bad(|p| p.data = "d".into()).starts_with("data:"));
        assert!(bad(|p| p.group = "a b".into()).starts_with("group:"));
    }
}
