//! The migration revert benchmark: `rewind_db::revert` of N sqlx migrations against the
//! native floor running the same down scripts, plus the same history-table deletes, in one
//! transaction — `psql --single-transaction` on PostgreSQL, the `sqlite3` shell with
//! `BEGIN … COMMIT` and `-bail` on SQLite.
//!
//! Both start from the same state (all N applied by `rewind_db::apply`, untimed) and are
//! checked afterwards (no table, index or view left but `_sqlx_migrations`, which is empty).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rewind_db::migrations::{self, Format};
use tokio::runtime::Runtime;

use crate::measure::{self, Contender, Row, ms};
use crate::pg::{self, ScratchDb};
use crate::stats::Summary;

pub struct Args {
    /// `None` with `sqlite`.
    pub url: Option<String>,
    pub sqlite: bool,
    pub migrations: Vec<usize>,
    /// Rows inserted by each migration that loads data.
    pub rows: usize,
    pub runs: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// The version of migration `i` (1-based): sqlx-style 14-digit timestamps.
fn version(i: usize) -> i64 {
    20_260_101_000_000 + i as i64
}

/// `rows` numbers 1..=rows as a row source named `s(g)`, for `INSERT … SELECT … FROM s`.
fn series(d: Dialect, rows: usize) -> String {
    match d {
        Dialect::Postgres => format!("generate_series(1, {rows}) AS s(g)"),
        Dialect::Sqlite => format!(
            "(WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < {rows}) \
             SELECT g FROM n) AS s"
        ),
    }
}

/// The up and down scripts of migration `i` (1-based). Migrations come in groups of five
/// working on one pair of tables: create and load a table; add a column and fill it; index
/// it; create and load a child table with a foreign key and an index; a view and a summary
/// table (and, on PostgreSQL, a CHECK constraint). Each migration only touches what earlier
/// ones in its group created, so any prefix of the sequence applies and reverts.
pub fn scripts(d: Dialect, i: usize, rows: usize) -> (String, String, String) {
    let g = (i - 1) / 5;
    let pg = d == Dialect::Postgres;
    let (id, money, ts, now) = if pg {
        ("BIGINT", "NUMERIC(12,2)", "TIMESTAMPTZ", "now()")
    } else {
        ("INTEGER", "REAL", "TEXT", "CURRENT_TIMESTAMP")
    };
    let s = series(d, rows);
    match (i - 1) % 5 {
        0 => (
            format!("create_items_{g}"),
            format!(
                "CREATE TABLE items_{g} (\n    id {id} PRIMARY KEY,\n    name TEXT NOT NULL,\n    \
                 price {money} NOT NULL,\n    created_at {ts} NOT NULL DEFAULT {now}\n);\n\
                 INSERT INTO items_{g} (id, name, price)\n    \
                 SELECT g, 'item ' || g, (g % 1000) / 10.0 FROM {s};\n"
            ),
            format!("DROP TABLE items_{g};\n"),
        ),
        1 => (
            format!("add_sku_to_items_{g}"),
            format!(
                "ALTER TABLE items_{g} ADD COLUMN sku TEXT;\n\
                 UPDATE items_{g} SET sku = 'SKU-' || id;\n"
            ),
            format!("ALTER TABLE items_{g} DROP COLUMN sku;\n"),
        ),
        2 => (
            format!("index_items_{g}"),
            format!(
                "CREATE INDEX items_{g}_name_idx ON items_{g} (name);\n\
                 CREATE UNIQUE INDEX items_{g}_sku_idx ON items_{g} (sku);\n"
            ),
            format!("DROP INDEX items_{g}_sku_idx;\nDROP INDEX items_{g}_name_idx;\n"),
        ),
        3 => (
            format!("create_orders_{g}"),
            format!(
                "CREATE TABLE orders_{g} (\n    id {id} PRIMARY KEY,\n    \
                 item_id {id} NOT NULL REFERENCES items_{g} (id),\n    qty INTEGER NOT NULL,\n    \
                 note TEXT\n);\n\
                 INSERT INTO orders_{g} (id, item_id, qty, note)\n    \
                 SELECT g, (g * 31) % {rows} + 1, g % 7 + 1, 'order ' || g FROM {s};\n\
                 CREATE INDEX orders_{g}_item_idx ON orders_{g} (item_id);\n"
            ),
            format!("DROP TABLE orders_{g};\n"),
        ),
        _ => {
            let check = if pg {
                format!(
                    "ALTER TABLE items_{g} ADD CONSTRAINT items_{g}_price_check CHECK (price >= 0);\n"
                )
            } else {
                String::new()
            };
            let uncheck = if pg {
                format!("ALTER TABLE items_{g} DROP CONSTRAINT items_{g}_price_check;\n")
            } else {
                String::new()
            };
            (
                format!("summarise_orders_{g}"),
                format!(
                    "{check}CREATE VIEW items_{g}_totals AS\n    \
                     SELECT i.id, i.name, sum(o.qty) AS qty FROM items_{g} i \
                     JOIN orders_{g} o ON o.item_id = i.id GROUP BY i.id, i.name;\n\
                     CREATE TABLE items_{g}_daily AS\n    \
                     SELECT item_id, count(*) AS orders, sum(qty) AS qty FROM orders_{g} GROUP BY item_id;\n"
                ),
                format!("DROP TABLE items_{g}_daily;\nDROP VIEW items_{g}_totals;\n{uncheck}"),
            )
        }
    }
}

/// Writes migrations 1..=n as sqlx `<version>_<name>.up.sql` / `.down.sql` into `dir`.
pub fn generate(dir: &Path, d: Dialect, n: usize, rows: usize) -> Result<(), String> {
    for i in 1..=n {
        let (name, up, down) = scripts(d, i, rows);
        for (suffix, text) in [("up", &up), ("down", &down)] {
            let path = dir.join(format!("{}_{name}.{suffix}.sql", version(i)));
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// The floor's script: the same down scripts, newest first, each followed by the same delete
/// rewind makes in `_sqlx_migrations`. The transaction comes from `psql --single-transaction`
/// on PostgreSQL and is written out for the `sqlite3` shell, which also gets the
/// `foreign_keys = ON` sqlx sets on every SQLite connection, so both check the same keys.
pub fn floor_script(d: Dialect, n: usize, rows: usize) -> String {
    let mut out = String::new();
    if d == Dialect::Sqlite {
        out.push_str("PRAGMA foreign_keys = ON;\nBEGIN;\n");
    }
    for i in (1..=n).rev() {
        let (_, _, down) = scripts(d, i, rows);
        out.push_str(&down);
        let _ = writeln!(
            out,
            "DELETE FROM _sqlx_migrations WHERE version = {};",
            version(i)
        );
    }
    if d == Dialect::Sqlite {
        out.push_str("COMMIT;\n");
    }
    out
}

/// Where the time of rewind's revert goes (ms per run).
#[derive(Default)]
struct Breakdown {
    read: Vec<f64>,
    connect: Vec<f64>,
    revert: Vec<f64>,
    close: Vec<f64>,
}

/// The target database, however it is reached.
struct Target<'rt> {
    dialect: Dialect,
    url: String,
    /// The SQLite file (for the `sqlite3` shell).
    file: Option<PathBuf>,
    _pg: Option<ScratchDb<'rt>>,
}

fn count(rt: &Runtime, url: &str, sql: &'static str) -> Result<i64, String> {
    rt.block_on(async {
        let pool = rewind_db::connect(url).await.map_err(|e| e.to_string())?;
        let r = sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&pool)
            .await
            .map_err(|e| format!("{sql}: {e}"));
        pool.close().await;
        r
    })
}

/// Objects left besides the history table (and SQLite's own).
fn leftovers(rt: &Runtime, t: &Target) -> Result<i64, String> {
    let sql = match t.dialect {
        Dialect::Postgres => {
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'i', 'S') \
             AND c.relname NOT LIKE '\\_sqlx\\_migrations%'"
        }
        Dialect::Sqlite => {
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE '\\_sqlx\\_migrations%' ESCAPE '\\' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        }
    };
    count(rt, &t.url, sql)
}

fn check_reverted(rt: &Runtime, t: &Target) -> Result<(), String> {
    let left = leftovers(rt, t)?;
    let rows = count(rt, &t.url, "SELECT count(*) FROM _sqlx_migrations")?;
    if left != 0 || rows != 0 {
        return Err(format!(
            "expected everything reverted; found {left} objects and {rows} history rows"
        ));
    }
    Ok(())
}

/// Applies all N (untimed), then flushes what that wrote, so the timed revert does not pay
/// for the apply's writes: `CHECKPOINT` and `sync` on PostgreSQL, `sync` on SQLite.
fn apply_and_settle(rt: &Runtime, t: &Target, dir: &Path, n: usize) -> Result<(), String> {
    apply_all(rt, t, dir, n)?;
    match t.dialect {
        Dialect::Postgres => pg::settle(rt, &t.url),
        Dialect::Sqlite => pg::sync(),
    }
}

fn apply_all(rt: &Runtime, t: &Target, dir: &Path, n: usize) -> Result<(), String> {
    let migs = migrations::read(dir, Format::Sqlx).map_err(|e| e.to_string())?;
    let applied = rt.block_on(async {
        let pool = rewind_db::connect(&t.url)
            .await
            .map_err(|e| e.to_string())?;
        let r = rewind_db::apply(&pool, Format::Sqlx, &migs, None, |_, _| {})
            .await
            .map_err(|e| e.to_string());
        pool.close().await;
        r
    })?;
    if applied.len() != n {
        return Err(format!(
            "applied {} migrations, expected {n}",
            applied.len()
        ));
    }
    Ok(())
}

fn sqlite3_available() -> bool {
    Command::new("sqlite3")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Measures one N; returns the table row and rewind's breakdown medians.
fn bench_one(
    rt: &Runtime,
    t: &Target,
    n: usize,
    rows: usize,
    runs: usize,
) -> Result<(Row, Breakdown), String> {
    let tmp = tempfile::Builder::new()
        .prefix("rewind-bench-revert-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let dir = tmp.path().join("migrations");
    std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    generate(&dir, t.dialect, n, rows)?;
    let script = tmp.path().join("down.sql");
    std::fs::write(&script, floor_script(t.dialect, n, rows))
        .map_err(|e| format!("writing {}: {e}", script.display()))?;

    let breakdown = RefCell::new(Breakdown::default());
    let rewind = Contender::new("rewind revert", || {
        let t0 = Instant::now();
        let migs = migrations::read(&dir, Format::Sqlx).map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        let (reverted, t2, t3) = rt.block_on(async {
            let pool = rewind_db::connect(&t.url)
                .await
                .map_err(|e| e.to_string())?;
            let t2 = Instant::now();
            let r = rewind_db::revert(&pool, Format::Sqlx, &migs, None, |_, _| {}).await;
            let t3 = Instant::now();
            pool.close().await;
            r.map(|r| (r, t2, t3)).map_err(|e| e.to_string())
        })?;
        let t4 = Instant::now();
        if reverted.len() != n {
            return Err(format!(
                "reverted {} migrations, expected {n}",
                reverted.len()
            ));
        }
        let mut b = breakdown.borrow_mut();
        b.read.push(ms(t1 - t0));
        b.connect.push(ms(t2 - t1));
        b.revert.push(ms(t3 - t2));
        b.close.push(ms(t4 - t3));
        Ok(())
    })
    .prepare(|| apply_and_settle(rt, t, &dir, n))
    .verify(|| check_reverted(rt, t));

    let floor_label = match t.dialect {
        Dialect::Postgres => "psql --single-transaction",
        Dialect::Sqlite => "sqlite3 -bail (BEGIN … COMMIT)",
    };
    let psql = match t.dialect {
        Dialect::Postgres => Some(pg::tool("psql")?),
        Dialect::Sqlite => None,
    };
    if let Some(p) = &psql {
        eprintln!("floor: {}", p.display());
    }
    let floor = Contender::new(floor_label, || match t.dialect {
        Dialect::Postgres => {
            let psql = psql.as_ref().expect("psql found above");
            let mut cmd = pg::command(psql, &t.url)?;
            cmd.args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                "-f",
            ])
            .arg(&script)
            .arg(pg::dbname_arg(&t.url)?);
            pg::run(&mut cmd, "psql")
        }
        Dialect::Sqlite => {
            let input = std::fs::File::open(&script)
                .map_err(|e| format!("opening {}: {e}", script.display()))?;
            let mut cmd = Command::new("sqlite3");
            cmd.arg("-bail")
                .arg(t.file.as_ref().expect("a SQLite file"))
                .stdin(input);
            pg::run(&mut cmd, "sqlite3")
        }
    })
    .prepare(|| apply_and_settle(rt, t, &dir, n))
    .verify(|| check_reverted(rt, t));

    eprintln!("== {n} migrations ({rows} rows per loaded table)");
    let mut contenders = [rewind, floor];
    let samples = measure::measure(&mut contenders, runs)?;
    drop(contenders);
    let row = Row {
        key: n.to_string(),
        floor: floor_label.to_string(),
        rewind: Summary::of(&samples[0]),
        floor_times: Summary::of(&samples[1]),
    };
    Ok((row, breakdown.into_inner()))
}

pub fn run(args: &Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let sqlite_dir;
    let target = if args.sqlite {
        if !sqlite3_available() {
            return Err(
                "the sqlite3 shell is not installed: it is the floor of the SQLite variant \
                 (hint: apt-get install -y sqlite3)"
                    .into(),
            );
        }
        sqlite_dir = tempfile::Builder::new()
            .prefix("rewind-bench-sqlite-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        let file = sqlite_dir.path().join("app.db");
        Target {
            dialect: Dialect::Sqlite,
            url: format!("sqlite://{}", file.display()),
            file: Some(file),
            _pg: None,
        }
    } else {
        let url = args
            .url
            .as_deref()
            .ok_or("db-revert needs --url postgres://… or --sqlite")?;
        let db = ScratchDb::create(&rt, url, "revert")?;
        eprintln!("scratch database {} on {}", db.name, pg::redact(url));
        Target {
            dialect: Dialect::Postgres,
            url: db.url.clone(),
            file: None,
            _pg: Some(db),
        }
    };

    let mut rows = Vec::new();
    let mut breakdowns = Vec::new();
    let load_start = measure::loadavg();
    for &n in &args.migrations {
        let (row, b) = bench_one(&rt, &target, n, args.rows, args.runs)?;
        rows.push(row);
        breakdowns.push((n, b));
    }

    let what = match target.dialect {
        Dialect::Postgres => "PostgreSQL",
        Dialect::Sqlite => "SQLite",
    };
    println!(
        "Revert all N migrations, {what}, {} rows per loaded table, median of {} runs \
         (1 warm-up round unmeasured; order alternates):\n",
        args.rows, args.runs
    );
    measure::print_table("N migrations", &rows);
    println!();
    println!("rewind's time by phase (medians, ms):");
    for (n, b) in &breakdowns {
        println!(
            "- N = {n}: read the directory {}, connect {}, revert (one transaction) {}, close {}",
            measure::fmt_ms(Summary::of(&b.read).median),
            measure::fmt_ms(Summary::of(&b.connect).median),
            measure::fmt_ms(Summary::of(&b.revert).median),
            measure::fmt_ms(Summary::of(&b.close).median),
        );
    }
    println!(
        "Load average (1/5/15 min, {} CPUs): {load_start} at the start, {} at the end.",
        measure::cpus(),
        measure::loadavg()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_migrations_read_as_sqlx_in_order_with_downs() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), Dialect::Postgres, 12, 10).unwrap();
        let migs = migrations::read(dir.path(), Format::Sqlx).unwrap();
        assert_eq!(migs.len(), 12);
        assert_eq!(migs[0].version, version(1).to_string());
        assert_eq!(migs[11].version, version(12).to_string());
        assert!(migs.iter().all(|m| !m.down_is_empty()));
        assert_eq!(migs[0].name, "create items 0");
        assert_eq!(migs[5].name, "create items 1");
    }

