//! Checksum drift: applied migrations whose file changed since, or is gone.
//!
//! The checksum each tool stored when it applied a migration (see
//! [`crate::migrations::Checksum`]) is compared with the file on disk now. A file whose only
//! change is its line endings (a CRLF checkout of an LF file, or the reverse) is not drift:
//! the stored value is also compared with the file's all-LF and all-CRLF forms, so the
//! byte-exact hashes of sqlx, refinery and sqitch give the same answer as Flyway's
//! line-by-line CRC32 (those tools themselves do see such a file as changed:
//! [`DriftReport::line_endings_only`] lists them). diesel and golang-migrate keep no checksum: their applied migrations
//! are reported as unchecked, never as drift.
//!
//! Drift is reported, not enforced: [`crate::apply`] and [`crate::revert`] still run.

use std::fmt;
use std::path::PathBuf;

use sqlx::AnyPool;

use crate::history::{self, Recorded};
use crate::migrations::{Format, Migration, checksum_of, line_ending_forms};
use crate::{Result, query_err};

/// One applied migration that no longer matches the migrations directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// [`Migration::version`]; for a migration missing from the directory, the version its
    /// history holds (sqitch: the change name, as a missing change has no plan position).
    pub version: String,
    /// The migration's name: from the directory when it is there, else from the history.
    pub name: String,
    /// The up (deploy) script; `None` when it is missing.
    pub file: Option<PathBuf>,
    pub kind: DriftKind,
}

/// What is wrong with a [`Drift`]ed migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftKind {
    /// The file changed after it was applied: the checksum the history stored (`stored`)
    /// is not the file's (`found`), as text in the history's own form.
    Changed { stored: String, found: String },
    /// The history says it is applied, but the directory has no such migration.
    Missing,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.file) {
            (DriftKind::Changed { stored, found }, Some(file)) => write!(
                f,
                "V{} ({}, {}) changed after it was applied: checksum {found}, history has {stored}",
                self.version,
                self.name,
                file.display()
            ),
            (DriftKind::Changed { stored, found }, None) => write!(
                f,
                "V{} ({}) changed after it was applied: checksum {found}, history has {stored}",
                self.version, self.name
            ),
            (DriftKind::Missing, _) => write!(
                f,
                "V{}{} is applied but has no file in the migrations directory",
                self.version,
                if self.name.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.name)
                }
            ),
        }
    }
}

/// An applied migration whose file could not be compared with the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchecked {
    pub version: String,
    pub name: String,
    /// Why: the tool keeps no checksum, or the history row has none.
    pub reason: &'static str,
}

/// What [`drift`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriftReport {
    /// Applied migrations whose file changed or is missing, in apply order.
    pub drift: Vec<Drift>,
    /// Applied migrations that could not be checked, in apply order.
    pub unchecked: Vec<Unchecked>,
    /// How many applied migrations were compared and found unchanged.
    pub unchanged: usize,
    /// Of those, the versions whose file differs from what was applied in line endings only.
    /// Not drift; but sqlx and sqitch hash bytes, so the tool itself sees them as changed
    /// (`sqlx migrate run` refuses to go on until the file is checked out as applied).
    pub line_endings_only: Vec<String>,
}

impl DriftReport {
    /// True when no applied migration drifted (unchecked ones do not count).
    pub fn is_clean(&self) -> bool {
        self.drift.is_empty()
    }
}

/// Compares the history of `format` with `migrations` (read from the directory now).
pub async fn drift(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
) -> Result<DriftReport> {
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    history::prepare(&mut conn, format).await?;
    let recorded = history::recorded(&mut conn, format, migrations).await?;
    Ok(compare(format, migrations, &recorded))
}

