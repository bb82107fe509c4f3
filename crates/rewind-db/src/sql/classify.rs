//! Migration safety by effect: what one migration's SQL does to the data and to the code
//! still running, read from its tokens without a database.
//!
//! Each finding is one effect of one statement: it loses data (`DROP TABLE`, `TRUNCATE`,
//! any `DELETE` — rows deleted with a `WHERE` are gone as surely as without one), rewrites
//! data (`UPDATE … WHERE`, upserts, `ALTER COLUMN … TYPE … USING`: reverting the schema
//! leaves the new values), may lose data (a column type change, which may narrow), takes a
//! long lock (PostgreSQL: an index built without `CONCURRENTLY`, a constraint validated in
//! place, a table rewrite), or breaks code still running on the old schema (`RENAME`,
//! `SET NOT NULL`, a `NOT NULL` column without a default). A statement can have several.
//!
//! Statements inside `CREATE FUNCTION`/`TRIGGER`/`RULE` bodies do not run during the
//! migration and are not judged; a `DO $$ … $$` block runs, so the SQL statements of its
//! body are judged by the same rules. SQL inside strings (`EXECUTE '…'`) is not seen.
//!
//! This reads tokens, it does not parse: when in doubt it flags, since a false alarm costs a
//! look and a miss costs data.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{Dialect, Kind, Lines, Tok, concurrently, lex, lex_range, statement_ranges, word_at};

/// What a statement does, as far as rolling it back goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Only adds (tables, columns that old code may ignore, rows); never a finding's effect,
    /// but what [`Classification::effects`] says of a migration with no finding.
    Adds,
    /// Overwrites existing values: reverting the schema does not bring them back.
    RewritesData,
    /// Rows, columns or tables are gone; only a backup brings them back.
    LosesData,
    /// Values may be truncated, rounded or rejected (a narrowing type change).
    MayLoseData,
    /// Holds a lock that blocks reads or writes for as long as the work takes (PostgreSQL).
    LongLock,
    /// Code written for the previous schema fails against the new one.
    BreaksOldCode,
}

impl Effect {
    /// The effect in words, for a sentence.
    pub fn words(self) -> &'static str {
        match self {
            Effect::Adds => "adds",
            Effect::RewritesData => "rewrites data",
            Effect::LosesData => "loses data",
            Effect::MayLoseData => "may lose data",
            Effect::LongLock => "takes a long lock",
            Effect::BreaksOldCode => "breaks code still running on the old schema",
        }
    }

    /// Higher is worse: what a rollback cannot undo comes first.
    fn severity(self) -> u8 {
        match self {
            Effect::LosesData => 5,
            Effect::RewritesData => 4,
            Effect::MayLoseData => 3,
            Effect::BreaksOldCode => 2,
            Effect::LongLock => 1,
            Effect::Adds => 0,
        }
    }
}

/// What one migration does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Classification {
    /// Every effect worth a look, statement by statement, in order.
    pub findings: Vec<Finding>,
    /// Number of statements found.
    pub statements: usize,
    /// Tables this migration deletes rows from (DELETE with or without WHERE, TRUNCATE,
    /// DROP TABLE, a partition dropped, MERGE … DELETE, DELETE inside a DO block): unquoted
    /// names lower-cased, quoted ones as written, schema-qualified only when written so.
    pub tables_losing_rows: BTreeSet<String>,
    /// Statements (by index) that change something no effect names: `DROP INDEX`,
    /// `DROP CONSTRAINT`, `ALTER COLUMN … DROP DEFAULT` … Nothing to warn about, but the
    /// migration does not only add.
    pub other_changes: Vec<usize>,
}

impl Classification {
    /// True when every statement only adds (creates objects, adds nullable or defaulted
    /// columns, inserts rows …) or changes nothing: code written for the previous schema
    /// keeps working and a down script undoes it all. An empty migration is additive.
    pub fn additive(&self) -> bool {
        self.findings.is_empty() && self.other_changes.is_empty()
    }

    /// True when a finding says data is, or may be, lost.
    pub fn loses_data(&self) -> bool {
        self.findings
            .iter()
            .any(|f| matches!(f.effect, Effect::LosesData | Effect::MayLoseData))
    }

    /// True when a finding overwrites existing values.
    pub fn rewrites_data(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.effect == Effect::RewritesData)
    }

    /// The distinct effects of the findings, most severe first; `[Adds]` for an additive
    /// migration with statements.
    pub fn effects(&self) -> Vec<Effect> {
        let mut out: Vec<Effect> = Vec::new();
        for f in &self.findings {
            if !out.contains(&f.effect) {
                out.push(f.effect);
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.severity()));
        if out.is_empty() && self.additive() && self.statements > 0 {
            out.push(Effect::Adds);
        }
        out
    }

    /// One sentence per finding: `line 3: DELETE FROM sessions WHERE … loses data: deletes
    /// the matching rows of sessions; only a backup brings them back`.
    pub fn lines(&self) -> Vec<String> {
        self.findings
            .iter()
            .map(|f| {
                format!(
                    "line {}: {} {}: {}",
                    f.line,
                    brief(&f.sql),
                    f.effect.words(),
                    f.reason
                )
            })
            .collect()
    }
}

/// One effect of one statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Index of the statement in the migration, from 0 (a statement inside a DO block
    /// counts as the DO statement).
    pub statement: usize,
    /// 1-based line of the statement in the script.
    pub line: usize,
    /// The statement's text (shortened when very long).
    pub sql: String,
    pub kind: FindingKind,
    pub effect: Effect,
    /// The table, column, schema … it applies to, when known.
    pub object: Option<String>,
    /// What it does, for a person.
    pub reason: String,
}

/// The statement shape behind a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    DropTable,
    DropColumn,
    DropPartition,
    DropSchema,
    DropDatabase,
    DropOwned,
    Truncate,
    DeleteWithoutWhere,
    DeleteWhere,
    UpdateWithoutWhere,
    UpdateWhere,
    /// `INSERT … ON CONFLICT … DO UPDATE`, `ON DUPLICATE KEY UPDATE`.
    Upsert,
    /// SQLite's `REPLACE INTO` / `INSERT OR REPLACE`.
    Replace,
    MergeDelete,
    MergeUpdate,
    AlterColumnType,
    SetNotNull,
    AddNotNullWithoutDefault,
    Rename,
    CreateIndex,
    AddConstraint,
    /// `ADD COLUMN` that rewrites the table (volatile default, serial, identity, stored).
    AddColumnRewrite,
    VacuumFull,
    Cluster,
    Reindex,
    LockTable,
    /// The SQL could not be read.
    Unreadable,
}

/// Classifies one migration's SQL, written for `dialect`.
pub fn classify(sql: &str, dialect: Dialect) -> Classification {
    let mut cx = Cx {
        sql,
        lines: Lines::new(sql),
        dialect,
        out: Classification::default(),
        created: Vec::new(),
        added: Vec::new(),
    };
    let toks = match lex(sql, dialect) {
        Ok(t) => t,
        Err(e) => {
            cx.out.statements = 1;
            cx.out.findings.push(Finding {
                statement: 0,
                line: e.line,
                sql: shorten(sql.trim()),
                kind: FindingKind::Unreadable,
                effect: Effect::MayLoseData,
                object: None,
                reason: format!("cannot be read as SQL ({e}); check what it does by hand"),
            });
            return cx.out;
        }
    };
    let ranges = statement_ranges(&toks, dialect);
    cx.out.statements = ranges.len();
    for (index, r) in ranges.into_iter().enumerate() {
        cx.statement(&Stmt {
            index,
            toks: &toks[r],
        });
    }
    cx.out
}

struct Cx<'a> {
    sql: &'a str,
    lines: Lines,
    dialect: Dialect,
    out: Classification,
    /// Tables created by an earlier statement: empty and unseen by other sessions, so
    /// locking them blocks nobody.
    created: Vec<String>,
    /// Columns (table, column) added by an earlier statement: filling them in overwrites
    /// nothing that was there before the migration.
    added: Vec<(String, String)>,
}

/// One statement's tokens (or, in a DO block, one SQL statement of its body).
struct Stmt<'a> {
    index: usize,
    toks: &'a [Tok],
}

impl Stmt<'_> {
    fn w(&self, i: usize) -> Option<&str> {
        word_at(self.toks, i)
    }

    fn has(&self, word: &str) -> bool {
        self.toks.iter().any(|t| t.is(word))
    }
}

/// Statement verbs that start a SQL statement inside a PL/pgSQL body.
const BODY_VERBS: &[&str] = &[
    "DELETE", "UPDATE", "INSERT", "MERGE", "WITH", "DROP", "TRUNCATE", "ALTER", "CREATE", "LOCK",
    "CLUSTER", "REINDEX",
];

