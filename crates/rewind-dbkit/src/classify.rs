//! Migration safety: classifies one migration's SQL as destructive (data may be lost, or code
//! running against the old schema breaks) or additive (it only adds), without a database.
//!
//! The SQL is tokenised first, so a keyword inside a string literal (`'…'`, `E'…'`), a quoted
//! identifier (`"…"`, `` `…` ``), a dollar-quoted body (`$$…$$`, `$tag$…$tag$`) or a comment
//! (`-- …`, `/* … */`) is never mistaken for a statement. Statements are split at `;`, except
//! inside a `BEGIN … END` body of a `CREATE` statement (SQLite triggers, PostgreSQL
//! `BEGIN ATOMIC`).
//!
//! This is a lexical analysis, not a parser: it recognises the statement shapes that lose data
//! (`DROP TABLE`, `ALTER TABLE … DROP COLUMN`, `TRUNCATE`, `DELETE`/`UPDATE` without `WHERE`,
//! `DROP SCHEMA`/`DATABASE`, `DROP OWNED`), may lose data (a column type change, which may
//! narrow), or break code that still runs against the old schema (`RENAME`, `SET NOT NULL`,
//! `ADD COLUMN … NOT NULL` without a default). When in doubt it flags: a false alarm costs a
//! look, a miss costs data.
//!
//! Block comments are not nested (SQLite's rule). PostgreSQL nests them; with nested comments
//! this can only flag more, never less.

use serde::Serialize;

/// What one migration does, as far as safety goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Classification {
    /// Every statement that loses data, may lose data, or breaks the old code.
    pub destructive: Vec<Finding>,
    /// True when every statement only adds (creates objects, adds nullable or defaulted
    /// columns, inserts rows …), so code written for the previous schema keeps working and the
    /// migration can be rolled back without a restore. An empty migration is additive.
    pub additive: bool,
    /// Number of statements found.
    pub statements: usize,
}

impl Classification {
    /// True when a finding says data is (or may be) lost.
    pub fn loses_data(&self) -> bool {
        self.destructive
            .iter()
            .any(|f| matches!(f.impact, Impact::DataLoss | Impact::PotentialDataLoss))
    }
}

/// One dangerous statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Index of the statement in the migration, from 0.
    pub statement: usize,
    /// The statement's text (shortened when very long).
    pub sql: String,
    pub kind: FindingKind,
    pub impact: Impact,
    /// The table, column, schema … it applies to, when known.
    pub object: Option<String>,
    /// A sentence for a person.
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
    UpdateWithoutWhere,
    AlterColumnType,
    SetNotNull,
    AddNotNullWithoutDefault,
    Rename,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Impact {
    /// Rows or columns are gone; only a backup brings them back.
    DataLoss,
    /// Values may be truncated or rejected (e.g. a narrowing type change).
    PotentialDataLoss,
    /// No data is lost, but code written for the old schema breaks (or the migration fails on
    /// existing data).
    Incompatible,
}

/// Classifies one migration's SQL.
pub fn classify(sql: &str) -> Classification {
    let tokens = tokenize(sql);
    let statements = split_statements(&tokens);
    let mut out = Classification {
        destructive: Vec::new(),
        additive: true,
        statements: statements.len(),
    };
    for (index, toks) in statements.iter().enumerate() {
        let text = statement_text(sql, toks);
        let mut cx = StatementCx {
            index,
            text,
            toks,
            findings: &mut out.destructive,
            additive: true,
        };
        cx.analyse();
        if !cx.additive {
            out.additive = false;
        }
    }
    if !out.destructive.is_empty() {
        out.additive = false;
    }
    out
}

/// True when `sql` holds no statement: only whitespace, comments and empty statements (`;`).
/// A down migration that is empty cannot undo its up migration.
pub fn down_is_empty(sql: &str) -> bool {
    tokenize(sql).iter().all(|t| t.kind == Kind::Punct(';'))
}

/// Splits SQL into statements (comments at the edges dropped), by the same rules `classify`
/// uses.
pub fn split(sql: &str) -> Vec<String> {
    let tokens = tokenize(sql);
    split_statements(&tokens)
        .iter()
        .map(|toks| sql[toks[0].start..toks[toks.len() - 1].end].to_string())
        .collect()
}

// ---- tokens -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A bare word (keyword or identifier); `upper` holds it upper-cased.
    Word,
    /// `"…"` or `` `…` ``; `upper` holds the name, unquoted and unchanged.
    Quoted,
    /// A string literal of any kind, dollar-quoted bodies included.
    Str,
    Number,
    /// `$1`
    Param,
    Punct(char),
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    upper: String,
    start: usize,
    end: usize,
}

