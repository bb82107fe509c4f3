//! The lexer under [`crate::sql`]: sqlparser's tokenizer for the engine's dialect, its
//! tokens mapped back to byte offsets in the script, comments and whitespace dropped, and
//! the few places where the crate is wrong for our engines put right.
//!
//! What the crate gets right, and we rely on: `''` inside strings, PostgreSQL's `E'…\'…'`
//! strings, `"…""…"` identifiers, SQLite's `` `…` `` and `[…]` identifiers, `-- …` comments,
//! `/* … */` comments nested on PostgreSQL and not on SQLite (where an unterminated one runs
//! to the end of the input, as SQLite's own tokenizer has it), `$1` parameters, and
//! `$$…$$` / `$tag$…$tag$` as one token on PostgreSQL (SQLite has no dollar quotes: there
//! `$name` is a parameter, which the crate also knows).
//!
//! What it gets wrong, and what this module does about it:
//! - A byte-order mark is an identifier character to it (PostgreSQL's dialect takes any
//!   non-ASCII character as one), so `\u{feff}CREATE` would be a word: it is skipped first.
//! - Its spans are (line, column) in characters; statements need byte offsets, computed
//!   here with a cursor so a long one-line script stays linear.
//! - An unterminated dollar-quoted string or block comment is reported at the end of the
//!   input, which names the last line instead of the one to fix: errors are placed at the
//!   start of the token that failed.
//! - A `COPY … FROM stdin` payload is emitted before the `;` that precedes it, so tokens are
//!   not always in source order: statement bounds take the least start and greatest end.
//! - On SQLite it reads `]]` inside `[…]` as an escaped `]`, which SQLite does not; only SQL
//!   that SQLite rejects anyway reads differently, so this is left alone.

use std::ops::Range;

use sqlparser::dialect::{PostgreSqlDialect, SQLiteDialect};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use super::{Dialect, SqlError};

/// One token, comments and whitespace excluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tok {
    pub kind: Kind,
    /// Byte offsets in the script: `sql[start..end]` is the token as written.
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An unquoted word (keyword or identifier), upper-cased for comparing keywords.
    Word(String),
    /// A quoted identifier (`"…"`, `` `…` ``, `[…]`): its name, unquoted and unescaped.
    Quoted(String),
    /// A string literal of any kind but dollar-quoted, or a `COPY` payload.
    Str,
    /// `$tag$…$tag$`: where its body lies in the script.
    Dollar(Range<usize>),
    Number,
    /// `$1`, `?`, `:name` … (SQLite also `$name`).
    Param,
    Semi,
    LParen,
    RParen,
    Comma,
    Period,
    Eq,
    /// Any other operator or punctuation; its text is `sql[start..end]`.
    Punct,
}

impl Tok {
    /// True for the unquoted keyword `w` (upper case).
    pub fn is(&self, w: &str) -> bool {
        matches!(&self.kind, Kind::Word(u) if u == w)
    }

    /// The word upper-cased, for an unquoted word.
    pub fn word(&self) -> Option<&str> {
        match &self.kind {
            Kind::Word(u) => Some(u),
            _ => None,
        }
    }

    /// The name this token spells as an identifier: an unquoted word lower-cased (as
    /// PostgreSQL folds it; SQLite compares names case-insensitively), a quoted one as written.
    pub fn name(&self, sql: &str) -> Option<String> {
        match &self.kind {
            Kind::Word(_) => Some(sql[self.start..self.end].to_ascii_lowercase()),
            Kind::Quoted(n) => Some(n.clone()),
            _ => None,
        }
    }
}

/// Tokenizes `sql` for `dialect`.
pub(crate) fn lex(sql: &str, dialect: Dialect) -> Result<Vec<Tok>, SqlError> {
    lex_range(sql, 0..sql.len(), dialect)
}