/// Statements (by first word) that change nothing, or only add.
const NEUTRAL: &[&str] = &[
    "INSERT",
    "REPLACE",
    "WITH",
    "UPDATE",
    "DELETE",
    "MERGE",
    "SELECT",
    "VALUES",
    "TABLE",
    "EXPLAIN",
    "COPY",
    "COMMENT",
    "GRANT",
    "BEGIN",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "START",
    "SET",
    "RESET",
    "SAVEPOINT",
    "RELEASE",
    "PRAGMA",
    "ANALYZE",
    "ANALYSE",
    "REFRESH",
    "SHOW",
    "CALL",
    "DISCARD",
    "NOTIFY",
    "LISTEN",
    "UNLISTEN",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "CHECKPOINT",
    "LOAD",
    "VACUUM",
    "CLUSTER",
    "REINDEX",
    "LOCK",
];

impl Cx<'_> {
    fn pg(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    fn flag(
        &mut self,
        st: &Stmt,
        kind: FindingKind,
        effect: Effect,
        object: Option<String>,
        reason: String,
    ) {
        let start = st.toks.iter().map(|t| t.start).min().unwrap_or(0);
        let end = st.toks.iter().map(|t| t.end).max().unwrap_or(start);
        self.out.findings.push(Finding {
            statement: st.index,
            line: self.lines.of(start),
            sql: shorten(&self.sql[start..end]),
            kind,
            effect,
            object,
            reason,
        });
    }

    fn other(&mut self, st: &Stmt) {
        if !self.out.other_changes.contains(&st.index) {
            self.out.other_changes.push(st.index);
        }
    }

    fn loses_rows(&mut self, table: &Option<String>) {
        if let Some(t) = table {
            self.out.tables_losing_rows.insert(t.clone());
        }
    }

    /// Was `table` created by an earlier statement of this migration?
    fn was_created(&self, table: &str) -> bool {
        self.created.iter().any(|c| same_table(c, table))
    }

    /// Was `table.column` added by an earlier statement of this migration?
    fn was_added(&self, table: &str, column: &str) -> bool {
        self.added
            .iter()
            .any(|(t, c)| c == column && same_table(t, table))
    }

    /// Reads a possibly qualified name (`a`, `"A"."b"`) at `i`; returns it and the index
    /// after it.
    fn name_at(&self, toks: &[Tok], mut i: usize) -> (Option<String>, usize) {
        let mut parts = Vec::new();
        while let Some(name) = toks.get(i).and_then(|t| t.name(self.sql)) {
            parts.push(name);
            i += 1;
            if toks.get(i).is_some_and(|t| t.kind == Kind::Period) {
                i += 1;
            } else {
                break;
            }
        }
        ((!parts.is_empty()).then(|| parts.join(".")), i)
    }

    /// A comma-separated list of names from `i` (each may be preceded by ONLY or followed
    /// by `*`, as TRUNCATE and LOCK allow).
    fn name_list(&self, toks: &[Tok], mut i: usize) -> Vec<String> {
        let mut names = Vec::new();
        loop {
            if word_at(toks, i) == Some("ONLY") {
                i += 1;
            }
            let (name, next) = self.name_at(toks, i);
            let Some(name) = name else { break };
            names.push(name);
            i = next;
            if toks
                .get(i)
                .is_some_and(|t| t.kind == Kind::Punct && &self.sql[t.start..t.end] == "*")
            {
                i += 1;
            }
            if toks.get(i).is_some_and(|t| t.kind == Kind::Comma) {
                i += 1;
            } else {
                break;
            }
        }
        names
    }

    fn statement(&mut self, st: &Stmt) {
        let first = st.w(0).unwrap_or("").to_string();
        match first.as_str() {
            "DROP" => self.drop(st),
            "TRUNCATE" => self.truncate(st),
            "ALTER" => self.alter(st),
            "RENAME" => {
                // MySQL: RENAME TABLE a TO b
                let (name, _) = self.name_at(st.toks, 2);
                let reason = format!(
                    "renames {}: code still using the old name fails",
                    name.as_deref().unwrap_or("a table")
                );
                self.flag(st, FindingKind::Rename, Effect::BreaksOldCode, name, reason);
            }
            "CREATE" => self.create(st),
            "DO" => self.do_block(st),
            "VACUUM" | "CLUSTER" | "REINDEX" | "LOCK" if self.pg() => self.maintenance(st),
            w if NEUTRAL.contains(&w) => {}
            _ => self.other(st),
        }
        // DML anywhere in the statement (CTEs included), except in the bodies of CREATE
        // statements (functions, triggers, rules), which do not run now.
        if first != "CREATE" {
            self.dml(st);
        }
    }

    fn drop(&mut self, st: &Stmt) {
        let skip = skip_if_exists(st.toks, 2);
        match st.w(1).unwrap_or("") {
            "TABLE" => {
                let names = self.name_list(st.toks, skip);
                for n in &names {
                    self.out.tables_losing_rows.insert(n.clone());
                }
                let reason = format!(
                    "drops {} with all its rows; only a backup brings them back",
                    describe(&names, "a table")
                );
                self.flag(
                    st,
                    FindingKind::DropTable,
                    Effect::LosesData,
                    join(&names),
                    reason,
                );
            }
            what @ ("SCHEMA" | "DATABASE") => {
                let names = self.name_list(st.toks, skip);
                let (kind, noun) = if what == "SCHEMA" {
                    (FindingKind::DropSchema, "schema")
                } else {
                    (FindingKind::DropDatabase, "database")
                };
                let what = match names.as_slice() {
                    [] => format!("a {noun}"),
                    [one] => format!("{noun} {one}"),
                    more => format!("{noun}s {}", more.join(", ")),
                };
                let reason =
                    format!("drops {what} and every table in it; only a backup brings them back");
                self.flag(st, kind, Effect::LosesData, join(&names), reason);
            }
            "OWNED" => self.flag(
                st,
                FindingKind::DropOwned,
                Effect::LosesData,
                None,
                "drops every object the role owns, tables included".into(),
            ),
            // DROP INDEX, VIEW, FUNCTION, TYPE …: no rows are lost, but nothing is added.
            _ => self.other(st),
        }
    }

    fn truncate(&mut self, st: &Stmt) {
        let mut i = 1;
        if st.w(i) == Some("TABLE") {
            i += 1;
        }
        let names = self.name_list(st.toks, skip_if_exists(st.toks, i));
        for n in &names {
            self.out.tables_losing_rows.insert(n.clone());
        }
        let mut reason = format!(
            "empties {}; only a backup brings the rows back",
            describe(&names, "the table")
        );
        if st.has("CASCADE") {
            reason.push_str(if names.len() > 1 {
                "; CASCADE also empties every table with a foreign key to them, named nowhere here"
            } else {
                "; CASCADE also empties every table with a foreign key to it, named nowhere here"
            });
        }
        self.flag(
            st,
            FindingKind::Truncate,
            Effect::LosesData,
            join(&names),
            reason,
        );
    }

    fn create(&mut self, st: &Stmt) {
        let mut i = 1;
        while matches!(
            st.w(i),
            Some("OR" | "REPLACE" | "GLOBAL" | "LOCAL" | "TEMP" | "TEMPORARY" | "UNLOGGED")
        ) {
            i += 1;
        }
        match st.w(i) {
            // With IF NOT EXISTS the table may be an old one, rows and all.
            Some("TABLE") if st.w(i + 1) != Some("IF") => {
                if let (Some(name), _) = self.name_at(st.toks, i + 1) {
                    self.created.push(name);
                }
            }
            Some("UNIQUE" | "INDEX") if self.pg() => {
                if concurrently(st.toks) {
                    return;
                }
                let Some(on) = st.toks.iter().position(|t| t.is("ON")) else {
                    return;
                };
                let (table, _) = self.name_at(st.toks, skip_if_exists(st.toks, on + 1));
                let Some(table) = table else { return };
                if self.was_created(&table) {
                    return;
                }
                let reason = format!(
                    "building the index without CONCURRENTLY holds a SHARE lock on {table} until \
                     the migration commits: writes to {table} wait (reads go on)"
                );
                self.flag(
                    st,
                    FindingKind::CreateIndex,
                    Effect::LongLock,
                    Some(table),
                    reason,
                );
            }
            _ => {}
        }
    }

    fn alter(&mut self, st: &Stmt) {
        let what = st.w(1).unwrap_or("").to_string();
        match what.as_str() {
            "TABLE" => {}
            "INDEX" => return self.other(st), // renaming an index breaks no query
            _ => {
                // ALTER VIEW/SCHEMA/TYPE/FUNCTION/SEQUENCE/MATERIALIZED VIEW … RENAME
                let rename = st.toks.iter().position(|t| t.is("RENAME"));
                match rename {
                    Some(r) if st.w(r + 1) != Some("CONSTRAINT") => {
                        let at = if what == "MATERIALIZED" { 3 } else { 2 };
                        let (name, _) = self.name_at(st.toks, skip_if_exists(st.toks, at));
                        let reason = format!(
                            "renames {}: code still using the old name fails",
                            name.as_deref().unwrap_or("an object")
                        );
                        self.flag(st, FindingKind::Rename, Effect::BreaksOldCode, name, reason);
                    }
                    _ => self.other(st),
                }
                return;
            }
        }
        let (table, mut i) = self.name_at(st.toks, skip_if_exists(st.toks, 2));
        let table = table.unwrap_or_else(|| "?".into());
        // Actions, separated by commas outside parentheses.
        let mut actions = Vec::new();
        let mut depth = 0usize;
        let mut start = i;
        while i < st.toks.len() {
            match st.toks[i].kind {
                Kind::LParen => depth += 1,
                Kind::RParen => depth = depth.saturating_sub(1),
                Kind::Comma if depth == 0 => {
                    actions.push(start..i);
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        actions.push(start..st.toks.len());
        for a in actions {
            self.alter_action(st, &table, &st.toks[a]);
        }
    }

    fn alter_action(&mut self, st: &Stmt, table: &str, a: &[Tok]) {
        let w = |k: usize| word_at(a, k);
        let has = |word: &str| a.iter().any(|t| t.is(word));
        // Locks on a table this migration created block nobody.
        let lock_matters = self.pg() && !self.was_created(table);
        match w(0) {
            Some("DROP") => match w(1) {
                Some("CONSTRAINT" | "INDEX" | "KEY" | "PRIMARY" | "FOREIGN" | "CHECK") => {
                    self.other(st)
                }
                Some("PARTITION") => {
                    let (name, _) = self.name_at(a, 2);
                    self.out.tables_losing_rows.insert(table.to_string());
                    let reason = format!(
                        "drops partition {} of {table} with its rows; only a backup brings them back",
                        name.as_deref().unwrap_or("?")
                    );
                    self.flag(
                        st,
                        FindingKind::DropPartition,
                        Effect::LosesData,
                        name.map(|n| format!("{table}.{n}")),
                        reason,
                    );
                }
                _ => {
                    let k = if w(1) == Some("COLUMN") { 2 } else { 1 };
                    let (col, _) = self.name_at(a, skip_if_exists(a, k));
                    let col = col.unwrap_or_else(|| "?".into());
                    self.flag(
                        st,
                        FindingKind::DropColumn,
                        Effect::LosesData,
                        Some(format!("{table}.{col}")),
                        format!(
                            "drops column {col} of {table} and its values; only a backup brings \
                             them back"
                        ),
                    );
                }
            },
            Some("ALTER") => {
                let k = if w(1) == Some("COLUMN") { 2 } else { 1 };
                let (col, k) = self.name_at(a, k);
                let col = col.unwrap_or_else(|| "?".into());
                let object = Some(format!("{table}.{col}"));
                let (x, y, z) = (w(k), w(k + 1), w(k + 2));
                let type_change = x == Some("TYPE")
                    || (x == Some("SET") && y == Some("DATA") && z == Some("TYPE"));
                if type_change {
                    if has("USING") {
                        self.flag(
                            st,
                            FindingKind::AlterColumnType,
                            Effect::RewritesData,
                            object.clone(),
                            format!(
                                "rewrites every value of {table}.{col} through its USING \
                                 expression; reverting cannot bring the old values back"
                            ),
                        );
                    } else {
                        self.flag(
                            st,
                            FindingKind::AlterColumnType,
                            Effect::MayLoseData,
                            object.clone(),
                            format!(
                                "changing the type of {table}.{col} is potentially narrowing: \
                                 values may be truncated, rounded or rejected, and the old type \
                                 may not hold the new values on the way back"
                            ),
                        );
                    }
                    if lock_matters {
                        self.flag(
                            st,
                            FindingKind::AlterColumnType,
                            Effect::LongLock,
                            object,
                            format!(
                                "changing a column's type holds an ACCESS EXCLUSIVE lock on \
                                 {table} and usually rewrites it: reads and writes of {table} \
                                 wait until the migration commits"
                            ),
                        );
                    }
                } else if x == Some("SET") && y == Some("NOT") && z == Some("NULL") {
                    self.flag(
                        st,
                        FindingKind::SetNotNull,
                        Effect::BreaksOldCode,
                        object.clone(),
                        format!(
                            "old code that leaves {table}.{col} out of its inserts fails, and \
                             the migration fails on existing NULLs"
                        ),
                    );
                    if lock_matters {
                        self.flag(
                            st,
                            FindingKind::SetNotNull,
                            Effect::LongLock,
                            object,
                            format!(
                                "SET NOT NULL scans all of {table} under an ACCESS EXCLUSIVE \
                                 lock: reads and writes of {table} wait until the migration \
                                 commits"
                            ),
                        );
                    }
                } else {
                    // DROP NOT NULL, SET/DROP DEFAULT, SET STATISTICS …
                    self.other(st);
                }
            }
            // MySQL: MODIFY [COLUMN] name type / CHANGE [COLUMN] old new type
            Some(kw @ ("MODIFY" | "CHANGE")) => {
                let k = if w(1) == Some("COLUMN") { 2 } else { 1 };
                let (col, _) = self.name_at(a, k);
                let col = col.unwrap_or_else(|| "?".into());
                let reason = format!(
                    "{kw} may change the type of {table}.{col}, which is potentially narrowing"
                );
                self.flag(
                    st,
                    FindingKind::AlterColumnType,
                    Effect::MayLoseData,
                    Some(format!("{table}.{col}")),
                    reason,
                );
            }
            Some("ADD") => {
                let constraint = matches!(
                    w(1),
                    Some(
                        "CONSTRAINT"
                            | "PRIMARY"
                            | "UNIQUE"
                            | "FOREIGN"
                            | "CHECK"
                            | "INDEX"
                            | "KEY"
                            | "EXCLUDE"
                    )
                );
                if constraint {
                    // A new constraint restricts what old code may write.
                    self.other(st);
                    if lock_matters {
                        self.add_constraint_lock(st, table, a);
                    }
                    return;
                }
                let k = if w(1) == Some("COLUMN") { 2 } else { 1 };
                let (col, _) = self.name_at(a, skip_if_exists(a, k));
                let col = col.unwrap_or_else(|| "?".into());
                self.added.push((table.to_string(), col.clone()));
                let object = Some(format!("{table}.{col}"));
                let not_null = a.windows(2).any(|p| p[0].is("NOT") && p[1].is("NULL"));
                let primary = a.windows(2).any(|p| p[0].is("PRIMARY") && p[1].is("KEY"));
                let serial = a.iter().any(|t| {
                    matches!(
                        t.word(),
                        Some(
                            "SERIAL"
                                | "BIGSERIAL"
                                | "SMALLSERIAL"
                                | "SERIAL2"
                                | "SERIAL4"
                                | "SERIAL8"
                                | "AUTOINCREMENT"
                                | "AUTO_INCREMENT"
                        )
                    )
                });
                let filled = serial || has("DEFAULT") || has("GENERATED");
                if (not_null || primary) && !filled {
                    self.flag(
                        st,
                        FindingKind::AddNotNullWithoutDefault,
                        Effect::BreaksOldCode,
                        object.clone(),
                        format!(
                            "old code that does not set {col} fails, and the migration fails on \
                             a table with rows"
                        ),
                    );
                }
                if lock_matters && let Some(why) = rewrites_table(a, self.sql) {
                    self.flag(
                        st,
                        FindingKind::AddColumnRewrite,
                        Effect::LongLock,
                        object,
                        format!(
                            "adding {col} {why} rewrites {table} under an ACCESS EXCLUSIVE lock: \
                             reads and writes of {table} wait until the migration commits"
                        ),
                    );
                }
            }
            Some("RENAME") => {
                if w(1) == Some("CONSTRAINT") {
                    return self.other(st);
                }
                let (what, object) = if w(1) == Some("TO") {
                    let (new, _) = self.name_at(a, 2);
                    (
                        format!("renames table {table} to {}", new.unwrap_or_default()),
                        table.to_string(),
                    )
                } else {
                    let k = if w(1) == Some("COLUMN") { 2 } else { 1 };
                    let (col, _) = self.name_at(a, k);
                    let col = col.unwrap_or_else(|| "?".into());
                    (
                        format!("renames column {table}.{col}"),
                        format!("{table}.{col}"),
                    )
                };
                self.flag(
                    st,
                    FindingKind::Rename,
                    Effect::BreaksOldCode,
                    Some(object),
                    format!("{what}: code still using the old name fails"),
                );
            }
            _ => self.other(st),
        }
    }

    /// ADD CONSTRAINT on PostgreSQL: a foreign key or check is validated by scanning the
    /// table under the ALTER's lock unless added NOT VALID; a unique or primary key (or
    /// exclusion) constraint builds its index under it unless it takes an existing one.
    fn add_constraint_lock(&mut self, st: &Stmt, table: &str, a: &[Tok]) {
        let has = |word: &str| a.iter().any(|t| t.is(word));
        let not_valid = a.windows(2).any(|p| p[0].is("NOT") && p[1].is("VALID"));
        let using_index = a.windows(2).any(|p| p[0].is("USING") && p[1].is("INDEX"));
        let reason = if has("FOREIGN") || has("REFERENCES") {
            (!not_valid).then(|| {
                format!(
                    "validating the foreign key scans {table} under a SHARE ROW EXCLUSIVE lock on \
                     {table} and the table it references: writes to both wait until the \
                     migration commits (add it NOT VALID, then VALIDATE CONSTRAINT)"
                )
            })
        } else if has("CHECK") {
            (!not_valid).then(|| {
                format!(
                    "validating the check scans {table} under an ACCESS EXCLUSIVE lock: reads \
                     and writes of {table} wait until the migration commits (add it NOT VALID, \
                     then VALIDATE CONSTRAINT)"
                )
            })
        } else if has("UNIQUE") || has("PRIMARY") || has("EXCLUDE") {
            (!using_index).then(|| {
                format!(
                    "the constraint builds its index under an ACCESS EXCLUSIVE lock on {table}: \
                     reads and writes of {table} wait until the migration commits (build the \
                     index CONCURRENTLY, then add the constraint USING INDEX)"
                )
            })
        } else {
            None
        };
        if let Some(reason) = reason {
            self.flag(
                st,
                FindingKind::AddConstraint,
                Effect::LongLock,
                Some(table.to_string()),
                reason,
            );
        }
    }

    /// VACUUM FULL, CLUSTER, REINDEX, LOCK on PostgreSQL.
    fn maintenance(&mut self, st: &Stmt) {
        let toks = st.toks;
        // The object named after the options, if any, and whether it is an index.
        let target = |cx: &Self, mut i: usize| {
            if toks.get(i).is_some_and(|t| t.kind == Kind::LParen) {
                i = super::skip_parens(toks, i);
            }
            let index = toks.get(i).is_some_and(|t| t.is("INDEX"));
            while matches!(
                word_at(toks, i),
                Some(
                    "FULL"
                        | "FREEZE"
                        | "VERBOSE"
                        | "ANALYZE"
                        | "ANALYSE"
                        | "INDEX"
                        | "TABLE"
                        | "SCHEMA"
                        | "DATABASE"
                        | "SYSTEM"
                        | "CONCURRENTLY"
                )
            ) {
                i += 1;
            }
            (cx.name_at(toks, i).0, index)
        };
        match st.w(0) {
            Some("VACUUM") => {
                let full = toks.iter().enumerate().any(|(i, t)| {
                    t.is("FULL")
                        && !toks
                            .get(i + 1)
                            .is_some_and(|n| n.is("FALSE") || n.is("OFF"))
                });
                if full {
                    let (table, _) = target(self, 1);
                    let reason = format!(
                        "VACUUM FULL rewrites {} under an ACCESS EXCLUSIVE lock: reads and \
                         writes wait until it finishes",
                        table.as_deref().unwrap_or("every table")
                    );
                    self.flag(st, FindingKind::VacuumFull, Effect::LongLock, table, reason);
                }
            }
            Some("CLUSTER") => {
                let (table, _) = target(self, 1);
                let reason = format!(
                    "CLUSTER rewrites {} under an ACCESS EXCLUSIVE lock: reads and writes wait \
                     until it finishes",
                    table.as_deref().unwrap_or("every clustered table")
                );
                self.flag(st, FindingKind::Cluster, Effect::LongLock, table, reason);
            }
            Some("REINDEX") if !concurrently(toks) => {
                let (table, index) = target(self, 1);
                let what = match (&table, index) {
                    (Some(i), true) => format!("the table of index {i}"),
                    (Some(t), false) => t.clone(),
                    (None, _) => "every table it rebuilds".into(),
                };
                let reason = format!(
                    "REINDEX without CONCURRENTLY blocks writes to {what} while it rebuilds, and \
                     queries that use the rebuilt indexes wait too"
                );
                self.flag(st, FindingKind::Reindex, Effect::LongLock, table, reason);
            }
            Some("LOCK") => {
                let mut i = 1;
                if st.w(i) == Some("TABLE") {
                    i += 1;
                }
                let names = self.name_list(toks, i);
                let mode: Vec<&str> = match toks.iter().position(|t| t.is("IN")) {
                    Some(p) => toks[p + 1..]
                        .iter()
                        .map_while(|t| t.word().filter(|w| *w != "MODE"))
                        .collect(),
                    None => vec!["ACCESS", "EXCLUSIVE"],
                };
                let blocks = match mode.as_slice() {
                    ["ACCESS", "EXCLUSIVE"] => Some("reads and writes"),
                    ["EXCLUSIVE"] | ["SHARE"] | ["SHARE", "ROW", "EXCLUSIVE"] => Some("writes"),
                    _ => None,
                };
                if let Some(blocks) = blocks {
                    let reason = format!(
                        "holds {} {} lock on {} until the migration commits: {blocks} wait",
                        if mode[0] == "ACCESS" || mode[0] == "EXCLUSIVE" {
                            "an"
                        } else {
                            "a"
                        },
                        mode.join(" "),
                        describe(&names, "the table")
                    );
                    self.flag(
                        st,
                        FindingKind::LockTable,
                        Effect::LongLock,
                        join(&names),
                        reason,
                    );
                }
            }
            _ => {}
        }
    }

    /// A PL/pgSQL `DO` block runs now: the SQL statements of its body are judged like the
    /// migration's own.
    fn do_block(&mut self, st: &Stmt) {
        if !self.pg() {
            return;
        }
        if let Some(l) = st.toks.iter().position(|t| t.is("LANGUAGE")) {
            let lang = st.toks.get(l + 1).and_then(|t| match &t.kind {
                Kind::Str => Some(self.sql[t.start..t.end].trim_matches('\'').to_lowercase()),
                _ => t.name(self.sql),
            });
            if !matches!(lang.as_deref(), Some("plpgsql" | "sql")) {
                return;
            }
        }
        let Some(body) = st.toks.iter().find_map(|t| match &t.kind {
            Kind::Dollar(body) => Some(body.clone()),
            _ => None,
        }) else {
            return;
        };
        let toks = match lex_range(self.sql, body, Dialect::Postgres) {
            Ok(t) => t,
            Err(e) => {
                self.flag(
                    st,
                    FindingKind::Unreadable,
                    Effect::MayLoseData,
                    None,
                    format!("its body cannot be read as SQL ({e}); check what it does by hand"),
                );
                return;
            }
        };
        for r in statement_ranges(&toks, Dialect::Postgres) {
            let seg = &toks[r];
            // The segment up to a `;` may open with PL/pgSQL control (BEGIN, IF … THEN,
            // LOOP, ELSE, a <<label>>): the SQL statement starts at the first verb after it.
            let start = seg.iter().enumerate().position(|(k, t)| {
                t.word().is_some_and(|w| BODY_VERBS.contains(&w))
                    && (k == 0
                        || matches!(seg[k - 1].word(), Some("BEGIN" | "THEN" | "ELSE" | "LOOP"))
                        || (seg[k - 1].kind == Kind::Punct
                            && self.sql[seg[k - 1].start..seg[k - 1].end].ends_with(">>")))
            });
            if let Some(k) = start {
                self.statement(&Stmt {
                    index: st.index,
                    toks: &seg[k..],
                });
            }
        }
    }

    /// DELETE, UPDATE, upserts, REPLACE and MERGE, wherever they stand (top level or a CTE).
    fn dml(&mut self, st: &Stmt) {
        let toks = st.toks;
        for i in 0..toks.len() {
            let Some(w) = toks[i].word() else { continue };
            let prev = i.checked_sub(1).map(|p| &toks[p]);
            let prev_word = prev.and_then(Tok::word);
            match w {
                "DELETE" | "UPDATE" => {
                    let is_update = w == "UPDATE";
                    if is_update
                        && prev_word == Some("DO")
                        && toks[..i].iter().any(|t| t.is("CONFLICT"))
                        || is_update
                            && prev_word == Some("KEY")
                            && i >= 2
                            && toks[i - 2].is("DUPLICATE")
                    {
                        self.upsert(st);
                        continue;
                    }
                    // Trigger events, privileges, FK actions, row locks, MERGE actions.
                    let not_a_statement = prev.is_some_and(|p| p.kind == Kind::Comma)
                        || matches!(
                            prev_word,
                            Some(
                                "ON" | "BEFORE"
                                    | "AFTER"
                                    | "OF"
                                    | "OR"
                                    | "FOR"
                                    | "DO"
                                    | "GRANT"
                                    | "REVOKE"
                                    | "KEY"
                                    | "INSTEAD"
                                    | "THEN"
                                    | "NO"
                            )
                        );
                    if !not_a_statement {
                        self.delete_or_update(st, i, !is_update);
                    }
                }
                "REPLACE" if toks.get(i + 1).is_some_and(|t| t.is("INTO")) => {
                    let (table, _) = self.name_at(toks, i + 2);
                    let reason = format!(
                        "replaces the rows of {} that conflict with the new ones (deleting and \
                         re-inserting them); reverting cannot bring the old values back",
                        table.as_deref().unwrap_or("the table")
                    );
                    self.flag(
                        st,
                        FindingKind::Replace,
                        Effect::RewritesData,
                        table,
                        reason,
                    );
                }
                "MERGE" if i == 0 || prev.is_some_and(|p| p.kind == Kind::RParen) => {
                    self.merge(st, i)
                }
                _ => {}
            }
        }
    }

    fn upsert(&mut self, st: &Stmt) {
        let into = st.toks.iter().position(|t| t.is("INTO"));
        let table = into.and_then(|p| self.name_at(st.toks, p + 1).0);
        let reason = format!(
            "overwrites the rows of {} that conflict with the new ones; reverting cannot bring \
             the old values back",
            table.as_deref().unwrap_or("the table")
        );
        self.flag(st, FindingKind::Upsert, Effect::RewritesData, table, reason);
    }

    fn merge(&mut self, st: &Stmt, i: usize) {
        let toks = st.toks;
        let (table, _) = self.name_at(toks, i + 2);
        let desc = table.clone().unwrap_or_else(|| "the table".into());
        let then = |w: &str| toks.windows(2).any(|p| p[0].is("THEN") && p[1].is(w));
        if then("DELETE") {
            self.loses_rows(&table);
            self.flag(
                st,
                FindingKind::MergeDelete,
                Effect::LosesData,
                table.clone(),
                format!("deletes the matched rows of {desc}; only a backup brings them back"),
            );
        }
        if then("UPDATE") {
            self.flag(
                st,
                FindingKind::MergeUpdate,
                Effect::RewritesData,
                table,
                format!(
                    "overwrites the matched rows of {desc}; reverting cannot bring the old values \
                     back"
                ),
            );
        }
    }

    fn delete_or_update(&mut self, st: &Stmt, i: usize, is_delete: bool) {
        let toks = st.toks;
        if is_delete && word_at(toks, i + 1) != Some("FROM") {
            return;
        }
        // The statement ends where the enclosing parenthesis closes (a CTE), or at the end.
        let mut depth = 0usize;
        let mut set_at = None;
        let mut where_at = None;
        let mut end = toks.len();
        for (k, t) in toks.iter().enumerate().skip(i + 1) {
            match t.kind {
                Kind::LParen => depth += 1,
                Kind::RParen if depth == 0 => {
                    end = k;
                    break;
                }
                Kind::RParen => depth -= 1,
                _ if depth == 0 && t.is("SET") && set_at.is_none() => set_at = Some(k),
                _ if depth == 0 && t.is("WHERE") && where_at.is_none() => where_at = Some(k),
                _ => {}
            }
        }
        if !is_delete && set_at.is_none() {
            return; // not an UPDATE statement (FOR NO KEY UPDATE …)
        }
        let mut k = if is_delete { i + 2 } else { i + 1 };
        if !is_delete && word_at(toks, k) == Some("OR") {
            k += 2; // SQLite: UPDATE OR REPLACE t
        }
        let (table, _) = self.name_at(toks, skip_if_exists(toks, k));
        let cols = set_at.map_or_else(Vec::new, |s| self.set_columns(&toks[s + 1..end]));
        // Rows of a table this migration created, or columns it added (a backfill), held
        // nothing before it ran.
        if let Some(t) = &table
            && (self.was_created(t)
                || (!is_delete && !cols.is_empty() && cols.iter().all(|c| self.was_added(t, c))))
        {
            return;
        }
        let desc = table.clone().unwrap_or_else(|| "the table".into());
        let everything = match where_at {
            None => true,
            Some(w) => always_true(&toks[w + 1..end], self.sql),
        };
        if is_delete {
            self.loses_rows(&table);
            let (kind, reason) = if everything {
                (
                    FindingKind::DeleteWithoutWhere,
                    format!("deletes every row of {desc}; only a backup brings them back"),
                )
            } else {
                (
                    FindingKind::DeleteWhere,
                    format!("deletes the matching rows of {desc}; only a backup brings them back"),
                )
            };
            self.flag(st, kind, Effect::LosesData, table, reason);
            return;
        }
        let what = match cols.len() {
            0 => "values".to_string(),
            1 => cols[0].clone(),
            _ => cols.join(", "),
        };
        if everything {
            self.flag(
                st,
                FindingKind::UpdateWithoutWhere,
                Effect::LosesData,
                table,
                format!("overwrites {what} in every row of {desc}; only a backup brings the old values back"),
            );
        } else {
            self.flag(
                st,
                FindingKind::UpdateWhere,
                Effect::RewritesData,
                table,
                format!(
                    "overwrites {what} in the matching rows of {desc}; reverting cannot bring the \
                     old values back, only a backup can"
                ),
            );
        }
    }

    /// The columns an UPDATE's SET list assigns (`a = …`, `(a, b) = …`).
    fn set_columns(&self, toks: &[Tok]) -> Vec<String> {
        let mut cols = Vec::new();
        let mut k = 0;
        while k < toks.len() {
            let t = &toks[k];
            if matches!(t.word(), Some("FROM" | "WHERE" | "RETURNING")) {
                break;
            }
            if t.kind == Kind::LParen {
                // A tuple assigned as a whole, or an expression to skip.
                let after = super::skip_parens(toks, k);
                if toks.get(after).is_some_and(|n| n.kind == Kind::Eq) {
                    cols.extend(
                        toks[k + 1..after - 1]
                            .iter()
                            .filter_map(|n| n.name(self.sql)),
                    );
                }
                k = after;
                continue;
            }
            if toks.get(k + 1).is_some_and(|n| n.kind == Kind::Eq)
                && let Some(name) = t.name(self.sql)
            {
                cols.push(name);
            }
            k += 1;
        }
        cols
    }
}

/// Does an ADD COLUMN rewrite the table on PostgreSQL? Names why: a volatile default
/// (each row gets its own value), a serial or identity column, a stored generated column.
/// Stable defaults (`now()`, constants) are stored once in the catalog since PostgreSQL 11.
fn rewrites_table(a: &[Tok], sql: &str) -> Option<String> {
    const VOLATILE: &[&str] = &[
        "RANDOM",
        "GEN_RANDOM_UUID",
        "UUID_GENERATE_V1",
        "UUID_GENERATE_V1MC",
        "UUID_GENERATE_V4",
        "UUIDV7",
        "UUID_GENERATE_V7",
        "CLOCK_TIMESTAMP",
        "TIMEOFDAY",
        "NEXTVAL",
        "TXID_CURRENT",
        "PG_CURRENT_XACT_ID",
    ];
    if let Some(d) = a.iter().position(|t| t.is("DEFAULT")) {
        let call = a[d + 1..].windows(2).find(|p| {
            p[1].kind == Kind::LParen && p[0].word().is_some_and(|w| VOLATILE.contains(&w))
        });
        if let Some(p) = call {
            return Some(format!(
                "with the volatile default {}()",
                &sql[p[0].start..p[0].end]
            ));
        }
    }
    let serial = a.iter().find(|t| {
        matches!(
            t.word(),
            Some("SERIAL" | "BIGSERIAL" | "SMALLSERIAL" | "SERIAL2" | "SERIAL4" | "SERIAL8")
        )
    });
    if let Some(t) = serial {
        return Some(format!("as {}", &sql[t.start..t.end]));
    }
    if a.windows(2).any(|p| p[0].is("AS") && p[1].is("IDENTITY")) {
        return Some("as an identity column".into());
    }
    if a.iter().any(|t| t.is("GENERATED")) && a.iter().any(|t| t.is("STORED")) {
        return Some("as a stored generated column".into());
    }
    None
}

/// Do two table names mean the same table? They compare unqualified when either side is
/// unqualified (the search path decides, and a new table usually lands where the migration
/// expects).
fn same_table(a: &str, b: &str) -> bool {
    let last = |n: &str| n.rsplit('.').next().unwrap_or(n).to_string();
    a == b || ((!a.contains('.') || !b.contains('.')) && last(a) == last(b))
}

/// Skips `IF EXISTS` / `IF NOT EXISTS` / `ONLY` at `i`.
fn skip_if_exists(toks: &[Tok], mut i: usize) -> usize {
    if word_at(toks, i) == Some("IF") {
        i += 1;
        if word_at(toks, i) == Some("NOT") {
            i += 1;
        }
        if word_at(toks, i) == Some("EXISTS") {
            i += 1;
        }
    }
    if word_at(toks, i) == Some("ONLY") {
        i += 1;
    }
    i
}

/// Is the condition (up to RETURNING/ORDER/LIMIT) `TRUE` or `1 = 1`?
fn always_true(toks: &[Tok], sql: &str) -> bool {
    let cond: Vec<&Tok> = toks
        .iter()
        .take_while(|t| !matches!(t.word(), Some("RETURNING" | "ORDER" | "LIMIT")))
        .collect();
    match cond.as_slice() {
        [t] => t.is("TRUE"),
        [a, eq, b] => {
            eq.kind == Kind::Eq
                && a.kind == Kind::Number
                && b.kind == Kind::Number
                && sql[a.start..a.end] == sql[b.start..b.end]
        }
        _ => false,
    }
}

fn join(names: &[String]) -> Option<String> {
    (!names.is_empty()).then(|| names.join(", "))
}

fn describe(names: &[String], fallback: &str) -> String {
    if names.is_empty() {
        fallback.to_string()
    } else {
        names.join(", ")
    }
}

/// The statement for a finding, cut when very long.
fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} …", &text[..cut])
}

/// The statement on one line, for a sentence: whole when short, else up to its WHERE (the
/// condition is detail) or its first words.
fn brief(sql: &str) -> String {
    const LONG: usize = 60;
    let words: Vec<&str> = sql.split_whitespace().collect();
    let whole = words.join(" ");
    if whole.chars().count() <= LONG {
        return whole;
    }
    let mut out = String::new();
    for w in words {
        if !out.is_empty() && out.chars().count() + 1 + w.chars().count() > LONG - 12 {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
        if w.eq_ignore_ascii_case("WHERE") {
            break;
        }
    }
    out.push_str(" …");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Dialect::{Postgres as Pg, Sqlite};
    use Effect::*;
    use FindingKind::*;
    use rstest::rstest;

    fn findings(sql: &str, d: Dialect) -> Vec<(FindingKind, Effect)> {
        classify(sql, d)
            .findings
            .iter()
            .map(|f| (f.kind, f.effect))
            .collect()
    }

    /// Every case of the classifier this one replaces (rewind-dbkit's), and what it says
    /// now. Where the answer changed, the old one was wrong: rows deleted with a WHERE are
    /// gone too, an UPDATE with a WHERE or an upsert overwrites values, and PostgreSQL's
    /// lock-taking statements now say so.
    #[rstest]
    #[case(Pg, "DROP TABLE users;", &[(DropTable, LosesData)], false)]
    #[case(Pg, "drop table if exists public.users, orders cascade", &[(DropTable, LosesData)], false)]
    #[case(Pg, "ALTER TABLE users DROP COLUMN email;", &[(DropColumn, LosesData)], false)]
    #[case(Pg, "ALTER TABLE users DROP email", &[(DropColumn, LosesData)], false)]
    #[case(Pg, "alter table only users drop column if exists email", &[(DropColumn, LosesData)], false)]
    #[case(Pg, "ALTER TABLE users DROP CONSTRAINT users_email_key", &[], false)]
    #[case(Pg, "TRUNCATE users", &[(Truncate, LosesData)], false)]
    #[case(Pg, "TRUNCATE TABLE a, b RESTART IDENTITY", &[(Truncate, LosesData)], false)]
    #[case(Pg, "DELETE FROM sessions", &[(DeleteWithoutWhere, LosesData)], false)]
    // Was: nothing to flag.
    #[case(Pg, "DELETE FROM sessions WHERE expires_at < now()", &[(DeleteWhere, LosesData)], false)]
    #[case(Pg, "DELETE FROM t WHERE 1=1", &[(DeleteWithoutWhere, LosesData)], false)]
    #[case(Pg, "UPDATE users SET active = false", &[(UpdateWithoutWhere, LosesData)], false)]
    // Was: nothing to flag.
    #[case(Pg, "UPDATE users SET active = false WHERE id = 1", &[(UpdateWhere, RewritesData)], false)]
    #[case(Pg, "UPDATE users SET n = (SELECT count(*) FROM o WHERE o.u = users.id)", &[(UpdateWithoutWhere, LosesData)], false)]
    // Was: nothing to flag.
    #[case(Pg, "UPDATE t SET a = 1 FROM u WHERE t.id = u.id", &[(UpdateWhere, RewritesData)], false)]
    #[case(Pg, "ALTER TABLE t ALTER COLUMN price TYPE integer", &[(AlterColumnType, MayLoseData), (AlterColumnType, LongLock)], false)]
    #[case(Pg, "ALTER TABLE t ALTER price SET DATA TYPE varchar(10)", &[(AlterColumnType, MayLoseData), (AlterColumnType, LongLock)], false)]
    #[case(Pg, "ALTER TABLE t ALTER COLUMN email SET NOT NULL", &[(SetNotNull, BreaksOldCode), (SetNotNull, LongLock)], false)]
    #[case(Pg, "ALTER TABLE t ALTER COLUMN email DROP NOT NULL", &[], false)]
    #[case(Pg, "ALTER TABLE t ADD COLUMN c int NOT NULL", &[(AddNotNullWithoutDefault, BreaksOldCode)], false)]
    #[case(Pg, "ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0", &[], true)]
    #[case(Pg, "ALTER TABLE t ADD COLUMN c text", &[], true)]
    // Was additive: filling a serial column rewrites the table under its lock.
    #[case(Pg, "ALTER TABLE t ADD COLUMN id bigserial NOT NULL", &[(AddColumnRewrite, LongLock)], false)]
    #[case(Sqlite, "ALTER TABLE t ADD COLUMN id bigserial NOT NULL", &[], true)]
    #[case(Pg, "DROP SCHEMA billing CASCADE", &[(DropSchema, LosesData)], false)]
    #[case(Pg, "DROP DATABASE IF EXISTS old", &[(DropDatabase, LosesData)], false)]
    #[case(Pg, "DROP OWNED BY app", &[(DropOwned, LosesData)], false)]
    #[case(Pg, "ALTER TABLE users RENAME TO accounts", &[(Rename, BreaksOldCode)], false)]
    #[case(Pg, "ALTER TABLE users RENAME COLUMN name TO full_name", &[(Rename, BreaksOldCode)], false)]
    #[case(Pg, "ALTER TABLE users RENAME CONSTRAINT a TO b", &[], false)]
    #[case(Pg, "ALTER VIEW v RENAME TO w", &[(Rename, BreaksOldCode)], false)]
    #[case(Pg, "RENAME TABLE a TO b", &[(Rename, BreaksOldCode)], false)]
    #[case(Pg, "ALTER INDEX i RENAME TO j", &[], false)]
    #[case(Pg, "DROP INDEX users_email_idx", &[], false)]
    #[case(Pg, "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;", &[], false)]
    #[case(Pg, "CREATE TABLE t (id int primary key, name text not null)", &[], true)]
    #[case(Pg, "CREATE INDEX CONCURRENTLY i ON t (a); INSERT INTO t VALUES (1)", &[], true)]
    #[case(Pg, "", &[], true)]
    #[case(Pg, "-- nothing here\n/* still nothing */", &[], true)]
    // Keywords in strings, identifiers, comments and dollar quotes are not statements.
    #[case(Pg, "INSERT INTO log (msg) VALUES ('DROP TABLE users; DELETE FROM x')", &[], true)]
    #[case(Pg, "INSERT INTO log VALUES ('it''s; DROP TABLE users')", &[], true)]
    #[case(Pg, r"INSERT INTO log VALUES (E'\'; DROP TABLE users; --')", &[], true)]
    #[case(Pg, r#"CREATE TABLE "DROP TABLE x; ""y" (a int)"#, &[], true)]
    #[case(Pg, "-- DROP TABLE users;\nCREATE TABLE a (id int)", &[], true)]
    #[case(Pg, "/* DROP TABLE users; */ CREATE TABLE a (id int)", &[], true)]
    #[case(Pg, "CREATE TABLE a (id int); /* ; */ -- ; DROP TABLE b\n", &[], true)]
    #[case(Pg, "CREATE FUNCTION f() RETURNS void AS $$ BEGIN DELETE FROM t; DROP TABLE x; END $$ LANGUAGE plpgsql;", &[], true)]
    #[case(Pg, "DO $body$ BEGIN EXECUTE 'DROP TABLE x'; END $body$; CREATE TABLE y (a int)", &[], true)]
    #[case(Pg, "CREATE FUNCTION f() RETURNS text AS $a$ $$ DROP TABLE x $$ $a$ LANGUAGE sql", &[], true)]
    #[case(Pg, "SELECT $1; DROP TABLE t", &[(DropTable, LosesData)], false)]
    // After the comment or string ends, the real statement is still seen.
    #[case(Pg, "/* x */ DROP TABLE users", &[(DropTable, LosesData)], false)]
    #[case(Pg, "INSERT INTO t VALUES ('--'); DROP TABLE users", &[(DropTable, LosesData)], false)]
    #[case(Pg, "INSERT INTO t VALUES ($$;$$); TRUNCATE t", &[(Truncate, LosesData)], false)]
    // CTEs.
    #[case(Pg, "WITH gone AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM gone", &[(DeleteWithoutWhere, LosesData)], false)]
    // Was: nothing to flag.
    #[case(Pg, "WITH gone AS (DELETE FROM t WHERE old RETURNING *) INSERT INTO archive SELECT * FROM gone", &[(DeleteWhere, LosesData)], false)]
    // Was: nothing to flag.
    #[case(Pg, "WITH ids AS (SELECT id FROM u WHERE bad) DELETE FROM t WHERE id IN (SELECT id FROM ids)", &[(DeleteWhere, LosesData)], false)]
    #[case(Pg, "WITH ids AS (SELECT id FROM u WHERE bad) UPDATE t SET flag = true", &[(UpdateWithoutWhere, LosesData)], false)]
    // Look-alikes that are not DML.
    #[case(Pg, "SELECT * FROM t FOR UPDATE", &[], true)]
    // Was additive: the upsert overwrites the conflicting rows.
    #[case(Pg, "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET n = excluded.n", &[(Upsert, RewritesData)], false)]
    #[case(Pg, "GRANT SELECT, UPDATE, DELETE ON t TO app", &[], true)]
    #[case(Pg, "CREATE TABLE c (p int REFERENCES p(id) ON DELETE CASCADE ON UPDATE SET NULL)", &[], true)]
    // SQLite trigger bodies do not run now, and their `;` do not split them.
    #[case(Sqlite, "CREATE TRIGGER tr AFTER INSERT ON a BEGIN UPDATE b SET n = n + 1; DELETE FROM c; END; DROP TABLE d;", &[(DropTable, LosesData)], false)]
    #[case(Pg, r#"CREATE TABLE t (begin int, "end" int); DROP TABLE x"#, &[(DropTable, LosesData)], false)]
    #[case(Pg, "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; TRUNCATE t", &[(Truncate, LosesData)], false)]
    #[case(Sqlite, "CREATE TRIGGER tr AFTER UPDATE ON a BEGIN SELECT CASE WHEN 1 THEN 2 END; END; DELETE FROM d", &[(DeleteWithoutWhere, LosesData)], false)]
    #[case(Pg, "UPDATE t SET a = 1 WHERE true", &[(UpdateWithoutWhere, LosesData)], false)]
    #[case(Pg, "ALTER TABLE t ADD COLUMN a int, ALTER COLUMN b TYPE bigint, DROP COLUMN c",
        &[(AlterColumnType, MayLoseData), (AlterColumnType, LongLock), (DropColumn, LosesData)], false)]
    #[case(Pg, "begin; Alter Table t Drop Column a, ADD COLUMN b int; delete from x; commit;",
        &[(DropColumn, LosesData), (DeleteWithoutWhere, LosesData)], false)]
    fn cases_of_the_old_classifier(
        #[case] d: Dialect,
        #[case] sql: &str,
        #[case] expected: &[(FindingKind, Effect)],
        #[case] additive: bool,
    ) {
        let c = classify(sql, d);
        assert_eq!(findings(sql, d), expected, "{sql}");
        assert_eq!(c.additive(), additive, "{sql}");
    }

    #[rstest]
    // Rewrites.
    #[case(Pg, "ALTER TABLE t ALTER COLUMN n TYPE bigint USING n::bigint", &[(AlterColumnType, RewritesData), (AlterColumnType, LongLock)])]
    #[case(Sqlite, "INSERT OR REPLACE INTO t VALUES (1, 'a')", &[(Replace, RewritesData)])]
    #[case(Sqlite, "REPLACE INTO t (id) VALUES (1)", &[(Replace, RewritesData)])]
    #[case(Pg, "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", &[])]
    #[case(Pg, "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE n = 2", &[(Upsert, RewritesData)])]
    #[case(Pg, "MERGE INTO stock s USING delivery d ON s.item = d.item WHEN MATCHED AND d.gone THEN DELETE WHEN MATCHED THEN UPDATE SET n = s.n + d.n WHEN NOT MATCHED THEN INSERT VALUES (d.item, d.n)",
        &[(MergeDelete, LosesData), (MergeUpdate, RewritesData)])]
    #[case(Pg, "SELECT CASE WHEN x THEN 1 END FROM t", &[])]
    // Long locks on PostgreSQL, none on SQLite.
    #[case(Pg, "CREATE INDEX users_email ON users (email)", &[(CreateIndex, LongLock)])]
    #[case(Pg, "CREATE UNIQUE INDEX IF NOT EXISTS users_email ON ONLY public.users (email)", &[(CreateIndex, LongLock)])]
    #[case(Sqlite, "CREATE INDEX users_email ON users (email)", &[])]
    #[case(Pg, "CREATE UNIQUE INDEX CONCURRENTLY users_email ON users (email)", &[])]
    #[case(Pg, "CREATE TABLE users (id int, email text);\nCREATE INDEX users_email ON users (email)", &[])]
    #[case(Pg, "CREATE TABLE public.users (id int);\nCREATE INDEX ON users (id)", &[])]
    // IF NOT EXISTS: the table may be an old one.
    #[case(Pg, "CREATE TABLE IF NOT EXISTS users (id int);\nCREATE INDEX ON users (id)", &[(CreateIndex, LongLock)])]
    #[case(Pg, "ALTER TABLE orders ADD CONSTRAINT orders_user FOREIGN KEY (user_id) REFERENCES users (id)", &[(AddConstraint, LongLock)])]
    #[case(Pg, "ALTER TABLE orders ADD CONSTRAINT orders_user FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID", &[])]
    #[case(Pg, "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0)", &[(AddConstraint, LongLock)])]
    #[case(Pg, "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0) NOT VALID", &[])]
    #[case(Pg, "ALTER TABLE orders ADD CONSTRAINT one UNIQUE (code)", &[(AddConstraint, LongLock)])]
    #[case(Pg, "ALTER TABLE orders ADD CONSTRAINT one UNIQUE USING INDEX orders_code", &[])]
    #[case(Pg, "CREATE TABLE o (id int); ALTER TABLE o ADD CONSTRAINT c CHECK (id > 0), ALTER COLUMN id SET NOT NULL", &[(SetNotNull, BreaksOldCode)])]
    #[case(Pg, "ALTER TABLE t ADD COLUMN token uuid DEFAULT gen_random_uuid()", &[(AddColumnRewrite, LongLock)])]
    #[case(Pg, "ALTER TABLE t ADD COLUMN n int GENERATED ALWAYS AS IDENTITY", &[(AddColumnRewrite, LongLock)])]
    #[case(Pg, "ALTER TABLE t ADD COLUMN total int GENERATED ALWAYS AS (a + b) STORED", &[(AddColumnRewrite, LongLock)])]
    #[case(Pg, "ALTER TABLE t ADD COLUMN seen timestamptz NOT NULL DEFAULT now()", &[])]
    #[case(Pg, "VACUUM FULL t", &[(VacuumFull, LongLock)])]
    #[case(Pg, "VACUUM (FULL, ANALYZE) t", &[(VacuumFull, LongLock)])]
    #[case(Pg, "VACUUM (ANALYZE) t", &[])]
    #[case(Pg, "CLUSTER t USING t_pkey", &[(Cluster, LongLock)])]
    #[case(Pg, "REINDEX TABLE t", &[(Reindex, LongLock)])]
    #[case(Pg, "REINDEX TABLE CONCURRENTLY t", &[])]
    #[case(Sqlite, "REINDEX t", &[])]
    #[case(Pg, "LOCK TABLE t", &[(LockTable, LongLock)])]
    #[case(Pg, "LOCK t, u IN SHARE MODE", &[(LockTable, LongLock)])]
    #[case(Pg, "LOCK TABLE t IN ROW EXCLUSIVE MODE", &[])]
    // Filling what this migration created overwrites nothing that was there before.
    #[case(Pg, "ALTER TABLE users ADD COLUMN email text;\nUPDATE users SET email = name || '@example.org';\nALTER TABLE users ALTER COLUMN email SET NOT NULL",
        &[(SetNotNull, BreaksOldCode), (SetNotNull, LongLock)])]
    #[case(Sqlite, "ALTER TABLE users ADD COLUMN email text;\nUPDATE users SET email = 'x', name = 'y'", &[(UpdateWithoutWhere, LosesData)])]
    #[case(Sqlite, "CREATE TABLE t (a int);\nINSERT INTO t VALUES (1);\nDELETE FROM t WHERE a = 1;\nUPDATE t SET a = 2", &[])]
    // DO blocks run now: their body's statements count.
    #[case(Pg, "DO $$ BEGIN DELETE FROM audit_log WHERE created_at < now() - interval '1 year'; END $$;", &[(DeleteWhere, LosesData)])]
    #[case(Pg, "DO $do$\nDECLARE n int;\nBEGIN\n  IF EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'old') THEN\n    DROP TABLE old;\n  END IF;\n  FOR n IN 1..3 LOOP\n    UPDATE t SET v = n WHERE id = n;\n  END LOOP;\nEND\n$do$", &[(DropTable, LosesData), (UpdateWhere, RewritesData)])]
    #[case(Pg, "DO LANGUAGE plpgsql $$ BEGIN TRUNCATE t; END $$", &[(Truncate, LosesData)])]
    #[case(Pg, "DO $$ plpy.execute('DELETE FROM t') $$ LANGUAGE plpython3u", &[])]
    // Statements in bodies that do not run now.
    #[case(Pg, "CREATE RULE r AS ON INSERT TO t DO INSTEAD (DELETE FROM u; UPDATE v SET a = 1)", &[])]
    #[case(Sqlite, "CREATE TRIGGER t AFTER DELETE ON a BEGIN DELETE FROM b WHERE b.a = old.id; END", &[])]
    // SQL that cannot be read is flagged, not passed.
    #[case(Pg, "SELECT 1;\nDROP TABLE 'oops;", &[(Unreadable, MayLoseData)])]
    fn effects_of_statements(
        #[case] d: Dialect,
        #[case] sql: &str,
        #[case] expected: &[(FindingKind, Effect)],
    ) {
        assert_eq!(findings(sql, d), expected, "{sql}");
    }

    #[test]
    fn tables_losing_rows() {
        let c = classify(
            "DELETE FROM Sessions WHERE expires < now();\n\
             TRUNCATE billing.invoices CASCADE;\n\
             DROP TABLE \"Old\";\n\
             UPDATE t SET a = 1;\n\
             MERGE INTO stock USING d ON true WHEN MATCHED THEN DELETE;\n\
             DO $$ BEGIN DELETE FROM audit_log WHERE at < now(); END $$;",
            Pg,
        );
        let got: Vec<&str> = c.tables_losing_rows.iter().map(String::as_str).collect();
        assert_eq!(
            got,
            ["Old", "audit_log", "billing.invoices", "sessions", "stock"]
        );
        let truncate = &c.findings[1];
        assert!(truncate.reason.contains("CASCADE"), "{}", truncate.reason);
        // Rows this migration inserted into its own new table are not rows lost.
        let c = classify("CREATE TABLE t (a int);\nDELETE FROM t;", Pg);
        assert!(c.tables_losing_rows.is_empty() && c.additive());
    }

    #[test]
    fn findings_name_the_statement_line_and_object() {
        let c = classify(
            "CREATE TABLE a (id int);\n-- drop the old one\nDROP TABLE public.old_users;",
            Pg,
        );
        assert_eq!(c.statements, 2);
        let f = &c.findings[0];
        assert_eq!((f.statement, f.line), (1, 3));
        assert_eq!(f.sql, "DROP TABLE public.old_users");
        assert_eq!(f.object.as_deref(), Some("public.old_users"));
        assert!(f.reason.contains("public.old_users"), "{}", f.reason);
        assert!(c.loses_data());

        let c = classify("ALTER TABLE t ALTER COLUMN price TYPE int", Pg);
        assert!(c.findings[0].reason.contains("narrowing"));
        assert_eq!(c.findings[0].object.as_deref(), Some("t.price"));
        assert!(c.findings[1].reason.contains("ACCESS EXCLUSIVE"));
        let c = classify("REINDEX INDEX users_email", Pg);
        assert!(
            c.findings[0]
                .reason
                .contains("the table of index users_email")
        );
        let c = classify("ALTER TABLE t RENAME COLUMN a TO b", Pg);
        assert!(c.findings[0].reason.contains("old name"));
        assert!(!c.loses_data() && !c.rewrites_data());

        // Inside a DO block: the line of the statement in the body.
        let c = classify(
            "SELECT 1;\nDO $$\nBEGIN\n  DELETE FROM audit_log\n    WHERE at < now();\nEND $$;",
            Pg,
        );
        let f = &c.findings[0];
        assert_eq!((f.statement, f.line), (1, 4));
        assert_eq!(f.sql, "DELETE FROM audit_log\n    WHERE at < now()");

        let c = classify("SELECT 1;\nINSERT INTO t VALUES ('never closed);", Sqlite);
        assert_eq!(c.findings[0].line, 2);
        assert!(c.findings[0].reason.contains("line 2, column 23"));
    }

    #[test]
    fn sentences_and_effects() {
        let c = classify(
            "CREATE TABLE a (id int);\n\nDELETE FROM sessions WHERE expires_at < now() - interval '30 days';\nUPDATE users SET plan = 'free' WHERE plan IS NULL;\nCREATE INDEX ON orders (user_id);",
            Pg,
        );
        assert_eq!(
            c.lines(),
            [
                "line 3: DELETE FROM sessions WHERE … loses data: deletes the matching rows of \
                 sessions; only a backup brings them back",
                "line 4: UPDATE users SET plan = 'free' WHERE plan IS NULL rewrites data: \
                 overwrites plan in the matching rows of users; reverting cannot bring the old \
                 values back, only a backup can",
                "line 5: CREATE INDEX ON orders (user_id) takes a long lock: building the index \
                 without CONCURRENTLY holds a SHARE lock on orders until the migration commits: \
                 writes to orders wait (reads go on)",
            ]
        );
        assert_eq!(c.effects(), [LosesData, RewritesData, LongLock]);
        assert!(c.loses_data() && c.rewrites_data() && !c.additive());

        let c = classify("CREATE TABLE a (id int); INSERT INTO a VALUES (1);", Pg);
        assert_eq!(c.effects(), [Adds]);
        assert!(c.lines().is_empty());
        assert_eq!(classify("-- nothing", Pg).effects(), []);
        // A change no effect names: not additive, nothing to say.
        let c = classify("DROP INDEX i", Pg);
        assert_eq!((c.effects(), c.additive()), (vec![], false));

        assert_eq!(
            serde_json::to_value(MayLoseData).unwrap(),
            serde_json::json!("may-lose-data")
        );
        assert_eq!(
            serde_json::to_value(DeleteWhere).unwrap(),
            serde_json::json!("delete-where")
        );
        for e in [
            Adds,
            RewritesData,
            LosesData,
            MayLoseData,
            LongLock,
            BreaksOldCode,
        ] {
            assert!(!e.words().is_empty());
        }
    }

    #[test]
    fn a_diesel_project_starts_additive() {
        let c = classify(crate::sql::tests::DIESEL_SETUP, Pg);
        assert_eq!(c.statements, 2);
        assert!(c.additive(), "{:#?}", c.findings);
    }
}
