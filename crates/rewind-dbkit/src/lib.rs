//! Database groundwork for rewind (classifying migrations lives in `rewind_db::sql`):
//!
//! - [`backup`]: SQLite snapshots (`VACUUM INTO`) and PostgreSQL dumps (`pg_dump -Fc`) as
//!   restore points, their restore, and their verification in a scratch database;
//! - [`pgrestore`]: the PostgreSQL restore that brings back owners, privileges, default
//!   privileges and comments exactly, `public` included;
//! - [`pgtools`]: which `pg_dump`/`pg_restore` fit the server;
//! - [`catalog`]: a database's catalog as sorted lines and their fingerprint, recorded with
//!   every backup and compared after a restore;
//! - [`inspect`]: rows per table and orphaned foreign keys on a live database;
//! - [`pitr`]: point-in-time recovery of PostgreSQL through pgBackRest.

pub mod backup;
pub mod catalog;
pub mod error;
pub mod inspect;
pub mod pgrestore;
pub mod pgtools;
pub mod pitr;

pub use backup::{
    BackupInfo, BackupKind, PARTIAL_MARK, PgBackup, PgUrl, Progress, VerifyReport, partial_path,
    pg_backup, pg_dump, pg_restore, pg_verify, pg_verify_with, sqlite_file_counts,
    sqlite_file_record, sqlite_restore, sqlite_snapshot, sqlite_verify, sqlite_verify_with,
};
pub use catalog::{Catalog, CatalogDiff};
pub use error::{Error, Result};
pub use inspect::{CheckOutcome, FkOrphans, Inspect, fk_orphans, integrity_check, row_counts};
pub use pgrestore::{PgRestoreOptions, pg_restore_exact};
pub use pgtools::{PgTools, ServerVersion};
pub use pitr::{
    BackupSet, PgBackRest, PitrPhase, PitrReport, Window, parse_target_time, restore_to_time,
};
