//! Checks of the permissions of secret-bearing files the broker reads (the users file with
//! password hashes, the registry credentials file). The broker's own files are created private
//! by the journal (`store::FILE_MODE`, `store::DIR_MODE`); these files belong to the operator,
//! so the broker only warns, naming the file and the fix.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Whether a file with mode `mode` can be read (or written) by users other than its owner.
pub fn exposed(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Logs a warning when `path` (described as `what`) is accessible to its group or to other
/// users. A file that cannot be inspected is left to the code that reads it to report.
pub fn warn_if_exposed(path: &Path, what: &str) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if exposed(mode) {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:o}"),
            "{what} is readable by other users; restrict it with `chmod 600 {}`",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_world_access_is_exposed() {
        assert!(!exposed(0o600));
        assert!(!exposed(0o400));
        assert!(exposed(0o640));
        assert!(exposed(0o644));
        assert!(exposed(0o604));
    }
}
