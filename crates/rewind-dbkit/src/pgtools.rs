//! Which `pg_dump` and `pg_restore` to run: of the server's major version or newer, since
//! pg_dump refuses a newer server ("server version mismatch") and an older pg_restore cannot
//! read a newer dump.
//!
//! Among those, the *closest* major wins (the server's own when it is installed), not the
//! newest: a newer pg_restore writes settings an older server does not know (pg_restore 17
//! and 18 send `SET transaction_timeout = 0` to a PostgreSQL 15 server, which fails with
//! "unrecognized configuration parameter"), and PostgreSQL does not promise that a newer
//! pg_dump's output loads into an older server.
//!
//! With `pg-bin` set, that directory or nothing. Otherwise the directories in `PATH`,
//! `/usr/lib/postgresql/<N>/bin` (Debian), `/usr/pgsql-<N>/bin` (the PGDG RPMs) and
//! `/opt/rewind-pg/<N>/bin` (where rewind's tests put extra majors). Debian's `pg_wrapper`
//! in `PATH` is skipped: it runs one of the `/usr/lib/postgresql` binaries, which are
//! candidates themselves.

use sqlx::PgConnection;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, db};

/// A directory holding `pg_dump` and `pg_restore` of one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTools {
    pub dir: PathBuf,
    /// The major version (`15`, `18`).
    pub major: u32,
    /// What `pg_dump --version` says after "(PostgreSQL)", e.g. `18.6`.
    pub version: String,
}

impl PgTools {
    pub fn pg_dump(&self) -> PathBuf {
        self.dir.join("pg_dump")
    }

    pub fn pg_restore(&self) -> PathBuf {
        self.dir.join("pg_restore")
    }
}

/// The server's version: `server_version_num` and `server_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerVersion {
    pub num: u32,
    pub text: String,
}

impl ServerVersion {
    /// `18` for 180006; `9` for 90624 (before 10 the major had two parts; those servers are
    /// older than any pg_dump found here anyway).
    pub fn major(&self) -> u32 {
        self.num / 10000
    }

    pub async fn of(conn: &mut PgConnection) -> Result<ServerVersion> {
        let (num, text): (String, String) = sqlx::query_as(
            "SELECT current_setting('server_version_num'), current_setting('server_version')",
        )
        .fetch_one(conn)
        .await
        .map_err(db("reading the server's version", None))?;
        Ok(ServerVersion {
            num: num.trim().parse().unwrap_or(0),
            text: text.split_whitespace().next().unwrap_or(&text).to_string(),
        })
    }
}

/// Chooses the client tools for `server`: in `pg_bin` only when given, else the closest fit
/// among the usual places. Fails naming the server's version, what was found, and `pg-bin`.
pub async fn choose(server: &ServerVersion, pg_bin: Option<&Path>) -> Result<PgTools> {
    let dirs = match pg_bin {
        Some(d) => vec![d.to_path_buf()],
        None => candidate_dirs(),
    };
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for dir in dirs {
        match probe(&dir).await {
            Ok(t) => found.push(t),
            Err(why) if pg_bin.is_some() => problems.push(why),
            Err(_) => {}
        }
    }
    if let Some(t) = pick(server.major(), &found) {
        return Ok(t.clone());
    }
    let mut seen: Vec<String> = found
        .iter()
        .map(|t| format!("{} ({})", t.pg_dump().display(), t.version))
        .collect();
    seen.extend(problems);
    Err(Error::PgTools {
        server: server.text.clone(),
        major: server.major(),
        found: seen,
        pg_bin: pg_bin.map(Path::to_path_buf),
    })
}

/// The one of `found` with the lowest major that is at least `major`; the first of equals.
pub fn pick(major: u32, found: &[PgTools]) -> Option<&PgTools> {
    found
        .iter()
        .filter(|t| t.major >= major)
        .fold(None, |best: Option<&PgTools>, t| match best {
            Some(b) if b.major <= t.major => Some(b),
            _ => Some(t),
        })
}

