//! Database groundwork for rewind (classifying migrations lives in `rewind_db::sql`):
//!
//! - [`backup`]: SQLite snapshots (`VACUUM INTO`) and PostgreSQL dumps (`pg_dump -Fc`) as
//!   restore points, their restore, and their verification in a scratch database;
//! - [`inspect`]: rows per table and orphaned foreign keys on a live database;
//! - [`pitr`]: point-in-time recovery of PostgreSQL through pgBackRest.

pub mod backup;
pub mod error;
pub mod inspect;
pub mod pitr;

pub use backup::{
    BackupInfo, BackupKind, PgUrl, Progress, VerifyReport, pg_dump, pg_dump_with_counts,
    pg_restore, pg_verify, pg_verify_with, sqlite_file_counts, sqlite_restore, sqlite_snapshot,
    sqlite_verify, sqlite_verify_with,
};
pub use error::{Error, Result};
pub use inspect::{CheckOutcome, FkOrphans, Inspect, fk_orphans, integrity_check, row_counts};
pub use pitr::{
    BackupSet, PgBackRest, PitrPhase, PitrReport, Window, parse_target_time, restore_to_time,
};
