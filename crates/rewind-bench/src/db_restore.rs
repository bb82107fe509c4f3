//! The restore benchmark: rewind-dbkit's restores against the native floor doing the same.
//!
//! - PostgreSQL: `rewind_dbkit::pg_restore` (checksum check, then `pg_restore --clean
//!   --if-exists -j J`) against `pg_restore` run directly with the same flags, on a dump of a
//!   scratch database with four related tables, indexes and foreign keys.
//! - SQLite: `rewind_dbkit::sqlite_restore` (checked copy beside the database, fsync, remove
//!   stale `-wal`/`-shm`/`-journal`, rename, directory fsync) against a plain copy + rename,
//!   and against the careful operator's copy + fsync + rename + directory fsync.
//!
//! Before every timed run PostgreSQL is checkpointed and the page cache written out (`sync`),
//! untimed, so no contender pays for the other's leftover writes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rewind_dbkit::BackupInfo;
use sqlx::Connection;
use tokio::runtime::Runtime;

use crate::measure::{self, Contender, Row, cpus, fmt_ms, ms};
use crate::pg::{self, ScratchDb};
use crate::stats::Summary;

pub struct Args {
    pub url: Option<String>,
    pub sqlite: bool,
    /// PostgreSQL: rows in all tables together.
    pub rows: usize,
    /// SQLite: the database size to aim for.
    pub size_mb: usize,
    pub jobs: usize,
    pub runs: usize,
}

/// Rows per table for `total` rows: customers 10 %, orders 25 %, order lines 50 % (two per
/// order), events 15 %.
fn pg_split(total: usize) -> [(&'static str, usize); 4] {
    let customers = (total / 10).max(1);
    let orders = (total / 4).max(1);
    let lines = 2 * orders;
    let events = total.saturating_sub(customers + orders + lines).max(1);
    [
        ("customers", customers),
        ("orders", orders),
        ("order_lines", lines),
        ("events", events),
    ]
}

fn pg_fill_sql(total: usize) -> String {
    let [(_, c), (_, o), (_, _), (_, e)] = pg_split(total);
    format!(
        "CREATE TABLE customers (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL
);
INSERT INTO customers
    SELECT g, 'customer ' || g, 'c' || g || '@example.com',
           timestamptz '2025-01-01' + g * interval '1 minute'
    FROM generate_series(1, {c}) AS g;
CREATE TABLE orders (
    id BIGINT PRIMARY KEY,
    customer_id BIGINT NOT NULL REFERENCES customers (id),
    status TEXT NOT NULL,
    total NUMERIC(12,2) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
INSERT INTO orders
    SELECT g, (g::bigint * 7919) % {c} + 1, (ARRAY['new','paid','shipped','returned'])[g % 4 + 1],
           (g % 100000) / 100.0, timestamptz '2025-01-01' + g * interval '10 seconds'
    FROM generate_series(1, {o}) AS g;
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_created_idx ON orders (created_at);
CREATE TABLE order_lines (
    order_id BIGINT NOT NULL REFERENCES orders (id),
    line INT NOT NULL,
    sku TEXT NOT NULL,
    qty INT NOT NULL,
    price NUMERIC(10,2) NOT NULL,
    PRIMARY KEY (order_id, line)
);
INSERT INTO order_lines
    SELECT (g - 1) / 2 + 1, (g - 1) % 2 + 1, 'SKU-' || (g % 5000), g % 5 + 1, (g % 2000) / 100.0
    FROM generate_series(1, 2 * {o}) AS g;
CREATE INDEX order_lines_sku_idx ON order_lines (sku);
CREATE TABLE events (
    id BIGINT PRIMARY KEY,
    order_id BIGINT REFERENCES orders (id),
    payload JSONB NOT NULL,
    at TIMESTAMPTZ NOT NULL
);
INSERT INTO events
    SELECT g, (g::bigint * 104729) % {o} + 1,
           jsonb_build_object('kind', 'status', 'seq', g, 'note', md5(g::text)),
           timestamptz '2025-01-01' + g * interval '1 second'
    FROM generate_series(1, {e}) AS g;
CREATE INDEX events_order_idx ON events (order_id);
"
    )
}

const PG_COUNT: &str = "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM orders) \
     + (SELECT count(*) FROM order_lines) + (SELECT count(*) FROM events)";

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    // TMPDIR, else /tmp: it must be on a real disk (not tmpfs) for the fsyncs to cost what
    // they cost in production.
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))
}