    #[test]
    fn floor_script_is_the_downs_newest_first_with_the_history_deletes() {
        let s = floor_script(Dialect::Postgres, 6, 10);
        let drop_items_1 = s.find("DROP TABLE items_1;").unwrap();
        let drop_sku_0 = s.find("DROP COLUMN sku").unwrap();
        let drop_items_0 = s.find("DROP TABLE items_0;").unwrap();
        assert!(drop_items_1 < drop_sku_0 && drop_sku_0 < drop_items_0);
        assert_eq!(s.matches("DELETE FROM _sqlx_migrations").count(), 6);
        assert!(
            s.trim_end()
                .ends_with(&format!("version = {};", version(1)))
        );
        assert!(!s.contains("BEGIN"), "psql --single-transaction adds it");
        let s = floor_script(Dialect::Sqlite, 2, 10);
        assert!(s.starts_with("PRAGMA foreign_keys = ON;\nBEGIN;\n"));
        assert!(s.ends_with("COMMIT;\n"));
    }

    /// The generated SQLite migrations really apply and revert through rewind (real SQLite).
    #[test]
    fn sqlite_migrations_apply_and_revert() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        std::fs::create_dir(&dir).unwrap();
        generate(&dir, Dialect::Sqlite, 7, 50).unwrap();
        let file = tmp.path().join("app.db");
        let t = Target {
            dialect: Dialect::Sqlite,
            url: format!("sqlite://{}", file.display()),
            file: Some(file),
            _pg: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        apply_all(&rt, &t, &dir, 7).unwrap();
        assert_eq!(
            count(&rt, &t.url, "SELECT count(*) FROM orders_0").unwrap(),
            50
        );
        assert!(leftovers(&rt, &t).unwrap() > 0);
        let migs = migrations::read(&dir, Format::Sqlx).unwrap();
        rt.block_on(async {
            let pool = rewind_db::connect(&t.url).await.unwrap();
            rewind_db::revert(&pool, Format::Sqlx, &migs, None, |_, _| {})
                .await
                .unwrap();
            pool.close().await;
        });
        check_reverted(&rt, &t).unwrap();
    }
}
