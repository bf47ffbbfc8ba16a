//! The broker's files are private (issue 10, item 8): journal directories 0700, segments and the
//! lock file 0600, so another local user can neither read message bodies nor hold the journal
//! lock to keep the broker from starting; a users file others can read is warned about.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fabricmq_tests::process::{BrokerOptions, BrokerProcess};
use fabricmq_tests::raw::Raw;
use fabricmq_tests::users::write_users_file;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `dir`, with its mode.
fn tree(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push((p.clone(), mode(&p)));
        if p.is_dir() {
            tree(&p, out);
        }
    }
}

/// Whether user `nobody` can take a shared lock on `lock` (None: this machine cannot tell, e.g.
/// not running as root).
fn nobody_can_lock(lock: &Path) -> Option<bool> {
    // /proc/self belongs to the process's effective user.
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").ok()?);
    if euid != 0 {
        return None;
    }
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "flock", "-s", "-n"])
        .arg(lock)
        .arg("true")
        .output()
        .ok()?;
    Some(out.status.success())
}

#[tokio::test]
async fn journal_files_are_private_and_exposed_secrets_are_warned_about() {
    let work = Arc::new(tempfile::tempdir().unwrap());
    // As /var/lib/fabricmq would be: the parent of the data directory is world-readable.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let users = work.path().join("users.toml");
    write_users_file(&users, "pw", &[("app", &[])]);
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let opts = || BrokerOptions {
        args: vec!["--users".into(), users.display().to_string()],
        ..Default::default()
    };
    let b = BrokerProcess::start_in(work.clone(), opts()).await.unwrap();
    let mut c = Raw::connect(b.addr, "app", "pw").await;
    c.put(
        "/queue/private",
        "a message body",
        &[("persistent", "true")],
    )
    .await;
    drop(c);

    let data = b.data_dir.clone();
    let mut files = Vec::new();
    tree(&data, &mut files);
    assert!(files.iter().any(|(p, _)| p.ends_with("journal/lock")));
    assert!(files
        .iter()
        .any(|(p, _)| p.to_string_lossy().ends_with(".log")));
    for (p, m) in &files {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*m, want, "{} is {m:o}", p.display());
    }
    assert_eq!(mode(&data), 0o700, "the data directory the broker created");
    let log = b.log_text();
    assert!(
        log.contains("the users file (password hashes) is readable by other users"),
        "{log}"
    );
    if let Some(can) = nobody_can_lock(&data.join("journal/lock")) {
        assert!(!can, "another user could lock the journal");
    }
    let mut b = b;
    assert_eq!(b.terminate(Duration::from_secs(20)).await.unwrap(), Some(0));

    // Files an older version left open to everyone are tightened at the next start.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("journal"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        data.join("journal/lock"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    if let Some(can) = nobody_can_lock(&data.join("journal/lock")) {
        assert!(
            can,
            "the old permissions should let another user lock the journal"
        );
    }
    let b = BrokerProcess::start_in(work.clone(), opts()).await.unwrap();
    assert_eq!(mode(&data.join("journal")), 0o700);
    assert_eq!(mode(&data.join("journal/lock")), 0o600);
    if let Some(can) = nobody_can_lock(&data.join("journal/lock")) {
        assert!(!can, "another user could lock the journal after a restart");
    }
    let mut c = Raw::connect(b.addr, "app", "pw").await;
    c.subscribe("s", "/queue/private", "auto", &[]).await;
    let m = c.expect(fabricmq_stomp::Command::Message).await;
    assert_eq!(fabricmq_tests::raw::body(&m), "a message body");
    b.assert_no_panic();
}