impl Token {
    fn is_word(&self, w: &str) -> bool {
        self.kind == Kind::Word && self.upper == w
    }
    fn is_punct(&self, c: char) -> bool {
        self.kind == Kind::Punct(c)
    }
    fn is_name(&self) -> bool {
        matches!(self.kind, Kind::Word | Kind::Quoted)
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

fn tokenize(sql: &str) -> Vec<Token> {
    let chars: Vec<(usize, char)> = sql.char_indices().collect();
    let n = chars.len();
    let at = |i: usize| -> Option<char> { chars.get(i).map(|&(_, c)| c) };
    let pos = |i: usize| -> usize { chars.get(i).map(|&(p, _)| p).unwrap_or(sql.len()) };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        let start = i;
        // Whitespace.
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // `-- comment`
        if c == '-' && at(i + 1) == Some('-') {
            while i < n && chars[i].1 != '\n' {
                i += 1;
            }
            continue;
        }
        // `/* comment */` (not nested)
        if c == '/' && at(i + 1) == Some('*') {
            i += 2;
            while i < n && !(chars[i].1 == '*' && at(i + 1) == Some('/')) {
                i += 1;
            }
            i = (i + 2).min(n);
            continue;
        }
        // 'string', with '' as an escaped quote; E'…' also takes backslash escapes.
        if c == '\'' {
            i = skip_quoted(&chars, i, '\'', false);
            out.push(tok(Kind::Str, String::new(), pos(start), pos(i)));
            continue;
        }
        if (c == 'e' || c == 'E') && at(i + 1) == Some('\'') {
            i = skip_quoted(&chars, i + 1, '\'', true);
            out.push(tok(Kind::Str, String::new(), pos(start), pos(i)));
            continue;
        }
        // "identifier" / `identifier`
        if c == '"' || c == '`' {
            i = skip_quoted(&chars, i, c, false);
            let inner_end = if i > start + 1 && chars[i - 1].1 == c {
                i - 1
            } else {
                i
            };
            let name: String = chars[start + 1..inner_end]
                .iter()
                .map(|&(_, c)| c)
                .collect();
            let dbl: String = [c, c].iter().collect();
            let name = name.replace(&dbl, &c.to_string());
            out.push(tok(Kind::Quoted, name, pos(start), pos(i)));
            continue;
        }
        // $1, $tag$…$tag$, $$…$$
        if c == '$' {
            if at(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                i += 1;
                while at(i).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                }
                out.push(tok(Kind::Param, String::new(), pos(start), pos(i)));
                continue;
            }
            let mut j = i + 1;
            if at(j).is_some_and(is_ident_start) {
                j += 1;
                while at(j).is_some_and(|d| d.is_alphanumeric() || d == '_') {
                    j += 1;
                }
            }
            if at(j) == Some('$') {
                let delim: Vec<char> = chars[i..=j].iter().map(|&(_, c)| c).collect();
                let mut k = j + 1;
                let mut end = n;
                while k + delim.len() <= n {
                    if chars[k..k + delim.len()]
                        .iter()
                        .map(|&(_, c)| c)
                        .eq(delim.iter().copied())
                    {
                        end = k + delim.len();
                        break;
                    }
                    k += 1;
                }
                i = end;
                out.push(tok(Kind::Str, String::new(), pos(start), pos(i)));
                continue;
            }
            i += 1;
            out.push(tok(Kind::Punct('$'), String::new(), pos(start), pos(i)));
            continue;
        }
        if is_ident_start(c) {
            while at(i).is_some_and(is_ident_char) {
                i += 1;
            }
            let word = sql[pos(start)..pos(i)].to_ascii_uppercase();
            out.push(tok(Kind::Word, word, pos(start), pos(i)));
            continue;
        }
        if c.is_ascii_digit() {
            while at(i).is_some_and(|d| d.is_ascii_alphanumeric() || d == '.' || d == '_') {
                i += 1;
            }
            let text = sql[pos(start)..pos(i)].to_string();
            out.push(tok(Kind::Number, text, pos(start), pos(i)));
            continue;
        }
        i += 1;
        out.push(tok(Kind::Punct(c), c.to_string(), pos(start), pos(i)));
    }
    out
}

fn tok(kind: Kind, upper: String, start: usize, end: usize) -> Token {
    Token {
        kind,
        upper,
        start,
        end,
    }
}

