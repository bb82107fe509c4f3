//! Reading migration SQL the way the engine will: one lexer (sqlparser's tokenizer; the
//! private `lex` module says what it is trusted with and what is put right around it) under
//! every place rewind splits, searches or classifies SQL.
//!
//! - [`split`] cuts a script into [`Statement`]s, each with its byte range and line;
//! - [`is_empty`] tells a script of only comments from one that does something;
//! - [`Statement::transaction_control`] and [`Statement::outside_transaction`] say whether a
//!   statement begins or ends a transaction, or cannot run inside one;
//! - [`classify()`] says what a migration does, by effect (adds, rewrites data, loses data …).
//!
//! Splitting follows what the engines do, not a `;` search: a `;` ends a statement only
//! outside parentheses (a PostgreSQL rule's `DO (…; …)` is one statement, as psql has it)
//! and outside a body: a SQLite `CREATE TRIGGER … BEGIN … END` or a PostgreSQL 14+
//! `BEGIN ATOMIC … END` function body, in which `CASE … END` nests. Dollar-quoted bodies
//! (PL/pgSQL) are single tokens, so the `END;` inside them never splits anything.

use std::ops::Range;

pub mod classify;
mod lex;

pub use classify::{Classification, Effect, Finding, FindingKind, classify};
pub(crate) use lex::{Kind, Tok, lex, lex_range};

/// The SQL dialect a script is written in: the engine that will run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// One statement of a script.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Statement {
    /// The statement as written, from its first token to its last (`sql[start..end]`).
    pub text: String,
    /// Byte offset in the script of its first token; comments before it are not included.
    pub start: usize,
    /// Byte offset in the script just past its last token; the `;` is not included.
    pub end: usize,
    /// 1-based line of its first token.
    pub line: usize,
    /// Its tokens as `split` read them (offsets into `text`), and the dialect they were read
    /// in: the methods below use them instead of reading the text again.
    pub(crate) toks: Option<(Dialect, Vec<Tok>)>,
}

/// SQL that cannot be read: an unterminated string, quoted identifier, dollar-quoted
/// body or (on PostgreSQL) block comment, placed where it starts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SqlError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

/// A statement that begins or ends a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxControl {
    /// `BEGIN [WORK | TRANSACTION | DEFERRED | IMMEDIATE | EXCLUSIVE] [modes]`,
    /// `START TRANSACTION [modes]`.
    Begin,
    /// `COMMIT` / `END [WORK | TRANSACTION] [AND [NO] CHAIN]`.
    Commit,
    /// `ROLLBACK` / `ABORT [WORK | TRANSACTION] [AND [NO] CHAIN]`; not `ROLLBACK TO SAVEPOINT`.
    Rollback,
}

/// Splits `sql` into its statements, in order. Empty statements (`;;`) are dropped.
pub fn split(sql: &str, dialect: Dialect) -> Result<Vec<Statement>, SqlError> {
    let toks = lex(sql, dialect)?;
    let lines = Lines::new(sql);
    Ok(statement_ranges(&toks, dialect)
        .into_iter()
        .map(|r| {
            with_tokens(
                statement_at(sql, &lines, &toks[r.clone()]),
                &toks[r],
                dialect,
            )
        })
        .collect())
}

/// True when `sql` holds no statement: only whitespace, comments and lone `;`. SQL that
/// cannot be read is not empty (running it shows the engine's error).
pub fn is_empty(sql: &str, dialect: Dialect) -> bool {
    lex(sql, dialect).is_ok_and(|toks| toks.iter().all(|t| t.kind == Kind::Semi))
}

