//! The libpq password file (`PGPASSFILE` or `~/.pgpass`), read as libpq reads it.

use std::path::PathBuf;

use tokio_postgres::config::Host;

/// The password the passfile holds for this host, port, database and user, if any.
/// A file readable by others is ignored, as libpq ignores it.
pub(crate) fn lookup(host: &Host, port: u16, dbname: &str, user: &str) -> Option<String> {
    let path = match std::env::var_os("PGPASSFILE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    let meta = std::fs::metadata(&path).ok()?;
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
        tracing::warn!(file = %path.display(), "password file is readable by others; ignored, as libpq does (chmod 0600 it)");
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    passfile_lookup(&text, host, port, dbname, user)
}

/// The password for the first matching line of a libpq password file.
fn passfile_lookup(text: &str, host: &Host, port: u16, dbname: &str, user: &str) -> Option<String> {
    let (host_name, is_socket) = match host {
        Host::Tcp(name) => (name.clone(), false),
        Host::Unix(path) => (path.display().to_string(), true),
    };
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        let [h, p, d, u, pw] = fields.as_slice() else {
            continue;
        };
        let host_ok = h == "*" || *h == host_name || (is_socket && h == "localhost");
        if host_ok
            && (p == "*" || *p == port)
            && (d == "*" || d == dbname)
            && (u == "*" || u == user)
        {
            return Some(pw.clone());
        }
    }
    None
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(field)) = (chars.next(), fields.last_mut()) {
                    field.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            _ => {
                if let Some(field) = fields.last_mut() {
                    field.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_lines_match_like_libpq() {
        let text = "# comment\nother:5432:*:app:nope\n*:6543:*:app:wrongport\ndb.example:5432:app:app:s3cr\\:et\nlocalhost:*:*:*:socketpw\n";
        let tcp = Host::Tcp("db.example".into());
        assert_eq!(
            passfile_lookup(text, &tcp, 5432, "app", "app"),
            Some("s3cr:et".into())
        );
        assert_eq!(
            passfile_lookup(text, &tcp, 6543, "app", "app"),
            Some("wrongport".into())
        );
        assert_eq!(passfile_lookup(text, &tcp, 5432, "other", "app"), None);
        let socket = Host::Unix("/var/run/postgresql".into());
        assert_eq!(
            passfile_lookup(text, &socket, 5432, "x", "y"),
            Some("socketpw".into())
        );
    }
}