/// Records, for the applied migrations `keys` (see [`Migration::key`]), the checksum their
/// files have now, as the tool's own repair does (`flyway repair` realigns the checksum and
/// description; sqlx, refinery and sqitch have no command for it, so their stored checksum
/// is updated the same way), in one transaction. Returns the versions whose stored value
/// changed. diesel and golang-migrate keep no checksum: nothing to record.
pub async fn accept(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    keys: &[String],
) -> Result<Vec<String>> {
    use sqlx::Connection;
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    history::prepare(&mut conn, format).await?;
    let mut tx = conn
        .begin()
        .await
        .map_err(query_err("beginning a transaction"))?;
    let recorded = history::recorded(&mut tx, format, migrations).await?;
    let mut updated = Vec::new();
    for key in keys {
        let Some(m) = migrations.iter().find(|m| m.key() == key) else {
            return Err(crate::Error::UnknownVersion(key.clone()));
        };
        let Some(r) = recorded.iter().find(|r| &r.key == key) else {
            continue;
        };
        let sum = crate::migrations::tool_checksum(format, m);
        if r.checksum.as_deref() == Some(sum.to_text().as_str()) {
            continue;
        }
        let doing = format!("recording the new checksum of {}", m.label());
        let q = match (format, &sum) {
            (Format::Sqlx, crate::migrations::Checksum::Sha384(bytes)) => {
                sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2")
                    .bind(bytes.clone())
                    .bind(m.version.parse::<i64>().unwrap_or_default())
            }
            (Format::Flyway, crate::migrations::Checksum::Crc32(c)) => sqlx::query(
                "UPDATE flyway_schema_history SET checksum = $1, description = $2 \
                 WHERE installed_rank = (SELECT MAX(installed_rank) FROM flyway_schema_history \
                 WHERE version = $3 AND type = 'SQL' AND success)",
            )
            .bind(*c)
            .bind(m.name.clone())
            .bind(m.version.clone()),
            (Format::Refinery, _) => sqlx::query(
                "UPDATE refinery_schema_history SET checksum = $1, name = $2 WHERE version = $3",
            )
            .bind(sum.to_text())
            .bind(m.name.clone())
            .bind(m.version.parse::<i32>().unwrap_or_default()),
            (Format::Sqitch, _) => {
                sqlx::query("UPDATE sqitch.changes SET script_hash = $1 WHERE change_id = $2")
                    .bind(sum.to_text())
                    .bind(key.clone())
            }
            _ => continue,
        };
        q.execute(&mut *tx).await.map_err(query_err(doing))?;
        updated.push(m.version.clone());
    }
    tx.commit()
        .await
        .map_err(query_err("committing the new checksums"))?;
    Ok(updated)
}

const NO_CHECKSUM_KEPT: &str = "the tool keeps no checksum";
const ROW_HAS_NONE: &str = "the history row has no checksum";

/// The pure part of [`drift`]: `recorded` is what the history holds.
pub fn compare(format: Format, migrations: &[Migration], recorded: &[Recorded]) -> DriftReport {
    let mut report = DriftReport::default();
    let find = |key: &str| migrations.iter().find(|m| m.key() == key);
    for r in recorded {
        let Some(m) = find(&r.key) else {
            report.drift.push(Drift {
                // A sqitch change that left the plan is named by its change name.
                version: if format == Format::Sqitch {
                    r.name.clone()
                } else {
                    r.key.clone()
                },
                name: r.name.clone(),
                file: None,
                kind: DriftKind::Missing,
            });
            continue;
        };
        if format == Format::GolangMigrate {
            report.unchecked.push(Unchecked {
                version: m.version.clone(),
                name: m.name.clone(),
                reason: NO_CHECKSUM_KEPT,
            });
            continue;
        }
        let Some(stored) = &r.checksum else {
            report.unchecked.push(Unchecked {
                version: m.version.clone(),
                name: m.name.clone(),
                reason: if format == Format::Diesel {
                    NO_CHECKSUM_KEPT
                } else {
                    ROW_HAS_NONE
                },
            });
            continue;
        };
        if same_checksum(format, m, &m.up, stored) {
            report.unchanged += 1;
        } else if matches_stored(format, m, stored) {
            report.unchanged += 1;
            report.line_endings_only.push(m.version.clone());
        } else {
            report.drift.push(Drift {
                version: m.version.clone(),
                name: m.name.clone(),
                file: Some(m.file.clone()),
                kind: DriftKind::Changed {
                    stored: stored.clone(),
                    found: checksum_of(format, &m.version, &m.name, &m.up).to_text(),
                },
            });
        }
    }
    report
}

/// True when `stored` is the checksum of `m`'s up script as it is, or of its all-LF or
/// all-CRLF form.
pub fn matches_stored(format: Format, m: &Migration, stored: &str) -> bool {
    same_checksum(format, m, &m.up, stored)
        || line_ending_forms(&m.up)
            .iter()
            .any(|sql| same_checksum(format, m, sql, stored))
}