/// `PATH`, then the versioned directories, newest first; each once.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let dump = dir.join("pg_dump");
            let wrapper = std::fs::canonicalize(&dump)
                .is_ok_and(|p| p.file_name().is_some_and(|n| n == "pg_wrapper"));
            if dump.is_file() && !wrapper {
                dirs.push(dir);
            }
        }
    }
    let mut versioned: Vec<(u32, PathBuf)> = Vec::new();
    let mut scan = |parent: &str, prefix: &str, bin: &str| {
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = e.file_name();
            let Some(v) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            versioned.push((v, e.path().join(bin)));
        }
    };
    scan("/usr/lib/postgresql", "", "bin");
    scan("/usr", "pgsql-", "bin");
    scan("/opt/rewind-pg", "", "bin");
    versioned.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    dirs.extend(versioned.into_iter().map(|(_, d)| d));
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let key = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    dirs
}

/// Runs `DIR/pg_dump --version`; `Err` says why the directory does not serve.
async fn probe(dir: &Path) -> std::result::Result<PgTools, String> {
    let dump = dir.join("pg_dump");
    if !dump.is_file() {
        return Err(format!("{}: no pg_dump there", dir.display()));
    }
    if !dir.join("pg_restore").is_file() {
        return Err(format!("{}: no pg_restore there", dir.display()));
    }
    let out = rewind_proc::Command::new(&dump)
        .arg("--version")
        .output()
        .await
        .map_err(|e| format!("{}: cannot run it: {}", dump.display(), e.into_io()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = parse_version(&text)
        .ok_or_else(|| format!("{}: unexpected --version output {text:?}", dump.display()))?;
    let major = version
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .map_err(|_| format!("{}: unexpected version {version:?}", dump.display()))?;
    Ok(PgTools {
        dir: dir.to_path_buf(),
        major,
        version,
    })
}

/// `pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` → `15.20`.
fn parse_version(text: &str) -> Option<String> {
    let rest = text.split("(PostgreSQL)").nth(1)?;
    rest.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(dir: &str, major: u32) -> PgTools {
        PgTools {
            dir: dir.into(),
            major,
            version: format!("{major}.1"),
        }
    }

    #[test]
    fn picks_the_closest_that_is_not_older_than_the_server() {
        let found = [
            tools("/usr/bin", 15),
            tools("/opt/rewind-pg/18/bin", 18),
            tools("/usr/lib/postgresql/16/bin", 16),
            tools("/usr/local/bin", 18),
        ];
        assert_eq!(pick(15, &found).unwrap().dir, Path::new("/usr/bin"));
        assert_eq!(
            pick(16, &found).unwrap().dir,
            Path::new("/usr/lib/postgresql/16/bin")
        );
        assert_eq!(
            pick(17, &found).unwrap().dir,
            Path::new("/opt/rewind-pg/18/bin")
        );
        assert_eq!(
            pick(18, &found).unwrap().dir,
            Path::new("/opt/rewind-pg/18/bin")
        );
        assert!(pick(19, &found).is_none());
        assert!(pick(15, &[]).is_none());
    }

    #[test]
    fn versions_are_read_from_pg_dump() {
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n").as_deref(),
            Some("15.20")
        );
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 18.6\n").as_deref(),
            Some("18.6")
        );
        assert_eq!(parse_version("something else"), None);
        let v = ServerVersion {
            num: 180006,
            text: "18.6".into(),
        };
        assert_eq!(v.major(), 18);
    }

    #[tokio::test]
    async fn a_pg_bin_without_the_tools_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerVersion {
            num: 180006,
            text: "18.6".into(),
        };
        let e = choose(&server, Some(dir.path()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("18.6"), "{e}");
        assert!(e.contains("no pg_dump there"), "{e}");
        assert!(e.contains("pg-bin"), "{e}");
    }
}