/// Times `BackupInfo::check` alone (the checksum pass rewind adds), `runs` times.
fn checksum_pass(rt: &Runtime, info: &BackupInfo, runs: usize) -> Result<Summary, String> {
    let mut t = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        rt.block_on(info.check()).map_err(|e| e.to_string())?;
        t.push(ms(start.elapsed()));
    }
    Ok(Summary::of(&t))
}

fn run_pg(rt: &Runtime, url: &str, args: &Args) -> Result<(), String> {
    let pg_restore = pg::tool("pg_restore")?;
    eprintln!(
        "floor: {}; rewind-dbkit runs {}",
        pg_restore.display(),
        rewind_dbkit::backup::find_pg_tool("pg_restore")
            .map_err(|e| e.to_string())?
            .display()
    );
    let src = ScratchDb::create(rt, url, "restore_src")?;
    let dst = ScratchDb::create(rt, url, "restore_dst")?;
    eprintln!(
        "scratch databases {} and {} on {}; loading {} rows",
        src.name,
        dst.name,
        pg::redact(url),
        args.rows
    );
    let started = Instant::now();
    pg::exec(rt, &src.url, &pg_fill_sql(args.rows))?;
    let expected = pg::scalar(rt, &src.url, PG_COUNT)?;
    let db_bytes = pg::scalar(rt, &src.url, "SELECT pg_database_size(current_database())")?;
    eprintln!(
        "loaded {expected} rows ({}) in {:.1} s",
        mb(db_bytes as u64),
        started.elapsed().as_secs_f64()
    );
    let tmp = temp_dir("rewind-bench-restore-")?;
    let dump = tmp.path().join("src.dump");
    let info = rt
        .block_on(rewind_dbkit::pg_dump(&src.url, &dump))
        .map_err(|e| e.to_string())?;
    eprintln!("dumped to {} ({})", dump.display(), mb(info.bytes));
    // The first restore into the empty database creates everything; the measured ones drop
    // and recreate it, as a restore over a live database does.
    rt.block_on(rewind_dbkit::pg_restore(&dst.url, &info, args.jobs))
        .map_err(|e| e.to_string())?;

    let jobs = args.jobs.max(1);
    let verify = || {
        let n = pg::scalar(rt, &dst.url, PG_COUNT)?;
        if n != expected {
            return Err(format!("restored {n} rows, expected {expected}"));
        }
        Ok(())
    };
    let rewind = Contender::new("rewind pg_restore", || {
        rt.block_on(rewind_dbkit::pg_restore(&dst.url, &info, jobs))
            .map_err(|e| e.to_string())
    })
    .prepare(|| pg::settle(rt, url))
    .verify(verify);
    let floor_label = format!("pg_restore --clean --if-exists -j {jobs}");
    let floor = Contender::new(floor_label.clone(), || {
        let mut cmd = pg::command(&pg_restore, &dst.url)?;
        cmd.arg("--no-password")
            .arg(format!("--jobs={jobs}"))
            .args(["--clean", "--if-exists", "--exit-on-error"])
            .arg(pg::dbname_arg(&dst.url)?)
            .arg(&dump);
        pg::run(&mut cmd, "pg_restore")
    })
    .prepare(|| pg::settle(rt, url))
    .verify(verify);
    let mut contenders = [rewind, floor];
    let load_start = measure::loadavg();
    let samples = measure::measure(&mut contenders, args.runs)?;
    let load = format!(
        "{load_start} at the start, {} at the end",
        measure::loadavg()
    );
    drop(contenders);
    let check = checksum_pass(rt, &info, args.runs)?;

    println!(
        "Restore a pg_dump -Fc archive over a live database, PostgreSQL, {expected} rows \
         ({} database, {} dump), -j {jobs}, median of {} runs (1 warm-up round unmeasured; \
         order alternates; CHECKPOINT + sync before each run):\n",
        mb(db_bytes as u64),
        mb(info.bytes),
        args.runs
    );
    let rows = [Row {
        key: format!("{expected} rows, {} dump", mb(info.bytes)),
        floor: floor_label,
        rewind: Summary::of(&samples[0]),
        floor_times: Summary::of(&samples[1]),
    }];
    measure::print_table("database", &rows);
    println!();
    println!(
        "The checksum pass alone (BackupInfo::check, BLAKE3 over the dump, page cache warm): \
         {} ms median.",
        fmt_ms(check.median)
    );
    println!("Load average (1/5/15 min, {} CPUs): {load}.", cpus());
    Ok(())
}

