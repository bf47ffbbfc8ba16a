//! A small tmpfs for a store that must run out of space (the chaos runner's `disk-full` fault, the
//! standalone disk-full test), and a filler that takes all of its space.
//!
//! Mounting needs root (CAP_SYS_ADMIN); [`Mount::tmpfs`] reports the failure so that callers can
//! skip with a clear message. The mount is removed (lazily, `umount -l`) on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A tmpfs mounted by this process; unmounted on drop.
#[derive(Debug)]
pub struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `bytes` at `at` (created if missing).
    pub fn tmpfs(at: &Path, bytes: u64) -> anyhow::Result<Mount> {
        std::fs::create_dir_all(at)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(at)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mount -t tmpfs at {} failed ({status})", at.display());
        }
        Ok(Mount(at.to_path_buf()))
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until its filesystem is full (ENOSPC); returns the bytes written.
pub fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0xA5u8; 1 << 20];
    let mut written = 0u64;
    let mut len = chunk.len();
    loop {
        match f.write(&chunk[..len]) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => {
                // Down to the last bytes: a smaller write may still fit.
                if len == 1 {
                    return Ok(written);
                }
                len /= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