/// Index just past the quoted run that opens at `open` (an unterminated one runs to the end).
fn skip_quoted(chars: &[(usize, char)], open: usize, q: char, backslash: bool) -> usize {
    let n = chars.len();
    let mut i = open + 1;
    while i < n {
        let c = chars[i].1;
        if backslash && c == '\\' {
            i += 2;
            continue;
        }
        if c == q {
            if i + 1 < n && chars[i + 1].1 == q {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    n
}

fn split_statements(tokens: &[Token]) -> Vec<&[Token]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut block = 0usize;
    // A body opens at BEGIN in a CREATE … TRIGGER (SQLite) or at BEGIN ATOMIC (PostgreSQL);
    // a column that happens to be called `begin` opens nothing.
    let mut trigger = false;
    for (i, t) in tokens.iter().enumerate() {
        if i == start {
            trigger = false;
        }
        let is_create = tokens[start].is_word("CREATE");
        if is_create && t.is_word("TRIGGER") {
            trigger = true;
        }
        let body = t.is_word("BEGIN")
            && is_create
            && (trigger || tokens.get(i + 1).is_some_and(|n| n.is_word("ATOMIC")));
        if body || (block > 0 && t.is_word("CASE")) {
            block += 1;
        } else if block > 0 && t.is_word("END") {
            block -= 1;
        } else if block == 0 && t.is_punct(';') {
            if i > start {
                out.push(&tokens[start..i]);
            }
            start = i + 1;
        }
    }
    if start < tokens.len() {
        out.push(&tokens[start..]);
    }
    out
}

fn statement_text(sql: &str, toks: &[Token]) -> String {
    let text = &sql[toks[0].start..toks[toks.len() - 1].end];
    const MAX: usize = 300;
    if text.len() <= MAX {
        text.to_string()
    } else {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{} …", &text[..cut])
    }
}

// ---- analysis -----------------------------------------------------------------------------

struct StatementCx<'a> {
    index: usize,
    text: String,
    toks: &'a [Token],
    findings: &'a mut Vec<Finding>,
    additive: bool,
}

/// Statements (by their first words) that only add, or change nothing in the schema or data.
const ADDITIVE_STARTS: &[&str] = &[
    "CREATE",
    "INSERT",
    "COMMENT",
    "GRANT",
    "SELECT",
    "VALUES",
    "BEGIN",
    "COMMIT",
    "END",
    "SET",
    "START",
    "SAVEPOINT",
    "RELEASE",
    "PRAGMA",
    "ANALYZE",
    "VACUUM",
    "REFRESH",
    "EXPLAIN",
    "SHOW",
    "LOCK",
    "DO",
    "CALL",
];

impl<'a> StatementCx<'a> {
    fn flag(&mut self, kind: FindingKind, impact: Impact, object: Option<String>, reason: String) {
        self.additive = false;
        self.findings.push(Finding {
            statement: self.index,
            sql: self.text.clone(),
            kind,
            impact,
            object,
            reason,
        });
    }

    fn word(&self, i: usize) -> Option<&'a str> {
        word_at(self.toks, i)
    }

    /// Reads a possibly qualified name (`a`, `"A"."b"`) at `i`; returns it and the index after.
    fn name_at(&self, mut i: usize) -> (Option<String>, usize) {
        let mut parts = Vec::new();
        while let Some(t) = self.toks.get(i) {
            if !t.is_name() {
                break;
            }
            parts.push(match t.kind {
                Kind::Quoted => t.upper.clone(),
                _ => t.upper.to_ascii_lowercase(),
            });
            i += 1;
            if self.toks.get(i).is_some_and(|t| t.is_punct('.')) {
                i += 1;
            } else {
                break;
            }
        }
        if parts.is_empty() {
            (None, i)
        } else {
            (Some(parts.join(".")), i)
        }
    }

    /// Skips `IF EXISTS` / `IF NOT EXISTS` / `ONLY` at `i`.
    fn skip_if_exists(&self, mut i: usize) -> usize {
        if self.word(i) == Some("IF") {
            i += 1;
            if self.word(i) == Some("NOT") {
                i += 1;
            }
            if self.word(i) == Some("EXISTS") {
                i += 1;
            }
        }
        if self.word(i) == Some("ONLY") {
            i += 1;
        }
        i
    }

    /// Comma-separated list of names starting at `i`.
    fn name_list(&self, mut i: usize) -> Vec<String> {
        let mut names = Vec::new();
        loop {
            let (name, next) = self.name_at(i);
            match name {
                Some(n) => names.push(n),
                None => break,
            }
            i = next;
            if self.toks.get(i).is_some_and(|t| t.is_punct(',')) {
                i += 1;
            } else {
                break;
            }
        }
        names
    }

    fn analyse(&mut self) {
        let first = self.word(0).unwrap_or("").to_string();
        // ALTER TABLE is judged action by action (ADD COLUMN is additive).
        let alter_table = first == "ALTER" && self.word(1) == Some("TABLE");
        if !ADDITIVE_STARTS.contains(&first.as_str()) && !alter_table {
            self.additive = false;
        }
        match first.as_str() {
            "DROP" => self.drop(),
            "TRUNCATE" => {
                let mut i = 1;
                if self.word(i) == Some("TABLE") {
                    i += 1;
                }
                let i = self.skip_if_exists(i);
                let names = self.name_list(i);
                self.flag(
                    FindingKind::Truncate,
                    Impact::DataLoss,
                    join(&names),
                    format!(
                        "TRUNCATE deletes every row of {}",
                        describe(&names, "the table")
                    ),
                );
            }
            "ALTER" => self.alter(),
            "RENAME" => {
                // MySQL: RENAME TABLE a TO b
                let (name, _) = self.name_at(2);
                self.flag(
                    FindingKind::Rename,
                    Impact::Incompatible,
                    name,
                    "RENAME is incompatible: code still using the old name breaks".into(),
                );
            }
            _ => {}
        }
        // DML anywhere in the statement (CTEs included), except in the bodies of CREATE
        // statements (triggers, functions, rules), which do not run during the migration.
        if first != "CREATE" {
            self.dml();
        }
    }

    fn drop(&mut self) {
        let what = self.word(1).unwrap_or("").to_string();
        match what.as_str() {
            "TABLE" => {
                let names = self.name_list(self.skip_if_exists(2));
                self.flag(
                    FindingKind::DropTable,
                    Impact::DataLoss,
                    join(&names),
                    format!(
                        "DROP TABLE deletes {} with all its rows",
                        describe(&names, "a table")
                    ),
                );
            }
            "SCHEMA" | "DATABASE" => {
                let names = self.name_list(self.skip_if_exists(2));
                let (kind, noun) = if what == "SCHEMA" {
                    (FindingKind::DropSchema, "schema")
                } else {
                    (FindingKind::DropDatabase, "database")
                };
                self.flag(
                    kind,
                    Impact::DataLoss,
                    join(&names),
                    format!(
                        "DROP {what} deletes {} and every table in it",
                        describe(&names, &format!("a {noun}"))
                    ),
                );
            }
            "OWNED" => self.flag(
                FindingKind::DropOwned,
                Impact::DataLoss,
                None,
                "DROP OWNED deletes every object the role owns, tables included".into(),
            ),
            // DROP INDEX, VIEW, FUNCTION, TYPE, CONSTRAINT …: no rows are lost, but it is not
            // additive either (set in analyse).
            _ => {}
        }
    }

    fn alter(&mut self) {
        let what = self.word(1).unwrap_or("").to_string();
        match what.as_str() {
            "TABLE" => {}
            "INDEX" => return, // renaming an index breaks no query
            _ => {
                // ALTER VIEW/SCHEMA/TYPE/FUNCTION/SEQUENCE/MATERIALIZED VIEW … RENAME
                if let Some(r) = self.toks.iter().position(|t| t.is_word("RENAME")) {
                    let is_constraint = self.word(r + 1) == Some("CONSTRAINT");
                    if !is_constraint {
                        let name_at = if what == "MATERIALIZED" { 3 } else { 2 };
                        let (name, _) = self.name_at(self.skip_if_exists(name_at));
                        self.flag(
                            FindingKind::Rename,
                            Impact::Incompatible,
                            name,
                            format!(
                                "ALTER {what} … RENAME is incompatible: code still using the old name breaks"
                            ),
                        );
                    }
                }
                return;
            }
        }
        let (table, mut i) = self.name_at(self.skip_if_exists(2));
        let table = table.unwrap_or_default();
        // Actions, separated by commas at depth 0.
        let mut actions: Vec<(usize, usize)> = Vec::new();
        let mut depth = 0i32;
        let mut start = i;
        while i < self.toks.len() {
            let t = &self.toks[i];
            if t.is_punct('(') {
                depth += 1;
            } else if t.is_punct(')') {
                depth -= 1;
            } else if depth == 0 && t.is_punct(',') {
                actions.push((start, i));
                start = i + 1;
            }
            i += 1;
        }
        actions.push((start, self.toks.len()));
        for (s, e) in actions {
            self.alter_action(&table, s, e);
        }
    }

    fn alter_action(&mut self, table: &str, s: usize, e: usize) {
        let toks = self.toks;
        let w = move |k: usize| if k < e { word_at(toks, k) } else { None };
        match w(s) {
            Some("DROP") => {
                self.additive = false;
                let next = w(s + 1);
                match next {
                    Some("CONSTRAINT" | "INDEX" | "KEY" | "PRIMARY" | "FOREIGN" | "CHECK") => {}
                    Some("PARTITION") => {
                        let (name, _) = self.name_at(s + 2);
                        self.flag(
                            FindingKind::DropPartition,
                            Impact::DataLoss,
                            name.map(|n| format!("{table}.{n}")),
                            format!("DROP PARTITION deletes the partition's rows from {table}"),
                        );
                    }
                    _ => {
                        let mut k = s + 1;
                        if w(k) == Some("COLUMN") {
                            k += 1;
                        }
                        let (col, _) = self.name_at(self.skip_if_exists(k));
                        let col = col.unwrap_or_else(|| "?".into());
                        self.flag(
                            FindingKind::DropColumn,
                            Impact::DataLoss,
                            Some(format!("{table}.{col}")),
                            format!("DROP COLUMN deletes column {col} of {table} and its values"),
                        );
                    }
                }
            }
            Some("ALTER") => {
                self.additive = false;
                let mut k = s + 1;
                if w(k) == Some("COLUMN") {
                    k += 1;
                }
                let (col, k) = self.name_at(k);
                let col = col.unwrap_or_else(|| "?".into());
                let object = Some(format!("{table}.{col}"));
                let (a, b, c) = (w(k), w(k + 1), w(k + 2));
                if a == Some("TYPE") || (a == Some("SET") && b == Some("DATA") && c == Some("TYPE"))
                {
                    self.flag(
                        FindingKind::AlterColumnType,
                        Impact::PotentialDataLoss,
                        object,
                        format!(
                            "changing the type of {table}.{col} is potentially narrowing: values \
                             may be truncated, rounded or rejected, and the old type may not hold \
                             the new values on the way back"
                        ),
                    );
                } else if a == Some("SET") && b == Some("NOT") && c == Some("NULL") {
                    self.flag(
                        FindingKind::SetNotNull,
                        Impact::Incompatible,
                        object,
                        format!(
                            "SET NOT NULL on {table}.{col} is incompatible: it fails on existing \
                             NULLs, and old code that leaves the column out breaks"
                        ),
                    );
                }
            }
            // MySQL: MODIFY [COLUMN] name type / CHANGE [COLUMN] old new type
            Some(kw @ ("MODIFY" | "CHANGE")) => {
                let kw = kw.to_string();
                let mut k = s + 1;
                if w(k) == Some("COLUMN") {
                    k += 1;
                }
                let (col, _) = self.name_at(k);
                let col = col.unwrap_or_else(|| "?".into());
                self.flag(
                    FindingKind::AlterColumnType,
                    Impact::PotentialDataLoss,
                    Some(format!("{table}.{col}")),
                    format!(
                        "{kw} of {table}.{col} may change its type, which is potentially narrowing"
                    ),
                );
            }
            Some("ADD") => {
                let mut k = s + 1;
                match w(k) {
                    Some(
                        "CONSTRAINT" | "PRIMARY" | "UNIQUE" | "FOREIGN" | "CHECK" | "INDEX" | "KEY"
                        | "EXCLUDE",
                    ) => {
                        // A new constraint restricts what old code may write.
                        self.additive = false;
                        return;
                    }
                    Some("COLUMN") => k += 1,
                    _ => {}
                }
                let (col, _) = self.name_at(self.skip_if_exists(k));
                let col = col.unwrap_or_else(|| "?".into());
                let range = &self.toks[s..e];
                let not_null = range
                    .windows(2)
                    .any(|p| p[0].is_word("NOT") && p[1].is_word("NULL"));
                let primary = range
                    .windows(2)
                    .any(|p| p[0].is_word("PRIMARY") && p[1].is_word("KEY"));
                let filled = range.iter().any(|t| {
                    t.kind == Kind::Word
                        && matches!(
                            t.upper.as_str(),
                            "DEFAULT"
                                | "GENERATED"
                                | "SERIAL"
                                | "BIGSERIAL"
                                | "SMALLSERIAL"
                                | "SERIAL4"
                                | "SERIAL8"
                                | "SERIAL2"
                                | "AUTOINCREMENT"
                                | "AUTO_INCREMENT"
                        )
                });
                if (not_null || primary) && !filled {
                    self.flag(
                        FindingKind::AddNotNullWithoutDefault,
                        Impact::Incompatible,
                        Some(format!("{table}.{col}")),
                        format!(
                            "ADD COLUMN {col} NOT NULL without DEFAULT is incompatible: it fails \
                             on a table with rows, and old code that does not set {col} breaks"
                        ),
                    );
                }
            }
            Some("RENAME") => {
                if w(s + 1) == Some("CONSTRAINT") {
                    self.additive = false;
                    return;
                }
                let (what, object) = if w(s + 1) == Some("TO") {
                    let (new, _) = self.name_at(s + 2);
                    (
                        format!("renaming table {table} to {}", new.unwrap_or_default()),
                        table.to_string(),
                    )
                } else {
                    let mut k = s + 1;
                    if w(k) == Some("COLUMN") {
                        k += 1;
                    }
                    let (col, _) = self.name_at(k);
                    let col = col.unwrap_or_else(|| "?".into());
                    (
                        format!("renaming column {table}.{col}"),
                        format!("{table}.{col}"),
                    )
                };
                self.flag(
                    FindingKind::Rename,
                    Impact::Incompatible,
                    Some(object),
                    format!("{what} is incompatible: code still using the old name breaks"),
                );
            }
            _ => self.additive = false,
        }
    }

    /// DELETE and UPDATE without WHERE, wherever they stand (top level or in a CTE).
    fn dml(&mut self) {
        for i in 0..self.toks.len() {
            let prev = i.checked_sub(1).map(|p| &self.toks[p]);
            let prev_excludes = prev.is_some_and(|p| {
                p.is_punct(',')
                    || (p.kind == Kind::Word
                        && matches!(
                            p.upper.as_str(),
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
                        ))
            });
            if prev_excludes {
                continue;
            }
            let t = &self.toks[i];
            let is_delete = t.is_word("DELETE") && self.word(i + 1) == Some("FROM");
            let is_update = t.is_word("UPDATE");
            if !is_delete && !is_update {
                continue;
            }
            // The scope ends where the enclosing parenthesis closes, or at the statement's end.
            let mut depth = 0i32;
            let mut has_set = false;
            let mut where_at = None;
            let mut end = self.toks.len();
            for (k, t) in self.toks.iter().enumerate().skip(i + 1) {
                if t.is_punct('(') {
                    depth += 1;
                } else if t.is_punct(')') {
                    depth -= 1;
                    if depth < 0 {
                        end = k;
                        break;
                    }
                } else if depth == 0 && t.is_word("SET") {
                    has_set = true;
                } else if depth == 0 && t.is_word("WHERE") && where_at.is_none() {
                    where_at = Some(k);
                }
            }
            if is_update && !has_set {
                continue; // not an UPDATE statement (e.g. FOR NO KEY UPDATE)
            }
            let table_at = if is_delete { i + 2 } else { i + 1 };
            let mut k = table_at;
            if is_update && self.word(k) == Some("OR") {
                k += 2; // SQLite: UPDATE OR REPLACE t
            }
            let (table, _) = self.name_at(self.skip_if_exists(k));
            let (verb, kind) = if is_delete {
                ("DELETE", FindingKind::DeleteWithoutWhere)
            } else {
                ("UPDATE", FindingKind::UpdateWithoutWhere)
            };
            let table_desc = table.clone().unwrap_or_else(|| "the table".into());
            match where_at {
                None => {
                    let what = if is_delete {
                        format!("deletes every row of {table_desc}")
                    } else {
                        format!("overwrites the column(s) in every row of {table_desc}")
                    };
                    self.flag(
                        kind,
                        Impact::DataLoss,
                        table,
                        format!("{verb} without WHERE {what}"),
                    );
                }
                Some(w) if self.always_true(w + 1, end) => {
                    self.flag(
                        kind,
                        Impact::DataLoss,
                        table,
                        format!("{verb} on {table_desc} with a WHERE clause that is always true"),
                    );
                }
                Some(_) => {}
            }
        }
    }

    /// Is the condition from `s` (up to RETURNING/ORDER/LIMIT or `e`) `TRUE` or `1 = 1`?
    fn always_true(&self, s: usize, e: usize) -> bool {
        let cond: Vec<&Token> = self.toks[s..e]
            .iter()
            .take_while(|t| {
                !(t.kind == Kind::Word
                    && matches!(t.upper.as_str(), "RETURNING" | "ORDER" | "LIMIT"))
            })
            .collect();
        match cond.as_slice() {
            [t] => t.is_word("TRUE"),
            [a, eq, b] => {
                eq.is_punct('=')
                    && a.kind == Kind::Number
                    && b.kind == Kind::Number
                    && a.upper == b.upper
            }
            _ => false,
        }
    }
}