/// Builds a SQLite database of about `size_mb` MB at `path`: users and their events (a
/// 200-byte payload each), with indexes.
fn sqlite_fill(rt: &Runtime, path: &Path, size_mb: usize) -> Result<(), String> {
    let events = size_mb * 1_000_000 / 330;
    let users = (events / 50).max(1);
    let sql = format!(
        "PRAGMA synchronous = OFF;
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL);
WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {users})
    INSERT INTO users SELECT g, 'u' || g || '@example.com', 'user ' || g FROM s;
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at TEXT NOT NULL
);
WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {events})
    INSERT INTO events
    SELECT g, g % {users} + 1, 'kind-' || (g % 17), randomblob(200),
           strftime('%Y-%m-%dT%H:%M:%S', 1735689600 + g, 'unixepoch')
    FROM s;
CREATE INDEX events_user_idx ON events (user_id);
CREATE INDEX events_kind_idx ON events (kind, created_at);
"
    );
    rt.block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        let mut c = sqlx::sqlite::SqliteConnection::connect_with(&opts)
            .await
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .map_err(|e| format!("filling {}: {e}", path.display()))?;
        c.close()
            .await
            .map_err(|e| format!("closing {}: {e}", path.display()))
    })
}

fn beside(db: &Path) -> PathBuf {
    db.with_file_name(".app.db.copy-tmp")
}

fn fsync_dir(db: &Path) -> Result<(), String> {
    let dir = db.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync {}: {e}", dir.display()))
}

