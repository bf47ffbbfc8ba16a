//! Users files for tests: every user gets the same password (one argon2 hash, computed once).

use std::path::Path;

/// Writes a users file at `path` giving each `(user, groups)` the password `password`.
pub fn write_users_file(path: &Path, password: &str, users: &[(&str, &[&str])]) {
    let hash = fabricmq_broker::auth::hash_password(password).expect("hash a password");
    let mut text = String::new();
    for (user, groups) in users {
        let groups: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
        text.push_str(&format!(
            "[users.{user}]\npassword = \"{hash}\"\ngroups = [{}]\n",
            groups.join(", ")
        ));
    }
    std::fs::write(path, text).expect("write the users file");
}