fn word_at(toks: &[Token], i: usize) -> Option<&str> {
    toks.get(i)
        .filter(|t| t.kind == Kind::Word)
        .map(|t| t.upper.as_str())
}

fn join(names: &[String]) -> Option<String> {
    if names.is_empty() {
        None
    } else {
        Some(names.join(", "))
    }
}

fn describe(names: &[String], fallback: &str) -> String {
    match names.len() {
        0 => fallback.to_string(),
        1 => names[0].clone(),
        _ => names.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FindingKind::*;

    /// (sql, expected finding kinds in order, additive)
    const CASES: &[(&str, &[FindingKind], bool)] = &[
        // plain destructive statements
        ("DROP TABLE users;", &[DropTable], false),
        (
            "drop table if exists public.users, orders cascade",
            &[DropTable],
            false,
        ),
        ("ALTER TABLE users DROP COLUMN email;", &[DropColumn], false),
        ("ALTER TABLE users DROP email", &[DropColumn], false),
        (
            "alter table only users drop column if exists email",
            &[DropColumn],
            false,
        ),
        (
            "ALTER TABLE users DROP CONSTRAINT users_email_key",
            &[],
            false,
        ),
        ("TRUNCATE users", &[Truncate], false),
        ("TRUNCATE TABLE a, b RESTART IDENTITY", &[Truncate], false),
        ("DELETE FROM sessions", &[DeleteWithoutWhere], false),
        ("DELETE FROM sessions WHERE expires_at < now()", &[], false),
        ("DELETE FROM t WHERE 1=1", &[DeleteWithoutWhere], false),
        (
            "UPDATE users SET active = false",
            &[UpdateWithoutWhere],
            false,
        ),
        ("UPDATE users SET active = false WHERE id = 1", &[], false),
        (
            "UPDATE users SET n = (SELECT count(*) FROM o WHERE o.u = users.id)",
            &[UpdateWithoutWhere],
            false,
        ),
        ("UPDATE t SET a = 1 FROM u WHERE t.id = u.id", &[], false),
        (
            "ALTER TABLE t ALTER COLUMN price TYPE integer",
            &[AlterColumnType],
            false,
        ),
        (
            "ALTER TABLE t ALTER price SET DATA TYPE varchar(10)",
            &[AlterColumnType],
            false,
        ),
        (
            "ALTER TABLE t ALTER COLUMN email SET NOT NULL",
            &[SetNotNull],
            false,
        ),
        ("ALTER TABLE t ALTER COLUMN email DROP NOT NULL", &[], false),
        (
            "ALTER TABLE t ADD COLUMN c int NOT NULL",
            &[AddNotNullWithoutDefault],
            false,
        ),
        (
            "ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0",
            &[],
            true,
        ),
        ("ALTER TABLE t ADD COLUMN c text", &[], true),
        ("ALTER TABLE t ADD COLUMN id bigserial NOT NULL", &[], true),
        ("DROP SCHEMA billing CASCADE", &[DropSchema], false),
        ("DROP DATABASE IF EXISTS old", &[DropDatabase], false),
        ("DROP OWNED BY app", &[DropOwned], false),
        ("ALTER TABLE users RENAME TO accounts", &[Rename], false),
        (
            "ALTER TABLE users RENAME COLUMN name TO full_name",
            &[Rename],
            false,
        ),
        ("ALTER TABLE users RENAME CONSTRAINT a TO b", &[], false),
        ("ALTER VIEW v RENAME TO w", &[Rename], false),
        ("RENAME TABLE a TO b", &[Rename], false),
        ("ALTER INDEX i RENAME TO j", &[], false),
        ("DROP INDEX users_email_idx", &[], false),
        (
            "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;",
            &[],
            false,
        ),
        // additive
        (
            "CREATE TABLE t (id int primary key, name text not null)",
            &[],
            true,
        ),
        (
            "CREATE INDEX CONCURRENTLY i ON t (a); INSERT INTO t VALUES (1)",
            &[],
            true,
        ),
        ("", &[], true),
        ("-- nothing here\n/* still nothing */", &[], true),
        // keywords in strings, identifiers, comments, dollar quotes
        (
            "INSERT INTO log (msg) VALUES ('DROP TABLE users; DELETE FROM x')",
            &[],
            true,
        ),
        (
            "INSERT INTO log VALUES ('it''s; DROP TABLE users')",
            &[],
            true,
        ),
        (
            "INSERT INTO log VALUES (E'\\'; DROP TABLE users; --')",
            &[],
            true,
        ),
        ("CREATE TABLE \"DROP TABLE x; \"\"y\" (a int)", &[], true),
        ("-- DROP TABLE users;\nCREATE TABLE a (id int)", &[], true),
        ("/* DROP TABLE users; */ CREATE TABLE a (id int)", &[], true),
        (
            "CREATE TABLE a (id int); /* ; */ -- ; DROP TABLE b\n",
            &[],
            true,
        ),
        (
            "CREATE FUNCTION f() RETURNS void AS $$ BEGIN DELETE FROM t; DROP TABLE x; END $$ LANGUAGE plpgsql;",
            &[],
            true,
        ),
        (
            "DO $body$ BEGIN EXECUTE 'DROP TABLE x'; END $body$; CREATE TABLE y (a int)",
            &[],
            true,
        ),
        (
            "CREATE FUNCTION f() RETURNS text AS $a$ $$ DROP TABLE x $$ $a$ LANGUAGE sql",
            &[],
            true,
        ),
        ("SELECT $1; DROP TABLE t", &[DropTable], false),
        // after the comment / string ends, the real statement is still seen
        ("/* x */ DROP TABLE users", &[DropTable], false),
        (
            "INSERT INTO t VALUES ('--'); DROP TABLE users",
            &[DropTable],
            false,
        ),
        (
            "INSERT INTO t VALUES ($$;$$); TRUNCATE t",
            &[Truncate],
            false,
        ),
        // CTEs
        (
            "WITH gone AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM gone",
            &[DeleteWithoutWhere],
            false,
        ),
        (
            "WITH gone AS (DELETE FROM t WHERE old RETURNING *) INSERT INTO archive SELECT * FROM gone",
            &[],
            false,
        ),
        (
            "WITH ids AS (SELECT id FROM u WHERE bad) DELETE FROM t WHERE id IN (SELECT id FROM ids)",
            &[],
            false,
        ),
        (
            "WITH ids AS (SELECT id FROM u WHERE bad) UPDATE t SET flag = true",
            &[UpdateWithoutWhere],
            false,
        ),
        // look-alikes that are not DML
        ("SELECT * FROM t FOR UPDATE", &[], true),
        (
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
            &[],
            true,
        ),
        ("GRANT SELECT, UPDATE, DELETE ON t TO app", &[], true),
        (
            "CREATE TABLE c (p int REFERENCES p(id) ON DELETE CASCADE ON UPDATE SET NULL)",
            &[],
            true,
        ),
        // SQLite trigger body: semicolons inside BEGIN … END do not split it
        (
            "CREATE TRIGGER tr AFTER INSERT ON a BEGIN UPDATE b SET n = n + 1; DELETE FROM c; END; DROP TABLE d;",
            &[DropTable],
            false,
        ),
        // a column called `begin` opens no body
        (
            "CREATE TABLE t (begin int, \"end\" int); DROP TABLE x",
            &[DropTable],
            false,
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; TRUNCATE t",
            &[Truncate],
            false,
        ),
        (
            "CREATE TRIGGER tr AFTER UPDATE ON a BEGIN SELECT CASE WHEN 1 THEN 2 END; END; DELETE FROM d",
            &[DeleteWithoutWhere],
            false,
        ),
        (
            "UPDATE t SET a = 1 WHERE true",
            &[UpdateWithoutWhere],
            false,
        ),
        (
            "ALTER TABLE t ADD COLUMN a int, ALTER COLUMN b TYPE bigint, DROP COLUMN c",
            &[AlterColumnType, DropColumn],
            false,
        ),
        // multiple statements, several findings, case-insensitive
        (
            "begin; Alter Table t Drop Column a, ADD COLUMN b int; delete from x; commit;",
            &[DropColumn, DeleteWithoutWhere],
            false,
        ),
    ];

    #[test]
    fn table_of_cases() {
        assert!(CASES.len() >= 25);
        let mut failures = Vec::new();
        for (sql, kinds, additive) in CASES {
            let c = classify(sql);
            let got: Vec<FindingKind> = c.destructive.iter().map(|f| f.kind).collect();
            if got != *kinds || c.additive != *additive {
                failures.push(format!(
                    "{sql:?}\n    expected {kinds:?} additive={additive}\n    got      {got:?} additive={}",
                    c.additive
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn findings_name_the_statement_and_object() {
        let c =
            classify("CREATE TABLE a (id int);\n-- drop the old one\nDROP TABLE public.old_users;");
        assert_eq!(c.statements, 2);
        let f = &c.destructive[0];
        assert_eq!(f.statement, 1);
        assert_eq!(f.sql, "DROP TABLE public.old_users");
        assert_eq!(f.object.as_deref(), Some("public.old_users"));
        assert_eq!(f.impact, Impact::DataLoss);
        assert!(f.reason.contains("public.old_users"), "{}", f.reason);
        assert!(c.loses_data());

        let c = classify("ALTER TABLE t ALTER COLUMN price TYPE int");
        assert!(c.destructive[0].reason.contains("narrowing"));
        assert_eq!(c.destructive[0].object.as_deref(), Some("t.price"));
        let c = classify("ALTER TABLE t RENAME COLUMN a TO b");
        assert!(c.destructive[0].reason.contains("incompatible"));
        assert!(!c.loses_data());
    }

    #[test]
    fn splits_statements() {
        let parts =
            split("INSERT INTO t VALUES ('a;b'); -- c;\nSELECT $x$;$x$ ;; /* ; */ SELECT 1");
        assert_eq!(
            parts,
            vec!["INSERT INTO t VALUES ('a;b')", "SELECT $x$;$x$", "SELECT 1"]
        );
    }

    #[test]
    fn empty_down_migrations() {
        assert!(down_is_empty(""));
        assert!(down_is_empty("  \n\t"));
        assert!(down_is_empty("-- irreversible\n/* nothing\n to do */ ;"));
        assert!(!down_is_empty("DROP TABLE t;"));
        assert!(!down_is_empty("-- comment\nSELECT 1"));
    }
}