/// The plain copy: `std::fs::copy` (copy_file_range, like cp) beside, then rename.
fn plain_copy(backup: &Path, db: &Path, fsync: bool) -> Result<(), String> {
    let tmp = beside(db);
    std::fs::copy(backup, &tmp).map_err(|e| format!("copying to {}: {e}", tmp.display()))?;
    if fsync {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("fsync {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, db).map_err(|e| format!("renaming to {}: {e}", db.display()))?;
    if fsync {
        fsync_dir(db)?;
    }
    Ok(())
}

fn run_sqlite(rt: &Runtime, args: &Args) -> Result<(), String> {
    let tmp = temp_dir("rewind-bench-restore-sqlite-")?;
    let db = tmp.path().join("app.db");
    eprintln!("building a SQLite database of about {} MB", args.size_mb);
    let started = Instant::now();
    sqlite_fill(rt, &db, args.size_mb)?;
    let backup = tmp.path().join("backup.db");
    let info = rt
        .block_on(rewind_dbkit::sqlite_snapshot(&db, &backup))
        .map_err(|e| e.to_string())?;
    eprintln!(
        "built and snapshotted {} in {:.1} s",
        mb(info.bytes),
        started.elapsed().as_secs_f64()
    );
    let verify = || {
        let len = std::fs::metadata(&db)
            .map_err(|e| format!("{}: {e}", db.display()))?
            .len();
        if len != info.bytes {
            return Err(format!(
                "{} has {len} bytes, expected {}",
                db.display(),
                info.bytes
            ));
        }
        Ok(())
    };
    let settle = pg::sync;
    let contenders = vec![
        Contender::new("rewind sqlite_restore", || {
            rt.block_on(rewind_dbkit::sqlite_restore(&info, &db, |_| {}))
                .map_err(|e| e.to_string())
        })
        .prepare(settle)
        .verify(verify),
        Contender::new("copy + rename", || plain_copy(&backup, &db, false))
            .prepare(settle)
            .verify(verify),
        Contender::new("copy + fsync + rename + dir fsync", || {
            plain_copy(&backup, &db, true)
        })
        .prepare(settle)
        .verify(verify),
    ];
    let mut contenders = contenders;
    let load_start = measure::loadavg();
    let samples = measure::measure(&mut contenders, args.runs)?;
    let load = format!(
        "{load_start} at the start, {} at the end",
        measure::loadavg()
    );
    let labels: Vec<String> = contenders.iter().map(|c| c.label.clone()).collect();
    drop(contenders);
    // The restored file must be a sound database, not just the right size.
    let report = rt
        .block_on(async {
            let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
            let mut c = sqlx::sqlite::SqliteConnection::connect_with(&opts).await?;
            let r: String = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_one(&mut c)
                .await?;
            c.close().await?;
            Ok::<_, sqlx::Error>(r)
        })
        .map_err(|e| format!("checking {}: {e}", db.display()))?;
    if report != "ok" {
        return Err(format!(
            "integrity_check of the restored database: {report}"
        ));
    }
    let check = checksum_pass(rt, &info, args.runs)?;

    println!(
        "Restore a SQLite snapshot over the database file ({}), median of {} runs (1 warm-up \
         round unmeasured; order rotates; sync before each run):\n",
        mb(info.bytes),
        args.runs
    );
    let rewind = Summary::of(&samples[0]);
    let rows: Vec<Row> = (1..samples.len())
        .map(|i| Row {
            key: mb(info.bytes),
            floor: labels[i].clone(),
            rewind: Summary::of(&samples[0]),
            floor_times: Summary::of(&samples[i]),
        })
        .collect();
    measure::print_table("database", &rows);
    println!();
    println!(
        "rewind sqlite_restore: {} ms median. The checksum pass alone (BackupInfo::check, \
         BLAKE3 over the snapshot, page cache warm): {} ms median.",
        fmt_ms(rewind.median),
        fmt_ms(check.median)
    );
    println!("Load average (1/5/15 min, {} CPUs): {load}.", cpus());
    Ok(())
}

pub fn run(args: &Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    if args.sqlite {
        run_sqlite(&rt, args)
    } else {
        let url = args
            .url
            .as_deref()
            .ok_or("db-restore needs --url postgres://… or --sqlite")?;
        run_pg(&rt, url, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_rows_add_up() {
        let split = pg_split(1_000_000);
        assert_eq!(split.iter().map(|(_, n)| n).sum::<usize>(), 1_000_000);
        assert_eq!(split[2].1, 2 * split[1].1);
    }

    #[test]
    fn plain_copy_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("backup.db"), dir.path().join("app.db"));
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&b, b"old contents").unwrap();
        plain_copy(&a, &b, true).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        assert!(!beside(&b).exists());
    }

    /// A small real database: filled, snapshotted and restored by rewind.
    #[test]
    fn sqlite_fill_makes_a_database_rewind_can_restore() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        sqlite_fill(&rt, &db, 1).unwrap();
        let info = rt
            .block_on(rewind_dbkit::sqlite_snapshot(&db, &dir.path().join("b.db")))
            .unwrap();
        assert!(info.bytes > 500_000, "{}", info.bytes);
        rt.block_on(rewind_dbkit::sqlite_restore(&info, &db, |_| {}))
            .unwrap();
        assert_eq!(std::fs::metadata(&db).unwrap().len(), info.bytes);
    }
}