/// Tokenizes `sql[range]` (a dollar-quoted body, say) with offsets into the whole `sql`, so
/// lines and texts of what is found inside are those of the script.
pub(crate) fn lex_range(
    sql: &str,
    range: Range<usize>,
    dialect: Dialect,
) -> Result<Vec<Tok>, SqlError> {
    let mut base = range.start;
    let mut text = &sql[range];
    if let Some(rest) = text.strip_prefix('\u{feff}') {
        base += '\u{feff}'.len_utf8();
        text = rest;
    }
    let pg = PostgreSqlDialect {};
    let lite = SQLiteDialect {};
    let d: &dyn sqlparser::dialect::Dialect = match dialect {
        Dialect::Postgres => &pg,
        Dialect::Sqlite => &lite,
    };
    let mut buf: Vec<TokenWithSpan> = Vec::new();
    let result = Tokenizer::new(d, text)
        .with_unescape(false)
        .tokenize_with_location_into_buf(&mut buf);
    let mut at = Offsets::new(text);
    if let Err(e) = result {
        // The token that failed starts where the last one lexed ends (whitespace and
        // comments are tokens too); the crate may name the end of the input instead.
        let after = buf.last().map_or(0, |t| at.byte(t.span.end));
        let skipped = text[after..]
            .char_indices()
            .find(|(_, c)| !c.is_whitespace())
            .map_or(text.len() - after, |(i, _)| i);
        let failed = (base + after + skipped).min(sql.len());
        let mut message = e.message;
        if let Some(first) = message.get(..1) {
            message = first.to_ascii_lowercase() + &message[1..];
        }
        return Err(SqlError {
            line: super::line_of(sql, failed),
            column: column_of(sql, failed),
            message,
        });
    }
    let mut out = Vec::with_capacity(buf.len() / 2);
    for t in buf {
        let kind = match t.token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::Word(w) => match w.quote_style {
                None => Kind::Word(w.value.to_ascii_uppercase()),
                Some(q) => {
                    let close = match q {
                        '[' => ']',
                        other => other,
                    };
                    // Unescaped here, as the tokenizer runs without unescaping.
                    let doubled: String = [close, close].iter().collect();
                    Kind::Quoted(w.value.replace(&doubled, &close.to_string()))
                }
            },
            Token::DollarQuotedString(_) => Kind::Dollar(0..0),
            Token::Number(..) => Kind::Number,
            Token::Placeholder(_) => Kind::Param,
            Token::SemiColon => Kind::Semi,
            Token::LParen => Kind::LParen,
            Token::RParen => Kind::RParen,
            Token::Comma => Kind::Comma,
            Token::Period => Kind::Period,
            Token::Eq => Kind::Eq,
            Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::CopyData { .. } => Kind::Str,
            _ => Kind::Punct,
        };
        let start = base + at.byte(t.span.start);
        let end = base + at.byte(t.span.end);
        let kind = match kind {
            // The body lies between the two `$tag$` delimiters, which are the same length.
            Kind::Dollar(_) => {
                let tag = sql[start + 1..end].find('$').map_or(0, |i| i + 2);
                Kind::Dollar((start + tag).min(end)..end.saturating_sub(tag).max(start))
            }
            k => k,
        };
        out.push(Tok { kind, start, end });
    }
    Ok(out)
}

/// 1-based column (in characters) of `offset` in its line.
fn column_of(sql: &str, offset: usize) -> usize {
    let line_start = sql[..offset].rfind('\n').map_or(0, |i| i + 1);
    sql[line_start..offset].chars().count() + 1
}

/// Maps the tokenizer's (line, column) locations to byte offsets. The tokenizer counts a
/// line at each `\n` and a column at each character (`\r` included), so lines start after
/// each `\n`; a cursor remembers the last position so consecutive tokens cost only the
/// characters between them.
struct Offsets<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    line: u64,
    column: u64,
    byte: usize,
}

impl<'a> Offsets<'a> {
    fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Offsets {
            text,
            line_starts,
            line: 1,
            column: 1,
            byte: 0,
        }
    }

    fn byte(&mut self, loc: Location) -> usize {
        if loc.line == 0 {
            return 0; // an empty span: no location known
        }
        if loc.line != self.line || loc.column < self.column {
            let Some(&start) = self.line_starts.get(loc.line as usize - 1) else {
                return self.text.len();
            };
            self.line = loc.line;
            self.column = 1;
            self.byte = start;
        }
        let mut chars = self.text[self.byte..].chars();
        while self.column < loc.column {
            match chars.next() {
                Some(c) => {
                    self.byte += c.len_utf8();
                    self.column += 1;
                }
                None => break,
            }
        }
        self.byte
    }
}