fn same_checksum(format: Format, m: &Migration, sql: &str, stored: &str) -> bool {
    checksum_of(format, &m.version, &m.name, sql)
        .to_text()
        .eq_ignore_ascii_case(stored.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::tool_checksum;

    fn mig(version: &str, name: &str, up: &str) -> Migration {
        Migration {
            version: version.into(),
            name: name.into(),
            up: up.into(),
            down: None,
            file: format!("{version}_{name}.sql").into(),
            down_file: None,
            sqitch: None,
            ..Migration::default()
        }
    }

    fn rec(key: &str, checksum: Option<String>) -> Recorded {
        Recorded {
            key: key.into(),
            name: "from history".into(),
            checksum,
        }
    }

    const LF: &str = "CREATE TABLE t (id INT);\nINSERT INTO t VALUES (1);\n";

    #[test]
    fn line_endings_alone_are_not_drift_in_any_format() {
        let crlf = LF.replace('\n', "\r\n");
        for format in [
            Format::Sqlx,
            Format::Flyway,
            Format::Refinery,
            Format::Sqitch,
        ] {
            // The history's key: the version (for sqitch the change id, which these
            // plan-less migrations do not have, so their version stands in).
            let key = "1";
            let applied_lf = tool_checksum(format, &mig("1", "init", LF)).to_text();
            let applied_crlf = tool_checksum(format, &mig("1", "init", &crlf)).to_text();
            // Applied from an LF checkout, now CRLF, and the reverse.
            for (stored, now) in [(&applied_lf, crlf.as_str()), (&applied_crlf, LF)] {
                let report = compare(
                    format,
                    &[mig("1", "init", now)],
                    &[rec(key, Some(stored.clone()))],
                );
                assert!(report.is_clean(), "{format}: {report:?}");
                assert_eq!(report.unchanged, 1);
                // Flyway's CRC32 skips line endings; the others hash bytes.
                let bytes = usize::from(format != Format::Flyway);
                assert_eq!(
                    report.line_endings_only.len(),
                    bytes,
                    "{format}: {report:?}"
                );
            }
            // A real edit is drift, whatever the line endings.
            let edited = crlf.replace("(1)", "(2)");
            let report = compare(
                format,
                &[mig("1", "init", &edited)],
                &[rec(key, Some(applied_lf.clone()))],
            );
            assert_eq!(report.drift.len(), 1, "{format}: {report:?}");
            let d = &report.drift[0];
            assert_eq!(
                d.kind,
                DriftKind::Changed {
                    stored: applied_lf.clone(),
                    found: tool_checksum(format, &mig("1", "init", &edited)).to_text(),
                }
            );
            assert!(
                d.to_string().contains("V1 (init, 1_init.sql) changed"),
                "{d}"
            );
        }
    }

    #[test]
    fn missing_files_and_unchecked_formats() {
        let migs = [mig("1", "a", LF), mig("2", "b", LF), mig("3", "c", LF)];
        let sum = |m: &Migration| Some(tool_checksum(Format::Sqlx, m).to_text());
        let report = compare(
            Format::Sqlx,
            &migs,
            &[rec("1", sum(&migs[0])), rec("7", Some("ab".into()))],
        );
        assert_eq!(report.unchanged, 1);
        assert_eq!(
            report.drift,
            [Drift {
                version: "7".into(),
                name: "from history".into(),
                file: None,
                kind: DriftKind::Missing,
            }]
        );
        assert!(
            report.drift[0]
                .to_string()
                .contains("V7 (from history) is applied but has no file")
        );

        // diesel: no checksum, so never drift; a row without a directory still is.
        let report = compare(Format::Diesel, &migs, &[rec("1", None), rec("9", None)]);
        assert_eq!(report.unchecked.len(), 1);
        assert_eq!(report.unchecked[0].reason, NO_CHECKSUM_KEPT);
        assert_eq!(report.drift.len(), 1);
        assert_eq!(report.drift[0].kind, DriftKind::Missing);

        // golang-migrate: `recorded` expands the current version to every one before it.
        let report = compare(
            Format::GolangMigrate,
            &migs,
            &[rec("1", None), rec("2", None)],
        );
        assert!(report.is_clean());
        let versions: Vec<_> = report
            .unchecked
            .iter()
            .map(|u| u.version.as_str())
            .collect();
        assert_eq!(versions, ["1", "2"]);
        let report = compare(Format::GolangMigrate, &migs, &[rec("4", None)]);
        assert_eq!(report.drift[0].kind, DriftKind::Missing);

        // sqitch: a change without a script hash cannot be checked.
        let report = compare(
            Format::Sqitch,
            &[mig("0001", "a", LF)],
            &[rec("0001", None)],
        );
        assert_eq!(report.unchecked[0].reason, ROW_HAS_NONE);
    }
}
