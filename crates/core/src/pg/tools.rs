//! Finding PostgreSQL's programs: the newest install whose major version is high enough.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result, Setting};

/// A directory of PostgreSQL client/server programs of one major version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTools {
    dir: PathBuf,
    version: String,
    major: u32,
}

impl PgTools {
    /// Finds the newest PostgreSQL bin directory whose major version is at least
    /// `min_major` and that holds every program in `programs`.
    ///
    /// With `explicit_dir` only that directory is considered; otherwise the usual
    /// install locations and `PATH`.
    pub fn find(explicit_dir: Option<&Path>, min_major: u32, programs: &[&str]) -> Result<Self> {
        let candidates = match explicit_dir {
            Some(dir) => vec![dir.to_path_buf()],
            None => candidate_dirs(),
        };
        let mut found: Vec<PgTools> = Vec::new();
        for dir in candidates {
            if !programs.iter().all(|p| dir.join(p).is_file()) {
                continue;
            }
            let Ok(canonical) = dir.canonicalize() else {
                continue;
            };
            if found.iter().any(|t| t.dir == canonical) {
                continue;
            }
            if let Some(tools) = Self::probe(&canonical, programs[0]) {
                found.push(tools);
            }
        }
        found.sort_by_key(|t| std::cmp::Reverse(t.major));
        if let Some(best) = found.iter().find(|t| t.major >= min_major) {
            return Ok(best.clone());
        }
        let seen = if found.is_empty() {
            "none found".to_owned()
        } else {
            found
                .iter()
                .map(|t| format!("{} in {}", t.version, t.dir.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let where_ = match explicit_dir {
            Some(dir) => format!("in the configured bin directory {}", dir.display()),
            None => "in the usual install directories or PATH".to_owned(),
        };
        let wanted = match min_major {
            0 => "PostgreSQL".to_owned(),
            m => format!("PostgreSQL {m} or newer"),
        };
        Err(Error::tool(format!(
            "need {} of {wanted} {where_}, but found: {seen}; {}",
            programs.join("/"),
            install_hint(min_major, programs)
        ))
        .with_setting(Setting::PgBinDir))
    }

    fn probe(dir: &Path, program: &str) -> Option<Self> {
        let out = Command::new(dir.join(program))
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (version, major) = parse_version_output(&text)?;
        Some(Self {
            dir: dir.to_path_buf(),
            version,
            major,
        })
    }

    /// Path of a program in this directory.
    pub fn bin(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Version string as the programs print it (e.g. `15.18`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Major version.
    pub fn major(&self) -> u32 {
        self.major
    }
}

/// What to install, by package name, for `programs` of PostgreSQL `min_major` or newer.
/// An older pg_dump refuses a newer server and an older pg_restore may not read a
/// newer archive, so the hint names the major wanted, not just "a client package".
fn install_hint(min_major: u32, programs: &[&str]) -> String {
    let server = programs
        .iter()
        .any(|p| matches!(*p, "initdb" | "pg_ctl" | "postgres"));
    let (which, debian, rhel) = match (min_major, server) {
        (0, false) => (
            "PostgreSQL's".to_owned(),
            "postgresql-client".to_owned(),
            "postgresql".to_owned(),
        ),
        (0, true) => (
            "PostgreSQL's".to_owned(),
            "postgresql".to_owned(),
            "postgresql-server".to_owned(),
        ),
        (m, false) => (
            format!("PostgreSQL {m}'s"),
            format!("postgresql-client-{m}"),
            format!("postgresql{m}"),
        ),
        (m, true) => (
            format!("PostgreSQL {m}'s"),
            format!("postgresql-{m}"),
            format!("postgresql{m}-server"),
        ),
    };
    let what = if server { "server" } else { "client" };
    format!(
        "install {which} {what} programs (Debian/Ubuntu package {debian}, RHEL {rhel}; the PGDG repositories carry every major) and name their bin directory"
    )
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let globbed = [
        ("/usr/lib/postgresql", ""),
        ("/usr", "pgsql-"),
        ("/opt/homebrew/opt", "postgresql@"),
        ("/usr/local/opt", "postgresql@"),
    ];
    for (parent, prefix) in globbed {
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(prefix) {
                    dirs.push(entry.path().join("bin"));
                }
            }
        }
    }
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// Parses `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` into `("15.18", 15)`.
pub fn parse_version_output(text: &str) -> Option<(String, u32)> {
    let rest = text.split("(PostgreSQL)").nth(1)?;
    let version = rest.split_whitespace().next()?.to_owned();
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().ok()?;
    Some((version, major))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_search_names_the_versions_it_found() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("pg_dump");
        std::fs::write(&script, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11'\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

        let found = PgTools::find(Some(dir.path()), 14, &["pg_dump"]).unwrap();
        assert_eq!((found.major(), found.version()), (14, "14.11"));

        let err = PgTools::find(Some(dir.path()), 16, &["pg_dump"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PostgreSQL 16 or newer"), "{err}");
        assert!(err.contains("14.11 in"), "{err}");
        assert!(err.contains("bin directory"), "{err}");
        assert!(err.contains("postgresql-client-16"), "{err}");

        let err = PgTools::find(Some(dir.path()), 16, &["initdb", "pg_ctl"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("package postgresql-16,"), "{err}");

        let err = PgTools::find(Some(dir.path()), 14, &["pg_dump", "pg_restore"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("none found"), "{err}");
    }

    #[test]
    fn versions_parse_across_packagings() {
        assert_eq!(
            parse_version_output("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(("15.18".into(), 15))
        );
        assert_eq!(
            parse_version_output("pg_dump (PostgreSQL) 18devel"),
            Some(("18devel".into(), 18))
        );
        assert_eq!(parse_version_output("something else"), None);
    }
}