/// 1-based line of `byte_offset` in `sql` (offsets past the end count as the last line).
pub fn line_of(sql: &str, byte_offset: usize) -> usize {
    let end = byte_offset.min(sql.len());
    sql.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Statement {
    /// Its tokens: those `split` kept when read in `dialect`, else read again.
    fn tokens(&self, dialect: Dialect) -> Option<std::borrow::Cow<'_, [Tok]>> {
        match &self.toks {
            Some((d, toks)) if *d == dialect => Some(std::borrow::Cow::Borrowed(toks)),
            _ => lex(&self.text, dialect).ok().map(std::borrow::Cow::Owned),
        }
    }

    /// Whether this statement begins, commits or rolls back a transaction.
    pub fn transaction_control(&self, dialect: Dialect) -> Option<TxControl> {
        tx_control(&self.tokens(dialect)?)
    }

    /// Its words (unquoted ones upper-cased, quoted identifiers as written), in order;
    /// strings, numbers and punctuation left out. For recognising a statement's shape.
    pub fn words(&self, dialect: Dialect) -> Vec<String> {
        self.tokens(dialect)
            .map(|toks| {
                toks.iter()
                    .filter_map(|t| match &t.kind {
                        Kind::Word(w) => Some(w.clone()),
                        Kind::Quoted(n) => Some(n.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The same words as [`Statement::words`], each as the name it spells (unquoted ones
    /// lower-cased, as PostgreSQL folds them): to look an object up in the catalog.
    pub fn raw_words(&self, dialect: Dialect) -> Vec<String> {
        self.tokens(dialect)
            .map(|toks| toks.iter().filter_map(|t| t.name(&self.text)).collect())
            .unwrap_or_default()
    }

    /// What in this statement only psql understands: a meta-command (`\copy`, `\i`, `\set`
    /// …, a line of its own starting with a backslash) or a psql variable (`:name`,
    /// `:'name'`, `:"name"`); `None` for plain SQL. PostgreSQL only (SQLite has `:name`
    /// parameters of its own).
    pub fn psql_feature(&self, dialect: Dialect) -> Option<String> {
        if dialect != Dialect::Postgres {
            return None;
        }
        if self.text.starts_with('\\') {
            let word = self.text.split_whitespace().next().unwrap_or("\\");
            return Some(format!("the psql meta-command {word}"));
        }
        let toks = self.tokens(dialect)?;
        for (i, t) in toks.iter().enumerate() {
            let text = &self.text[t.start..t.end];
            let variable = match &t.kind {
                Kind::Param if text.starts_with(':') => Some(text.to_string()),
                // `:name`, `:"name"`, `:'name'`: a lone colon right before a word, a quoted
                // name or a string (a cast is `::`, one token).
                Kind::Punct if text == ":" => toks.get(i + 1).and_then(|n| {
                    (n.start == t.end
                        && matches!(n.kind, Kind::Word(_) | Kind::Quoted(_) | Kind::Str))
                    .then(|| format!(":{}", &self.text[n.start..n.end]))
                }),
                _ => None,
            };
            if let Some(v) = variable {
                return Some(format!("the psql variable {v}"));
            }
        }
        None
    }

    /// Why this statement cannot run inside a transaction block, or None.
    pub fn outside_transaction(&self, dialect: Dialect) -> Option<&'static str> {
        let toks = self.tokens(dialect)?;
        match dialect {
            Dialect::Postgres => pg_outside_transaction(&toks),
            Dialect::Sqlite => sqlite_outside_transaction(&toks),
        }
    }
}

/// Where each line starts, so a script of many statements finds their lines without
/// counting from the top each time.
pub(crate) struct Lines(Vec<usize>);

impl Lines {
    pub(crate) fn new(sql: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts)
    }

    /// 1-based line of `byte_offset` (as [`line_of`]).
    pub(crate) fn of(&self, byte_offset: usize) -> usize {
        self.0.partition_point(|&start| start <= byte_offset)
    }
}

pub(crate) fn statement_at(sql: &str, lines: &Lines, toks: &[Tok]) -> Statement {
    // Least start and greatest end: a COPY payload comes before its `;` in token order.
    let start = toks.iter().map(|t| t.start).min().unwrap_or(0);
    let end = toks.iter().map(|t| t.end).max().unwrap_or(start);
    Statement {
        text: sql[start..end].to_string(),
        start,
        end,
        line: lines.of(start),
        toks: None,
    }
}

/// The same statement carrying its tokens, rebased onto its own text.
fn with_tokens(mut s: Statement, toks: &[Tok], dialect: Dialect) -> Statement {
    let base = s.start;
    let rebased = toks
        .iter()
        .map(|t| Tok {
            kind: match &t.kind {
                Kind::Dollar(r) => Kind::Dollar(r.start - base..r.end - base),
                k => k.clone(),
            },
            start: t.start - base,
            end: t.end - base,
        })
        .collect();
    s.toks = Some((dialect, rebased));
    s
}

/// The statements of `toks` as index ranges (never empty).
pub(crate) fn statement_ranges(toks: &[Tok], dialect: Dialect) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut parens = 0usize;
    let mut body = 0usize;
    for (i, t) in toks.iter().enumerate() {
        match &t.kind {
            Kind::LParen => parens += 1,
            Kind::RParen => parens = parens.saturating_sub(1),
            Kind::Semi if parens == 0 && body == 0 => {
                if i > start {
                    out.push(start..i);
                }
                start = i + 1;
            }
            Kind::Word(w) if body > 0 => match w.as_str() {
                "CASE" => body += 1,
                "END" => body -= 1,
                _ => {}
            },
            Kind::Word(w) if w == "BEGIN" && parens == 0 && opens_body(toks, start, i, dialect) => {
                body = 1;
            }
            _ => {}
        }
    }
    if start < toks.len() {
        out.push(start..toks.len());
    }
    out
}

/// Does the `BEGIN` at `i`, in the statement starting at `s`, open a body whose `;` do not
/// end the statement? Only in a CREATE statement, and only where the engine has such
/// bodies, so a column or table called `begin` opens nothing.
fn opens_body(toks: &[Tok], s: usize, i: usize, dialect: Dialect) -> bool {
    if !toks[s].is("CREATE") {
        return false;
    }
    match dialect {
        // CREATE FUNCTION/PROCEDURE … BEGIN ATOMIC … END (SQL-standard body, PostgreSQL 14+).
        Dialect::Postgres => toks.get(i + 1).is_some_and(|t| t.is("ATOMIC")),
        // CREATE [TEMP|TEMPORARY] TRIGGER [IF NOT EXISTS] name … ON table … BEGIN … END.
        // The body's BEGIN comes after `ON table`; a trigger or table named `begin` does not
        // open it (the word after ON, or after a `.`).
        Dialect::Sqlite => {
            let trigger = toks[s + 1..(s + 3).min(toks.len())]
                .iter()
                .any(|t| t.is("TRIGGER"));
            let after_on = toks[s..i].iter().any(|t| t.is("ON"));
            let prev = &toks[i - 1];
            trigger && after_on && !prev.is("ON") && prev.kind != Kind::Period
        }
    }
}

/// The upper-cased word at `i`, if it is an unquoted word.
pub(crate) fn word_at(toks: &[Tok], i: usize) -> Option<&str> {
    toks.get(i).and_then(Tok::word)
}

fn tx_control(toks: &[Tok]) -> Option<TxControl> {
    let second = toks.get(1);
    let second_is = |words: &[&str]| match second {
        None => true,
        Some(t) => t.word().is_some_and(|w| words.contains(&w)),
    };
    let has = |w: &str| toks.iter().any(|t| t.is(w));
    match word_at(toks, 0)? {
        "BEGIN"
            if second_is(&[
                "WORK",
                "TRANSACTION",
                "DEFERRED",
                "IMMEDIATE",
                "EXCLUSIVE",
                "ISOLATION",
                "READ",
                "NOT",
                "DEFERRABLE",
            ]) =>
        {
            Some(TxControl::Begin)
        }
        "START" if word_at(toks, 1) == Some("TRANSACTION") => Some(TxControl::Begin),
        // COMMIT PREPARED finishes another (prepared) transaction, not this one.
        "COMMIT" | "END" if second_is(&["WORK", "TRANSACTION", "AND"]) => Some(TxControl::Commit),
        // ROLLBACK TO SAVEPOINT stays in the transaction; ROLLBACK PREPARED is another one.
        "ROLLBACK" | "ABORT" if !has("TO") && !has("PREPARED") => Some(TxControl::Rollback),
        _ => None,
    }
}

/// PostgreSQL's statements that refuse to run in a transaction block (as its documentation
/// lists them, and Flyway's `detectCanExecuteInTransaction`).
fn pg_outside_transaction(toks: &[Tok]) -> Option<&'static str> {
    let w = |i: usize| word_at(toks, i);
    let has = |word: &str| toks.iter().any(|t| t.is(word));
    match w(0)? {
        "CREATE" => {
            let mut i = 1;
            if w(i) == Some("UNIQUE") {
                i += 1;
            }
            match (w(i), w(i + 1)) {
                (Some("INDEX"), Some("CONCURRENTLY")) => {
                    Some("CREATE INDEX CONCURRENTLY cannot run inside a transaction block")
                }
                (Some("DATABASE"), _) => {
                    Some("CREATE DATABASE cannot run inside a transaction block")
                }
                (Some("TABLESPACE"), _) => {
                    Some("CREATE TABLESPACE cannot run inside a transaction block")
                }
                (Some("SUBSCRIPTION"), _) => {
                    Some("CREATE SUBSCRIPTION cannot run inside a transaction block")
                }
                _ => None,
            }
        }
        "DROP" => match (w(1), w(2)) {
            (Some("INDEX"), Some("CONCURRENTLY")) => {
                Some("DROP INDEX CONCURRENTLY cannot run inside a transaction block")
            }
            (Some("DATABASE"), _) => Some("DROP DATABASE cannot run inside a transaction block"),
            (Some("TABLESPACE"), _) => {
                Some("DROP TABLESPACE cannot run inside a transaction block")
            }
            (Some("SUBSCRIPTION"), _) => {
                Some("DROP SUBSCRIPTION cannot run inside a transaction block")
            }
            _ => None,
        },
        "REINDEX" => {
            if concurrently(toks) {
                return Some("REINDEX CONCURRENTLY cannot run inside a transaction block");
            }
            let mut i = 1;
            if toks.get(i).is_some_and(|t| t.kind == Kind::LParen) {
                i = skip_parens(toks, i);
            }
            if w(i) == Some("VERBOSE") {
                i += 1;
            }
            match w(i) {
                Some("DATABASE") => Some("REINDEX DATABASE cannot run inside a transaction block"),
                Some("SCHEMA") => Some("REINDEX SCHEMA cannot run inside a transaction block"),
                Some("SYSTEM") => Some("REINDEX SYSTEM cannot run inside a transaction block"),
                _ => None,
            }
        }
        "VACUUM" => Some("VACUUM cannot run inside a transaction block"),
        // CLUSTER without a table reclusters every table, each in its own transaction.
        "CLUSTER" => {
            let mut i = 1;
            if toks.get(i).is_some_and(|t| t.kind == Kind::LParen) {
                i = skip_parens(toks, i);
            }
            if w(i) == Some("VERBOSE") {
                i += 1;
            }
            (i >= toks.len())
                .then_some("CLUSTER without a table cannot run inside a transaction block")
        }
        "ALTER" => match w(1)? {
            "SYSTEM" => Some("ALTER SYSTEM cannot run inside a transaction block"),
            "DATABASE" if has("TABLESPACE") && has("SET") => {
                Some("ALTER DATABASE … SET TABLESPACE cannot run inside a transaction block")
            }
            // With the default `refresh = true`, changing a subscription's publications
            // refreshes it, which cannot run in a transaction block.
            "SUBSCRIPTION"
                if toks
                    .windows(2)
                    .any(|p| p[0].is("REFRESH") && p[1].is("PUBLICATION"))
                    || (has("PUBLICATION")
                        && (has("SET") || has("ADD") || has("DROP"))
                        && !refresh_false(toks)) =>
            {
                Some(
                    "ALTER SUBSCRIPTION … REFRESH PUBLICATION cannot run inside a transaction block",
                )
            }
            "TABLE" if has("DETACH") && has("PARTITION") && has("CONCURRENTLY") => Some(
                "ALTER TABLE … DETACH PARTITION … CONCURRENTLY cannot run inside a transaction block",
            ),
            _ => None,
        },
        "DISCARD" if w(1) == Some("ALL") => {
            Some("DISCARD ALL cannot run inside a transaction block")
        }
        "COMMIT" if w(1) == Some("PREPARED") => {
            Some("COMMIT PREPARED cannot run inside a transaction block")
        }
        "ROLLBACK" if w(1) == Some("PREPARED") => {
            Some("ROLLBACK PREPARED cannot run inside a transaction block")
        }
        _ => None,
    }
}

/// `CONCURRENTLY` as a keyword or a true option (`(CONCURRENTLY)`, `(CONCURRENTLY true)`),
/// not `(CONCURRENTLY false)`.
pub(crate) fn concurrently(toks: &[Tok]) -> bool {
    toks.iter().enumerate().any(|(i, t)| {
        t.is("CONCURRENTLY")
            && !toks
                .get(i + 1)
                .is_some_and(|n| n.is("FALSE") || n.is("OFF"))
    })
}

/// `refresh = false` in an ALTER SUBSCRIPTION's WITH options.
fn refresh_false(toks: &[Tok]) -> bool {
    toks.windows(3).any(|w| {
        w[0].is("REFRESH") && w[1].kind == Kind::Eq && (w[2].is("FALSE") || w[2].is("OFF"))
    })
}

/// Index just past the parenthesised group opening at `open`.
pub(crate) fn skip_parens(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t.kind {
            Kind::LParen => depth += 1,
            Kind::RParen => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// SQLite's statements that fail, or silently do nothing, inside a transaction.
fn sqlite_outside_transaction(toks: &[Tok]) -> Option<&'static str> {
    match word_at(toks, 0)? {
        "PRAGMA" => {
            // PRAGMA [schema.]name = value | (value): only setting it matters.
            let mut i = 1;
            if toks.get(i + 1).is_some_and(|t| t.kind == Kind::Period) {
                i += 2;
            }
            let sets = toks
                .get(i + 1)
                .is_some_and(|t| matches!(t.kind, Kind::Eq | Kind::LParen));
            let name = toks.get(i).and_then(Tok::word);
            match name {
                Some("FOREIGN_KEYS") if sets => {
                    Some("PRAGMA foreign_keys does nothing inside a transaction")
                }
                Some("JOURNAL_MODE") if sets => {
                    Some("PRAGMA journal_mode cannot change the journal mode inside a transaction")
                }
                _ => None,
            }
        }
        "VACUUM" => Some("VACUUM cannot run inside a transaction"),
        "ATTACH" => Some("ATTACH cannot run inside a transaction"),
        "DETACH" => Some("DETACH cannot run inside a transaction"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Dialect::{Postgres as Pg, Sqlite};
    use rstest::rstest;

    fn texts(sql: &str, d: Dialect) -> Vec<String> {
        split(sql, d)
            .unwrap_or_else(|e| panic!("{sql:?}: {e}"))
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    /// A diesel project's first migration, shaped like the one `diesel setup` writes: a
    /// helper that installs a trigger, and the PL/pgSQL trigger function, each body with
    /// its own `END;` and `;`-ended statements.
    pub(super) const DIESEL_SETUP: &str = "\
-- Helper functions diesel sets up for every project.
-- Example: SELECT diesel_manage_updated_at('users');

CREATE OR REPLACE FUNCTION diesel_manage_updated_at(_tbl regclass) RETURNS VOID AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER set_updated_at BEFORE UPDATE ON %s
                    FOR EACH ROW EXECUTE PROCEDURE diesel_set_updated_at()', _tbl);
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION diesel_set_updated_at() RETURNS trigger AS $$
BEGIN
    IF (
        NEW IS DISTINCT FROM OLD AND
        NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at
    ) THEN
        NEW.updated_at := current_timestamp;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
";

    #[rstest]
    // Dollar quotes, plain and tagged, with `;` and other dollar quotes inside.
    #[case(Pg, "SELECT $$a;b$$; SELECT $tag$ x; $$ y $tag$;", &["SELECT $$a;b$$", "SELECT $tag$ x; $$ y $tag$"])]
    #[case(Pg, "SELECT $_$;$_$, $Fn1$ ; $Fn1$", &["SELECT $_$;$_$, $Fn1$ ; $Fn1$"])]
    // '' inside a string, on both engines.
    #[case(Pg, "INSERT INTO t VALUES ('it''s; ok'); SELECT 1", &["INSERT INTO t VALUES ('it''s; ok')", "SELECT 1"])]
    #[case(Sqlite, "INSERT INTO t VALUES ('it''s; ok'); SELECT 1", &["INSERT INTO t VALUES ('it''s; ok')", "SELECT 1"])]
    // PostgreSQL's escape strings take backslash escapes.
    #[case(Pg, r"SELECT E'it\'s; ok'; SELECT e'\\'; SELECT 2", &[r"SELECT E'it\'s; ok'", r"SELECT e'\\'", "SELECT 2"])]
    // Quoted identifiers with doubled quotes; SQLite's backticks and brackets.
    #[case(Pg, r#"CREATE TABLE "quoted ""ident"";" (x int); SELECT 1"#, &[r#"CREATE TABLE "quoted ""ident"";" (x int)"#, "SELECT 1"])]
    #[case(Sqlite, "CREATE TABLE `a;b` ([c;d] int); SELECT 1", &["CREATE TABLE `a;b` ([c;d] int)", "SELECT 1"])]
    // Comments holding `;`, before, between and after statements.
    #[case(Pg, "-- a comment; with a semicolon\nSELECT 1;\nSELECT 2 -- trailing; too\n", &["SELECT 1", "SELECT 2"])]
    #[case(Pg, "/* a /* nested; */ still; */ SELECT 1; SELECT 2", &["SELECT 1", "SELECT 2"])]
    // SQLite does not nest: the comment ends at the first `*/`.
    #[case(Sqlite, "/* a /* b; */ SELECT 1; SELECT 2", &["SELECT 1", "SELECT 2"])]
    #[case(Pg, "SELECT $1; SELECT $2::int", &["SELECT $1", "SELECT $2::int"])]
    // SQLite triggers: the body's `;` do not split; CASE … END nests inside it; a trigger or
    // table named `begin` opens nothing; the last END may go without `;`.
    #[case(Sqlite, "CREATE TRIGGER tr AFTER INSERT ON a BEGIN UPDATE b SET n = n + 1; DELETE FROM c; END; SELECT 1",
        &["CREATE TRIGGER tr AFTER INSERT ON a BEGIN UPDATE b SET n = n + 1; DELETE FROM c; END", "SELECT 1"])]
    #[case(Sqlite, "CREATE TEMP TRIGGER IF NOT EXISTS t2 AFTER UPDATE ON a BEGIN SELECT CASE WHEN new.x THEN 1 ELSE 2 END; END; SELECT 3",
        &["CREATE TEMP TRIGGER IF NOT EXISTS t2 AFTER UPDATE ON a BEGIN SELECT CASE WHEN new.x THEN 1 ELSE 2 END; END", "SELECT 3"])]
    #[case(Sqlite, "CREATE TRIGGER begin AFTER INSERT ON begin BEGIN SELECT new.begin; END; SELECT 2",
        &["CREATE TRIGGER begin AFTER INSERT ON begin BEGIN SELECT new.begin; END", "SELECT 2"])]
    #[case(Sqlite, "CREATE TRIGGER projects AFTER UPDATE OF id, name ON projects FOR EACH ROW WHEN old.v == new.v BEGIN\n  UPDATE projects SET at = datetime('now') WHERE rowid = new.rowid;\nEND",
        &["CREATE TRIGGER projects AFTER UPDATE OF id, name ON projects FOR EACH ROW WHEN old.v == new.v BEGIN\n  UPDATE projects SET at = datetime('now') WHERE rowid = new.rowid;\nEND"])]
    // PostgreSQL 14+ SQL-standard bodies.
    #[case(Pg, "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; SELECT 3",
        &["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END", "SELECT 3"])]
    // Columns called begin and end open no body, on either engine.
    #[case(Pg, r#"CREATE TABLE t (begin int, "end" int); SELECT 1"#, &[r#"CREATE TABLE t (begin int, "end" int)"#, "SELECT 1"])]
    #[case(Sqlite, "CREATE TABLE t (begin int, end int); SELECT 1", &["CREATE TABLE t (begin int, end int)", "SELECT 1"])]
    // A rule's commands in parentheses are one statement (psql's rule too).
    #[case(Pg, "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); DELETE FROM b); SELECT 1",
        &["CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); DELETE FROM b)", "SELECT 1"])]
    // Empty statements are dropped.
    #[case(Pg, ";; SELECT 1;;\n; -- nothing\n", &["SELECT 1"])]
    #[case(Pg, "  \n-- only a comment\n", &[])]
    // A byte-order mark is not part of the first word.
    #[case(Pg, "\u{feff}CREATE TABLE t (a int);", &["CREATE TABLE t (a int)"])]
    // CRLF line ends, non-ASCII text.
    #[case(Sqlite, "SELECT 'é';\r\nSELECT 'ü' AS ñ;\r\n", &["SELECT 'é'", "SELECT 'ü' AS ñ"])]
    fn splits_like_the_engine(#[case] d: Dialect, #[case] sql: &str, #[case] expected: &[&str]) {
        assert_eq!(texts(sql, d), expected);
    }

    #[test]
    fn plpgsql_bodies_with_end_are_one_statement_each() {
        let stmts = split(DIESEL_SETUP, Pg).unwrap();
        assert_eq!(stmts.len(), 2, "{stmts:#?}");
        assert!(
            stmts[0]
                .text
                .starts_with("CREATE OR REPLACE FUNCTION diesel_manage_updated_at")
        );
        assert!(stmts[0].text.ends_with("$$ LANGUAGE plpgsql"));
        assert_eq!(stmts[0].line, 4);
        assert_eq!(stmts[1].line, 11);
        for s in &stmts {
            assert_eq!(s.transaction_control(Pg), None);
            assert_eq!(s.outside_transaction(Pg), None);
        }
    }

    #[test]
    fn statements_know_their_bytes_and_lines() {
        let sql = "-- head\n  SELECT 'é' ; /* between */\nSELECT\n  2;\n";
        let stmts = split(sql, Pg).unwrap();
        assert_eq!(stmts.len(), 2);
        for s in &stmts {
            assert_eq!(&sql[s.start..s.end], s.text);
        }
        assert_eq!(stmts[0].start, sql.find("SELECT 'é'").unwrap());
        assert_eq!(stmts[0].line, 2);
        assert_eq!(stmts[1].text, "SELECT\n  2");
        assert_eq!(stmts[1].line, 3);
        assert_eq!(line_of(sql, stmts[1].end), 4);
        assert_eq!(line_of(sql, 0), 1);
        assert_eq!(line_of(sql, usize::MAX), 5);
        let lines = Lines::new(sql);
        for offset in 0..=sql.len() + 1 {
            assert_eq!(lines.of(offset), line_of(sql, offset), "{offset}");
        }
    }

    #[test]
    fn line_numbers_hold_over_a_long_file() {
        // 50 statements; some span lines inside strings and comments, so counting `;` or
        // lines naively drifts. Statement 37 is placed on line 120.
        let mut sql = String::new();
        let mut lines = Vec::new();
        let line_now = |s: &str| s.matches('\n').count() + 1;
        for i in 1..=50 {
            if i == 37 {
                // Statement 37 opens with a one-line-down comment (37 % 3 == 1).
                while line_now(&sql) < 119 {
                    sql.push_str("-- padding; not a statement\n");
                }
            }
            lines.push(line_now(&sql));
            match i % 3 {
                0 => sql.push_str(&format!(
                    "INSERT INTO t VALUES ({i}, 'two\nlines; here');\n"
                )),
                1 => sql.push_str(&format!(
                    "/* c;\n */ UPDATE t SET n = {i} WHERE id = {i};\n"
                )),
                _ => sql.push_str(&format!("SELECT {i};\n\n")),
            }
            if i % 3 == 1 {
                // The statement starts after the comment, on its second line.
                *lines.last_mut().unwrap() += 1;
            }
        }
        let stmts = split(&sql, Pg).unwrap();
        assert_eq!(stmts.len(), 50);
        assert_eq!(stmts[36].line, 120);
        assert!(stmts[36].text.starts_with("UPDATE t SET n = 37"));
        let got: Vec<usize> = stmts.iter().map(|s| s.line).collect();
        assert_eq!(got, lines);
    }

    #[rstest]
    #[case(
        Pg,
        "SELECT 1;\nINSERT INTO t VALUES ('oops);\nSELECT 2;",
        2,
        23,
        "unterminated string"
    )]
    #[case(
        Sqlite,
        "SELECT 1;\nINSERT INTO t VALUES ('oops);\n",
        2,
        23,
        "unterminated string"
    )]
    // The crate places these at the end of the input; the error names where they open.
    #[case(Pg, "SELECT 1;\nDO $$ BEGIN\n  PERFORM 1;\n", 2, 4, "dollar-quoted")]
    #[case(Pg, "SELECT 1; /* never\n closed /* nested */\n", 1, 11, "comment")]
    #[case(Pg, "SELECT \"open", 1, 8, "delimiter")]
    #[case(Sqlite, "SELECT E'it\\'s';", 1, 15, "unterminated string")]
    fn unreadable_sql_names_line_and_column(
        #[case] d: Dialect,
        #[case] sql: &str,
        #[case] line: usize,
        #[case] column: usize,
        #[case] words: &str,
    ) {
        let e = split(sql, d).unwrap_err();
        assert_eq!((e.line, e.column), (line, column), "{e}");
        assert!(e.message.to_lowercase().contains(words), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("line {line}, column {column}: "))
        );
    }

    #[rstest]
    #[case(Pg, "", true)]
    #[case(Pg, "  \n\t", true)]
    #[case(Pg, "-- irreversible\n/* nothing\n to do */ ;", true)]
    #[case(Pg, ";;", true)]
    #[case(Pg, "\u{feff}-- with a byte-order mark\n", true)]
    #[case(Pg, "/* a /* nested */ still a comment */", true)]
    #[case(Sqlite, "/* a /* not nested */ so this is SQL */", false)]
    #[case(Sqlite, "/* SQLite lets a comment run to the end", true)]
    #[case(Pg, "/* PostgreSQL does not", false)]
    #[case(Pg, "-- comment\nSELECT 1", false)]
    #[case(Sqlite, "DROP TABLE t;", false)]
    fn empty_scripts(#[case] d: Dialect, #[case] sql: &str, #[case] empty: bool) {
        assert_eq!(is_empty(sql, d), empty, "{sql:?}");
    }

    fn one(sql: &str, d: Dialect) -> Statement {
        let mut s = split(sql, d).unwrap();
        assert_eq!(s.len(), 1, "{sql:?}: {s:#?}");
        s.remove(0)
    }

    #[rstest]
    #[case(Pg, "BEGIN", Some(TxControl::Begin))]
    #[case(Pg, "begin work", Some(TxControl::Begin))]
    #[case(Pg, "BEGIN TRANSACTION", Some(TxControl::Begin))]
    #[case(
        Pg,
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        Some(TxControl::Begin)
    )]
    #[case(Pg, "START TRANSACTION READ WRITE", Some(TxControl::Begin))]
    #[case(Sqlite, "BEGIN IMMEDIATE TRANSACTION", Some(TxControl::Begin))]
    #[case(Sqlite, "BEGIN EXCLUSIVE", Some(TxControl::Begin))]
    #[case(Pg, "COMMIT", Some(TxControl::Commit))]
    #[case(Pg, "END", Some(TxControl::Commit))]
    #[case(Sqlite, "END TRANSACTION", Some(TxControl::Commit))]
    #[case(Pg, "COMMIT AND NO CHAIN", Some(TxControl::Commit))]
    #[case(Pg, "commit work", Some(TxControl::Commit))]
    #[case(Pg, "ROLLBACK", Some(TxControl::Rollback))]
    #[case(Pg, "ABORT TRANSACTION", Some(TxControl::Rollback))]
    #[case(Pg, "ROLLBACK AND CHAIN", Some(TxControl::Rollback))]
    #[case(Pg, "ROLLBACK TO SAVEPOINT a", None)]
    #[case(Pg, "ROLLBACK TO a", None)]
    #[case(Sqlite, "ROLLBACK TRANSACTION TO SAVEPOINT a", None)]
    #[case(Pg, "COMMIT PREPARED 'x'", None)]
    #[case(Pg, "SAVEPOINT a", None)]
    #[case(Pg, "CREATE TABLE begin (commit int)", None)]
    #[case(Pg, "SELECT 'BEGIN'", None)]
    fn transaction_control(#[case] d: Dialect, #[case] sql: &str, #[case] tx: Option<TxControl>) {
        assert_eq!(one(sql, d).transaction_control(d), tx);
    }

    #[test]
    fn scripts_that_manage_their_own_transaction() {
        // golang-migrate and sqitch scripts often wrap themselves in BEGIN; … COMMIT;.
        let sql = "-- Deploy app:users to pg\n\nBEGIN;\n\nCREATE TABLE users (id int);\nINSERT INTO users VALUES (1);\n\nCOMMIT;\n";
        let tx: Vec<_> = split(sql, Pg)
            .unwrap()
            .iter()
            .map(|s| (s.line, s.transaction_control(Pg)))
            .collect();
        assert_eq!(
            tx,
            [
                (3, Some(TxControl::Begin)),
                (5, None),
                (6, None),
                (8, Some(TxControl::Commit))
            ]
        );
        // An index built CONCURRENTLY after the script's own COMMIT.
        let sql = "BEGIN;\nCREATE TABLE a (id int);\nCOMMIT;\nCREATE INDEX CONCURRENTLY a_id ON a (id);\n";
        let stmts = split(sql, Pg).unwrap();
        let got: Vec<_> = stmts
            .iter()
            .map(|s| {
                (
                    s.transaction_control(Pg),
                    s.outside_transaction(Pg).is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (Some(TxControl::Begin), false),
                (None, false),
                (Some(TxControl::Commit), false),
                (None, true)
            ]
        );
        assert_eq!(stmts[3].line, 4);
        // A body's BEGIN and END are no transaction control.
        let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\nDO $$ BEGIN PERFORM 1; END $$;";
        for s in split(sql, Pg).unwrap() {
            assert_eq!(s.transaction_control(Pg), None, "{}", s.text);
        }
        let sql = "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END;";
        assert_eq!(one(sql, Sqlite).transaction_control(Sqlite), None);
    }

    #[rstest]
    #[case(
        Pg,
        "CREATE INDEX CONCURRENTLY i ON t (c)",
        Some("CREATE INDEX CONCURRENTLY")
    )]
    #[case(
        Pg,
        "create unique index concurrently if not exists i on t (c)",
        Some("CREATE INDEX CONCURRENTLY")
    )]
    #[case(
        Pg,
        "DROP INDEX CONCURRENTLY IF EXISTS i",
        Some("DROP INDEX CONCURRENTLY")
    )]
    #[case(Pg, "REINDEX TABLE CONCURRENTLY t", Some("REINDEX CONCURRENTLY"))]
    #[case(
        Pg,
        "REINDEX (VERBOSE, CONCURRENTLY) INDEX i",
        Some("REINDEX CONCURRENTLY")
    )]
    #[case(Pg, "REINDEX (CONCURRENTLY false) TABLE t", None)]
    #[case(Pg, "REINDEX DATABASE app", Some("REINDEX DATABASE"))]
    #[case(Pg, "REINDEX (VERBOSE) SCHEMA s", Some("REINDEX SCHEMA"))]
    #[case(Pg, "REINDEX SYSTEM app", Some("REINDEX SYSTEM"))]
    #[case(Pg, "REINDEX TABLE t", None)]
    #[case(Pg, "VACUUM", Some("VACUUM"))]
    #[case(Pg, "VACUUM (FULL, ANALYZE) t", Some("VACUUM"))]
    #[case(Pg, "CREATE DATABASE app2", Some("CREATE DATABASE"))]
    #[case(Pg, "DROP DATABASE IF EXISTS app2", Some("DROP DATABASE"))]
    #[case(
        Pg,
        "CREATE TABLESPACE fast LOCATION '/ssd'",
        Some("CREATE TABLESPACE")
    )]
    #[case(Pg, "DROP TABLESPACE fast", Some("DROP TABLESPACE"))]
    #[case(
        Pg,
        "CREATE SUBSCRIPTION s CONNECTION 'host=a' PUBLICATION p",
        Some("CREATE SUBSCRIPTION")
    )]
    #[case(Pg, "DROP SUBSCRIPTION s", Some("DROP SUBSCRIPTION"))]
    #[case(
        Pg,
        "ALTER SUBSCRIPTION s REFRESH PUBLICATION",
        Some("ALTER SUBSCRIPTION")
    )]
    #[case(
        Pg,
        "ALTER SUBSCRIPTION s SET PUBLICATION p",
        Some("ALTER SUBSCRIPTION")
    )]
    #[case(
        Pg,
        "ALTER SUBSCRIPTION s SET PUBLICATION p WITH (refresh = false)",
        None
    )]
    #[case(Pg, "ALTER SUBSCRIPTION s DISABLE", None)]
    #[case(Pg, "ALTER SYSTEM SET work_mem = '64MB'", Some("ALTER SYSTEM"))]
    #[case(Pg, "DISCARD ALL", Some("DISCARD ALL"))]
    #[case(Pg, "DISCARD PLANS", None)]
    #[case(Pg, "ALTER DATABASE app SET TABLESPACE fast", Some("SET TABLESPACE"))]
    #[case(Pg, "ALTER DATABASE app SET work_mem = '8MB'", None)]
    #[case(Pg, "CLUSTER", Some("CLUSTER"))]
    #[case(Pg, "CLUSTER VERBOSE", Some("CLUSTER"))]
    #[case(Pg, "CLUSTER t USING t_pkey", None)]
    #[case(Pg, "COMMIT PREPARED 'x'", Some("COMMIT PREPARED"))]
    #[case(
        Pg,
        "ALTER TABLE p DETACH PARTITION p2020 CONCURRENTLY",
        Some("DETACH PARTITION")
    )]
    #[case(Pg, "CREATE INDEX i ON t (c)", None)]
    #[case(Pg, "CREATE TABLE t (concurrently int)", None)]
    #[case(Pg, "PRAGMA foreign_keys = OFF", None)]
    #[case(Sqlite, "PRAGMA foreign_keys = OFF", Some("foreign_keys"))]
    #[case(Sqlite, "pragma main.foreign_keys=1", Some("foreign_keys"))]
    #[case(Sqlite, "PRAGMA foreign_keys", None)]
    #[case(Sqlite, "PRAGMA journal_mode = WAL", Some("journal_mode"))]
    #[case(Sqlite, "PRAGMA journal_mode(WAL)", Some("journal_mode"))]
    #[case(Sqlite, "PRAGMA user_version = 3", None)]
    #[case(Sqlite, "VACUUM", Some("VACUUM"))]
    #[case(Sqlite, "VACUUM INTO '/tmp/copy.db'", Some("VACUUM"))]
    #[case(Sqlite, "ATTACH DATABASE 'other.db' AS other", Some("ATTACH"))]
    #[case(Sqlite, "DETACH other", Some("DETACH"))]
    #[case(Sqlite, "CREATE INDEX CONCURRENTLY i ON t (c)", None)]
    fn statements_that_refuse_a_transaction(
        #[case] d: Dialect,
        #[case] sql: &str,
        #[case] reason: Option<&str>,
    ) {
        let got = one(sql, d).outside_transaction(d);
        match reason {
            None => assert_eq!(got, None, "{sql}"),
            Some(words) => {
                let got = got.unwrap_or_else(|| panic!("{sql}: no reason"));
                assert!(got.contains(words), "{sql}: {got}");
                assert!(got.contains("inside a transaction"), "{sql}: {got}");
            }
        }
    }

    #[test]
    fn copy_from_stdin_keeps_its_payload() {
        let sql = "COPY t (a) FROM stdin;\n1\n2\n\\.\nSELECT 1;";
        let stmts = split(sql, Pg).unwrap();
        assert_eq!(stmts.len(), 2, "{stmts:#?}");
        assert!(stmts[0].text.starts_with("COPY t (a) FROM stdin;\n1\n2"));
        assert_eq!(stmts[1].text, "SELECT 1");
        assert_eq!(stmts[1].line, 5);
    }

    #[test]
    fn psql_features_are_found() {
        let sql = "CREATE TABLE t (a int, b text DEFAULT ':not' || 'x::int');\n\\copy t from program 'cat x'\nSELECT :\"registry\".x;\nSELECT :v;\nSELECT :'v';\nSELECT 1::int, '{\"a\":1}'::json;\n";
        let found: Vec<Option<String>> = split(sql, Dialect::Postgres)
            .unwrap()
            .iter()
            .map(|s| s.psql_feature(Dialect::Postgres))
            .collect();
        assert_eq!(found[0], None, "casts, strings and defaults are SQL");
        assert_eq!(found[1].as_deref(), Some("the psql meta-command \\copy"));
        assert_eq!(found[2].as_deref(), Some("the psql variable :v"));
        assert_eq!(found[3].as_deref(), Some("the psql variable :'v'"));
        assert_eq!(found[4], None);
        assert_eq!(
            split("SELECT :a;", Dialect::Sqlite).unwrap()[0].psql_feature(Dialect::Sqlite),
            None
        );
    }
}
