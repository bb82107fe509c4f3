//! A database's catalog as sorted lines of text and their BLAKE3 fingerprint: what a restore
//! must bring back besides the rows (schemas, owners, privileges, default privileges,
//! comments, columns, constraints, indexes, triggers, functions, types, extensions).
//!
//! A backup records it in the same snapshot as its dump (PostgreSQL) or from the snapshot
//! file itself (SQLite); the data checks after a restore describe the restored database the
//! same way and compare line by line, so a difference is named, not just detected.
//!
//! Every line is `SUBJECT: ATTRIBUTE VALUE`, e.g. `schema public: ACL {=U/pg_database_owner,
//! pg_database_owner=UC/pg_database_owner}`. Values that do not depend on object ids or on the
//! session: names are schema-qualified (descriptions run with an empty `search_path`), ACLs
//! are sorted item by item and a missing ACL is shown as the default it stands for, a
//! column's position counts live columns only (a restore renumbers around dropped ones), long
//! texts (function bodies, view definitions) are shown as a hash. A text PostgreSQL prints
//! from an expression (a view's definition, a CHECK, a default …) is described as it reads
//! once a restore has read it back, which is not always as it was printed (see
//! [`RawCatalog::reread`]).

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row, SqlitePool};

use crate::error::{Result, db};

/// A catalog description.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// BLAKE3 of the lines, each followed by a newline; lowercase hex.
    pub fingerprint: String,
    /// Sorted, without duplicates.
    pub lines: Vec<String>,
    /// PostgreSQL: every role the description names (owners, grantees, grantors, roles with
    /// default privileges). A restore needs them all to exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl Catalog {
    pub fn new(mut lines: Vec<String>, mut roles: Vec<String>) -> Catalog {
        lines.sort();
        lines.dedup();
        roles.sort();
        roles.dedup();
        Catalog {
            fingerprint: fingerprint(&lines),
            lines,
            roles,
        }
    }
}

/// BLAKE3 of `lines`, each followed by a newline.
pub fn fingerprint(lines: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// One difference between a recorded catalog and the one found now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogDiff {
    /// The same subject and attribute, another value.
    Changed {
        key: String,
        recorded: String,
        now: String,
    },
    /// A line found now that the recorded catalog does not have.
    Added(String),
    /// A recorded line not found now.
    Missing(String),
}

impl std::fmt::Display for CatalogDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogDiff::Changed { key, recorded, now } => {
                write!(f, "{key} {now} differs from the backup's {recorded}")
            }
            CatalogDiff::Added(line) => write!(f, "{line} (not in the backup)"),
            CatalogDiff::Missing(line) => write!(f, "{line} is missing (the backup has it)"),
        }
    }
}

/// Splits a line into its key (`SUBJECT: ATTRIBUTE`) and its value. The subject ends at the
/// first `": "` outside double quotes (identifiers are quoted when they need it).
fn split_line(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i + 1 < bytes.len() {
        match bytes[i] {
            b'"' => quoted = !quoted,
            b':' if !quoted && bytes[i + 1] == b' ' => {
                let rest = &line[i + 2..];
                let attr_end = rest.find(' ').map_or(line.len(), |k| i + 2 + k);
                let value = line.get(attr_end + 1..).unwrap_or("");
                return (&line[..attr_end], value);
            }
            _ => {}
        }
        i += 1;
    }
    (line, "")
}

/// The differences between `recorded` and `now` (both sorted), in key order. A key with one
/// value on each side that differs is [`CatalogDiff::Changed`]; everything else is added or
/// missing.
pub fn compare(recorded: &[String], now: &[String]) -> Vec<CatalogDiff> {
    use std::collections::{BTreeMap, BTreeSet};
    let group = |lines: &[String]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for l in lines {
            let (k, v) = split_line(l);
            m.entry(k.to_string()).or_default().insert(v.to_string());
        }
        m
    };
    let (a, b) = (group(recorded), group(now));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let line = |k: &str, v: &str| {
        if v.is_empty() {
            k.to_string()
        } else {
            format!("{k} {v}")
        }
    };
    let mut out = Vec::new();
    for k in keys {
        let empty = BTreeSet::new();
        let (was, is) = (a.get(k).unwrap_or(&empty), b.get(k).unwrap_or(&empty));
        if was == is {
            continue;
        }
        if was.len() == 1 && is.len() == 1 {
            out.push(CatalogDiff::Changed {
                key: k.clone(),
                recorded: was.iter().next().cloned().unwrap_or_default(),
                now: is.iter().next().cloned().unwrap_or_default(),
            });
            continue;
        }
        for v in is.difference(was) {
            out.push(CatalogDiff::Added(line(k, v)));
        }
        for v in was.difference(is) {
            out.push(CatalogDiff::Missing(line(k, v)));
        }
    }
    out
}

/// A shortened BLAKE3 of a long text (function bodies, view definitions).
fn short_hash(text: &str) -> String {
    format!("blake3:{}", &blake3::hash(text.as_bytes()).to_hex()[..16])
}

// ---- PostgreSQL ---------------------------------------------------------------------------

/// A namespace that holds user objects (not the catalogs, not TOAST or temporary schemas).
const USER_NS: &str = "(SELECT oid FROM pg_namespace
                         WHERE nspname NOT IN ('pg_catalog', 'information_schema')
                           AND nspname NOT LIKE 'pg\\_%')";

/// `{acl}` as text with its items sorted; NULL (never granted or revoked) is shown as the
/// default it stands for, `acldefault({kind}, {owner})` (`kind` is an SQL expression).
fn acl(acl: &str, kind: &str, owner: &str) -> String {
    format!(
        "(SELECT coalesce('{{' || string_agg(a::text, ',' ORDER BY a::text) || '}}', '{{}}')
            FROM unnest(coalesce({acl}, acldefault({kind}, {owner}))) a)"
    )
}

/// `{acl}` as text with its items sorted, NULL when there is none (columns, default
/// privileges: no default to stand for).
fn acl_or_null(acl: &str) -> String {
    format!(
        "(SELECT '{{' || string_agg(a::text, ',' ORDER BY a::text) || '}}' FROM unnest({acl}) a)"
    )
}

/// Not a member of an extension (those come with `CREATE EXTENSION`).
fn not_ext(class: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{class}'::regclass
                        AND e.objid = {oid} AND e.deptype = 'e')"
    )
}

/// A policy's expressions, of a `pg_policy p`: in its description, and as re-read.
const POLICY_QUALS: &str = "concat_ws(' ',
    'using (' || pg_get_expr(p.polqual, p.polrelid) || ')',
    'with check (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')')";

/// The columns of a query that re-reads nothing (see [`pg_queries`]).
const NO_REREAD: &str = "NULL::text, NULL::text[], NULL::text, NULL::text";

/// The queries, each giving (subject, attribute, value or NULL, hash the value?) and, for a
/// value holding a text PostgreSQL printed from an expression, how to re-read that text (see
/// [`RawCatalog::reread`]): the kind of re-reading (a [`reread_plan`]), its arguments, and the
/// part of the value before the text and the text itself.
fn pg_queries(server_version_num: i32) -> Vec<(&'static str, String)> {
    let rel_kind = "CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
                    WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                    WHEN 'S' THEN 'sequence' ELSE 'foreign table' END";
    let sql_body = if server_version_num >= 140000 {
        "CASE WHEN p.prosqlbody IS NOT NULL THEN pg_get_function_sqlbody(p.oid) END"
    } else {
        "NULL"
    };
    // A domain's base type as `CREATE DOMAIN … AS` takes it (for the re-reading), of a
    // `pg_type t`.
    let domain_base = "format_type(t.typbasetype, t.typtypmod)
                       || CASE WHEN t.typcollation <> 0 AND t.typcollation <>
                                    (SELECT b.typcollation FROM pg_type b WHERE b.oid = t.typbasetype)
                               THEN ' COLLATE ' || t.typcollation::regcollation::text ELSE '' END";
    let owner = |col: &str| format!("quote_ident(pg_get_userbyid({col}))");
    let comment = |oid: &str, cat: &str| format!("quote_literal(obj_description({oid}, '{cat}'))");
    vec![
        (
            "schemas",
            format!(
                "SELECT 'schema ' || quote_ident(n.nspname), x.attr, x.value, false, {NO_REREAD}
                   FROM pg_namespace n
                  CROSS JOIN LATERAL (VALUES
                        ('owner', {}),
                        ('ACL', {}),
                        ('comment', coalesce({}, '(none)'))) x(attr, value)
                  WHERE n.oid IN {USER_NS}",
                owner("n.nspowner"),
                acl("n.nspacl", "'n'", "n.nspowner"),
                comment("n.oid", "pg_namespace"),
            ),
        ),
        (
            "relations",
            format!(
                "SELECT {rel_kind} || ' ' || c.oid::regclass::text, x.attr, x.value, x.hashed,
                        CASE WHEN x.attr = 'definition' THEN 'view'
                             WHEN x.attr = 'partition-key' AND pt.partexprs IS NOT NULL
                             THEN 'partition key' END,
                        CASE WHEN x.attr = 'definition' THEN ARRAY[x.value]
                             WHEN x.attr = 'partition-key'
                             THEN ARRAY[c.oid::regclass::text, x.value] END,
                        '', x.value
                   FROM pg_class c
                   LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
                  CROSS JOIN LATERAL (VALUES
                        ('owner', {}, false),
                        ('ACL', {}, false),
                        ('comment', {}, false),
                        ('options', array_to_string(c.reloptions, ', '), false),
                        ('persistence', CASE c.relpersistence WHEN 'u' THEN 'unlogged' END, false),
                        ('row-security', CASE WHEN c.relrowsecurity THEN
                            CASE WHEN c.relforcerowsecurity THEN 'enabled, forced' ELSE 'enabled' END
                            END, false),
                        ('inherits', CASE WHEN NOT c.relispartition THEN
                            (SELECT string_agg(i.inhparent::regclass::text, ', ' ORDER BY i.inhseqno)
                               FROM pg_inherits i WHERE i.inhrelid = c.oid) END, false),
                        ('partition-of', CASE WHEN c.relispartition THEN
                            (SELECT i.inhparent::regclass::text FROM pg_inherits i
                              WHERE i.inhrelid = c.oid)
                            || ' ' || pg_get_expr(c.relpartbound, c.oid) END, false),
                        ('partition-key', CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END, false),
                        ('definition', CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END, true),
                        ('sequence', (SELECT format_type(s.seqtypid, NULL) || ' start ' || s.seqstart
                                   || ' increment ' || s.seqincrement || ' min ' || s.seqmin
                                   || ' max ' || s.seqmax || ' cache ' || s.seqcache
                                   || CASE WHEN s.seqcycle THEN ' cycle' ELSE ' no cycle' END
                              FROM pg_sequence s WHERE s.seqrelid = c.oid), false),
                        ('owned-by', CASE WHEN c.relkind = 'S' THEN
                            (SELECT d.refobjid::regclass::text || '.' || quote_ident(a.attname)
                               FROM pg_depend d
                               JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                              WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
                                AND d.deptype IN ('a', 'i')
                              LIMIT 1) END, false)
                        ) x(attr, value, hashed)
                  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                    AND c.relnamespace IN {USER_NS}
                    AND {}",
                owner("c.relowner"),
                acl(
                    "c.relacl",
                    "(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::\"char\"",
                    "c.relowner"
                ),
                comment("c.oid", "pg_class"),
                not_ext("pg_class", "c.oid"),
            ),
        ),
        (
            "columns",
            format!(
                "SELECT 'column ' || c.oid::regclass::text || '.' || quote_ident(a.attname),
                        x.attr, x.value, false,
                        CASE WHEN x.attr = 'type' AND e.expr IS NOT NULL THEN
                            CASE WHEN a.attgenerated <> '' THEN 'generated' ELSE 'default' END END,
                        CASE WHEN x.attr = 'type' AND e.expr IS NOT NULL THEN
                            CASE WHEN a.attgenerated <> '' THEN
                                ARRAY[c.oid::regclass::text, quote_ident(a.attname),
                                      format_type(a.atttypid, a.atttypmod), e.expr,
                                      CASE a.attgenerated WHEN 's' THEN 'STORED' ELSE 'VIRTUAL' END]
                            ELSE ARRAY[c.oid::regclass::text, quote_ident(a.attname), e.expr] END END,
                        e.head, e.expr
                   FROM pg_attribute a
                   JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_type t ON t.oid = a.atttypid
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  CROSS JOIN LATERAL (SELECT
                        pg_get_expr(d.adbin, d.adrelid) AS expr,
                        format_type(a.atttypid, a.atttypmod)
                            || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                            || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                                    THEN ' collate ' || a.attcollation::regcollation::text ELSE '' END
                            || CASE a.attidentity WHEN 'a' THEN ' generated always as identity'
                                    WHEN 'd' THEN ' generated by default as identity' ELSE '' END
                            || CASE WHEN a.attgenerated <> '' THEN ' generated always as ('
                                    WHEN d.adbin IS NOT NULL THEN ' default ' ELSE '' END AS head,
                        CASE WHEN a.attgenerated <> '' THEN ')'
                                 || CASE a.attgenerated WHEN 's' THEN ' stored' ELSE ' virtual' END
                             ELSE '' END AS tail) e
                  CROSS JOIN LATERAL (VALUES
                        ('type', e.head || coalesce(e.expr, '') || e.tail),
                        ('position', (SELECT count(*) FROM pg_attribute b
                                       WHERE b.attrelid = a.attrelid AND b.attnum > 0
                                         AND NOT b.attisdropped AND b.attnum <= a.attnum)::text),
                        ('ACL', {}),
                        ('comment', quote_literal(col_description(c.oid, a.attnum)))
                        ) x(attr, value)
                  WHERE a.attnum > 0 AND NOT a.attisdropped
                    AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                    AND c.relnamespace IN {USER_NS}
                    AND {}",
                acl_or_null("a.attacl"),
                not_ext("pg_class", "c.oid"),
            ),
        ),
        (
            "constraints",
            format!(
                "SELECT 'constraint ' || CASE WHEN con.conrelid <> 0 THEN con.conrelid::regclass::text
                                              ELSE 'on domain ' || con.contypid::regtype::text END
                        || '.' || quote_ident(con.conname), x.attr, x.value, false,
                        CASE WHEN x.attr = 'definition' AND con.contype IN ('c', 'x') THEN
                            CASE WHEN con.conrelid <> 0 THEN 'table constraint'
                                 ELSE 'domain constraint' END END,
                        CASE WHEN x.attr = 'definition' AND con.contype IN ('c', 'x') THEN
                            CASE WHEN con.conrelid <> 0 THEN
                                ARRAY[con.conrelid::regclass::text, quote_ident(con.conname), x.value]
                            ELSE ARRAY[(SELECT {domain_base} FROM pg_type t WHERE t.oid = con.contypid),
                                       quote_ident(con.conname), x.value] END END,
                        '', x.value
                   FROM pg_constraint con
                  CROSS JOIN LATERAL (VALUES
                        ('definition', pg_get_constraintdef(con.oid)),
                        ('comment', {})) x(attr, value)
                  WHERE con.connamespace IN {USER_NS}
                    AND (con.conrelid = 0 OR {})
                    AND (con.contypid = 0 OR {})",
                comment("con.oid", "pg_constraint"),
                not_ext("pg_class", "con.conrelid"),
                not_ext("pg_type", "con.contypid"),
            ),
        ),
        (
            "indexes",
            format!(
                "SELECT 'index ' || i.indexrelid::regclass::text, x.attr, x.value, false,
                        CASE WHEN x.attr = 'definition'
                              AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL) THEN 'index' END,
                        ARRAY[i.indrelid::regclass::text,
                              CASE WHEN t.relkind = 'p' THEN 'ONLY ' ELSE '' END
                                  || i.indrelid::regclass::text,
                              x.value],
                        '', x.value
                   FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indexrelid
                   JOIN pg_class t ON t.oid = i.indrelid
                  CROSS JOIN LATERAL (VALUES
                        ('definition', pg_get_indexdef(i.indexrelid)),
                        ('options', array_to_string(c.reloptions, ', ')),
                        ('clustered', CASE WHEN i.indisclustered THEN 'yes' END),
                        ('comment', {})) x(attr, value)
                  WHERE c.relnamespace IN {USER_NS}
                    AND {}",
                comment("c.oid", "pg_class"),
                not_ext("pg_class", "i.indrelid"),
            ),
        ),
        (
            "triggers",
            format!(
                "SELECT 'trigger ' || t.tgrelid::regclass::text || '.' || quote_ident(t.tgname),
                        x.attr, x.value, false,
                        CASE WHEN x.attr = 'definition' AND t.tgqual IS NOT NULL THEN 'trigger' END,
                        ARRAY[t.tgrelid::regclass::text, x.value], '', x.value
                   FROM pg_trigger t
                   JOIN pg_class c ON c.oid = t.tgrelid
                  CROSS JOIN LATERAL (VALUES
                        ('definition', pg_get_triggerdef(t.oid)),
                        ('enabled', CASE t.tgenabled WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica'
                                                     WHEN 'A' THEN 'always' END),
                        ('comment', {})) x(attr, value)
                  WHERE NOT t.tgisinternal
                    AND c.relnamespace IN {USER_NS}
                    AND {}",
                comment("t.oid", "pg_trigger"),
                not_ext("pg_class", "c.oid"),
            ),
        ),
        (
            "rules",
            format!(
                "SELECT 'rule ' || r.ev_class::regclass::text || '.' || quote_ident(r.rulename),
                        'definition', pg_get_ruledef(r.oid), false,
                        'rule', ARRAY[r.ev_class::regclass::text, pg_get_ruledef(r.oid)],
                        '', pg_get_ruledef(r.oid)
                   FROM pg_rewrite r
                   JOIN pg_class c ON c.oid = r.ev_class
                  WHERE r.rulename <> '_RETURN'
                    AND c.relnamespace IN {USER_NS}
                    AND {}",
                not_ext("pg_class", "c.oid"),
            ),
        ),
        (
            "policies",
            format!(
                "SELECT 'policy ' || p.polrelid::regclass::text || '.' || quote_ident(p.polname),
                        'definition', concat_ws(' ', x.head, nullif(x.quals, '')), false,
                        CASE WHEN x.quals <> '' THEN 'policy' END,
                        ARRAY[p.polrelid::regclass::text, quote_ident(p.polname),
                              CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                              upper(x.cmd), coalesce(pg_get_expr(p.polqual, p.polrelid), ''),
                              coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')],
                        x.head || ' ', x.quals
                   FROM pg_policy p
                   JOIN pg_class c ON c.oid = p.polrelid
                  CROSS JOIN LATERAL (SELECT
                        CASE p.polcmd WHEN 'r' THEN 'select' WHEN 'a' THEN 'insert'
                             WHEN 'w' THEN 'update' WHEN 'd' THEN 'delete' ELSE 'all' END AS cmd) k
                  CROSS JOIN LATERAL (SELECT
                        concat_ws(' ',
                            CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END,
                            'for ' || k.cmd,
                            'to ' || (SELECT string_agg(CASE WHEN r = 0 THEN 'public'
                                                 ELSE quote_ident(pg_get_userbyid(r)) END, ', ' ORDER BY 1)
                                        FROM unnest(p.polroles) r)) AS head,
                        {POLICY_QUALS} AS quals,
                        k.cmd) x
                  WHERE c.relnamespace IN {USER_NS}
                    AND {}",
                not_ext("pg_class", "c.oid"),
            ),
        ),
        (
            "functions",
            format!(
                "SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
                                       WHEN 'w' THEN 'window function' ELSE 'function' END
                        || ' ' || p.oid::regprocedure::text, x.attr, x.value, x.hashed,
                        CASE WHEN x.attr = 'arguments' AND p.pronargdefaults > 0
                             THEN 'function arguments'
                             WHEN x.attr = 'body' AND {sql_body} IS NOT NULL THEN 'function body' END,
                        CASE WHEN x.attr IN ('arguments', 'body') THEN
                            ARRAY[CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                                  quote_ident(p.proname), pg_get_function_arguments(p.oid),
                                  coalesce(pg_get_function_result(p.oid), ''),
                                  coalesce({sql_body}, '')] END,
                        CASE WHEN x.attr = 'body' THEN concat_ws(E'\\n', p.prosrc, p.probin) || E'\\n'
                             ELSE '' END,
                        CASE WHEN x.attr = 'body' THEN {sql_body} ELSE x.value END
                   FROM pg_proc p
                   JOIN pg_language l ON l.oid = p.prolang
                  CROSS JOIN LATERAL (VALUES
                        ('owner', {}, false),
                        ('ACL', {}, false),
                        ('comment', {}, false),
                        ('arguments', pg_get_function_arguments(p.oid), false),
                        ('returns', pg_get_function_result(p.oid), false),
                        ('attributes', concat_ws(' ',
                            'language ' || quote_ident(l.lanname),
                            CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable'
                                               ELSE 'volatile' END,
                            CASE WHEN p.proisstrict THEN 'strict' END,
                            CASE WHEN p.prosecdef THEN 'security definer' END,
                            CASE WHEN p.proleakproof THEN 'leakproof' END,
                            'parallel ' || CASE p.proparallel WHEN 's' THEN 'safe'
                                              WHEN 'r' THEN 'restricted' ELSE 'unsafe' END,
                            'cost ' || p.procost,
                            CASE WHEN p.proretset THEN 'rows ' || p.prorows END,
                            'set ' || array_to_string(p.proconfig, ', ')), false),
                        ('body', concat_ws(E'\\n', p.prosrc, p.probin, {sql_body}), true)
                        ) x(attr, value, hashed)
                  WHERE p.pronamespace IN {USER_NS}
                    AND {}",
                owner("p.proowner"),
                acl("p.proacl", "'f'", "p.proowner"),
                comment("p.oid", "pg_proc"),
                not_ext("pg_proc", "p.oid"),
            ),
        ),
        (
            "types",
            format!(
                "SELECT CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain'
                                       WHEN 'c' THEN 'composite type' WHEN 'r' THEN 'range type'
                                       ELSE 'type' END
                        || ' ' || t.oid::regtype::text, x.attr, x.value, false,
                        CASE WHEN x.attr = 'definition' AND t.typdefaultbin IS NOT NULL THEN 'domain default' END,
                        ARRAY[{domain_base}, pg_get_expr(t.typdefaultbin, 0)],
                        format_type(t.typbasetype, t.typtypmod)
                            || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END || ' default ',
                        pg_get_expr(t.typdefaultbin, 0)
                   FROM pg_type t
                  CROSS JOIN LATERAL (VALUES
                        ('owner', {}),
                        ('ACL', {}),
                        ('comment', {}),
                        ('labels', CASE WHEN t.typtype = 'e' THEN
                            (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                               FROM pg_enum e WHERE e.enumtypid = t.oid) END),
                        ('definition', CASE t.typtype
                            WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod)
                                || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
                                || coalesce(' default ' || pg_get_expr(t.typdefaultbin, 0), '')
                                || CASE WHEN t.typcollation <> 0 AND t.typcollation <>
                                            (SELECT b.typcollation FROM pg_type b WHERE b.oid = t.typbasetype)
                                        THEN ' collate ' || t.typcollation::regcollation::text ELSE '' END
                            WHEN 'c' THEN (SELECT '(' || string_agg(quote_ident(a.attname) || ' '
                                                  || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) || ')'
                                             FROM pg_attribute a
                                            WHERE a.attrelid = t.typrelid AND a.attnum > 0
                                              AND NOT a.attisdropped)
                            WHEN 'r' THEN (SELECT 'subtype ' || format_type(r.rngsubtype, NULL)
                                             FROM pg_range r WHERE r.rngtypid = t.oid)
                            END)
                        ) x(attr, value)
                  WHERE t.typnamespace IN {USER_NS}
                    AND t.typtype <> 'm'
                    AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
                    AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
                    AND {}",
                owner("t.typowner"),
                acl("t.typacl", "'T'", "t.typowner"),
                comment("t.oid", "pg_type"),
                not_ext("pg_type", "t.oid"),
            ),
        ),
        (
            "default privileges",
            format!(
                "SELECT 'default privileges for role ' || quote_ident(pg_get_userbyid(d.defaclrole))
                        || coalesce(' in schema ' || quote_ident(n.nspname), '')
                        || ' on ' || CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences'
                                        WHEN 'f' THEN 'functions' WHEN 'T' THEN 'types'
                                        WHEN 'n' THEN 'schemas' WHEN 'L' THEN 'large objects'
                                        ELSE d.defaclobjtype::text END,
                        'ACL', coalesce({}, '{{}}'), false, {NO_REREAD}
                   FROM pg_default_acl d
                   LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace",
                acl_or_null("d.defaclacl"),
            ),
        ),
        (
            "extensions",
            format!(
                "SELECT 'extension ' || quote_ident(e.extname), 'version',
                    e.extversion || ' in schema ' || quote_ident(n.nspname), false, {NO_REREAD}
               FROM pg_extension e
               JOIN pg_namespace n ON n.oid = e.extnamespace"
            ),
        ),
        (
            "extension members' privileges",
            // Members come with CREATE EXTENSION, with the privileges its script gave them
            // (pg_init_privs); only privileges changed since are the database's own.
            format!(
                "SELECT o.type || ' ' || o.identity || ' (of extension '
                        || quote_ident(x.extname) || ')', 'ACL', coalesce({}, '(none)'), false,
                        {NO_REREAD}
                   FROM (SELECT 'pg_class'::regclass AS cls, oid, relacl AS acl FROM pg_class
                         UNION ALL SELECT 'pg_proc'::regclass, oid, proacl FROM pg_proc
                         UNION ALL SELECT 'pg_type'::regclass, oid, typacl FROM pg_type) m
                   JOIN pg_depend d ON d.classid = m.cls AND d.objid = m.oid AND d.deptype = 'e'
                   JOIN pg_extension x ON x.oid = d.refobjid
                   LEFT JOIN pg_init_privs i ON i.classoid = m.cls AND i.objoid = m.oid AND i.objsubid = 0
                  CROSS JOIN LATERAL pg_identify_object(m.cls, m.oid, 0) o
                  WHERE m.acl IS DISTINCT FROM i.initprivs",
                acl_or_null("m.acl"),
            ),
        ),
        (
            "other objects",
            // Everything else that lives in a user schema (operators, collations, statistics
            // objects, text search configurations, conversions …): that it exists.
            format!(
                "SELECT o.type || ' ' || o.identity, 'exists', 'yes', false, {NO_REREAD}
                   FROM pg_depend d
                  CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) o
                  WHERE d.refclassid = 'pg_namespace'::regclass AND d.deptype = 'n'
                    AND d.refobjid IN {USER_NS}
                    AND d.classid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass,
                                          'pg_type'::regclass, 'pg_extension'::regclass)
                    AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid
                                       AND e.objid = d.objid AND e.deptype = 'e')"
            ),
        ),
    ]
}

/// Every role that owns, grants or is granted something the description covers.
fn pg_roles_query() -> String {
    format!(
        "WITH acls(owner, acl) AS (
              SELECT nspowner, nspacl FROM pg_namespace WHERE oid IN {USER_NS}
              UNION ALL SELECT relowner, relacl FROM pg_class WHERE relnamespace IN {USER_NS}
              UNION ALL SELECT c.relowner, a.attacl FROM pg_attribute a
                          JOIN pg_class c ON c.oid = a.attrelid
                         WHERE c.relnamespace IN {USER_NS} AND a.attacl IS NOT NULL
              UNION ALL SELECT proowner, proacl FROM pg_proc WHERE pronamespace IN {USER_NS}
              UNION ALL SELECT typowner, typacl FROM pg_type WHERE typnamespace IN {USER_NS}
              UNION ALL SELECT defaclrole, defaclacl FROM pg_default_acl
              UNION ALL SELECT extowner, NULL FROM pg_extension
         ), roles(r) AS (
              SELECT owner FROM acls
              UNION SELECT (aclexplode(acl)).grantee FROM acls WHERE acl IS NOT NULL
              UNION SELECT (aclexplode(acl)).grantor FROM acls WHERE acl IS NOT NULL
              UNION SELECT unnest(polroles) FROM pg_policy
         )
         SELECT rolname::text FROM pg_roles WHERE oid IN (SELECT r FROM roles) ORDER BY 1"
    )
}

/// One line of a description before its printed text is re-read.
#[derive(Clone, Debug)]
struct RawLine {
    subject: String,
    attr: String,
    value: String,
    hashed: bool,
    /// How to re-read a part of `value`, and where it is: `value` starts with `head`
    /// followed by `piece`, the text PostgreSQL printed.
    reread: Option<(RereadPlan, String, String)>,
}

/// A description whose printed texts are not re-read yet: [`pg_describe`] makes it in the
/// caller's snapshot, [`RawCatalog::reread`] finishes it.
#[derive(Clone, Debug)]
pub struct RawCatalog {
    lines: Vec<RawLine>,
    roles: Vec<String>,
}

/// Describes the database `conn` is connected to, up to the re-reading of printed texts
/// ([`RawCatalog::reread`]). Run it inside a transaction (the caller's snapshot, for a
/// backup): it sets `search_path` to empty for that transaction, so every name comes out
/// schema-qualified whatever the role's settings.
pub async fn pg_describe(conn: &mut PgConnection) -> Result<RawCatalog> {
    let ctx = "describing the catalog";
    sqlx::query("SET LOCAL search_path = ''")
        .execute(&mut *conn)
        .await
        .map_err(db(ctx, None))?;
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&mut *conn)
        .await
        .map_err(db(ctx, None))?;
    let mut lines = Vec::new();
    for (what, sql) in pg_queries(version) {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await
            .map_err(db(format!("describing the catalog ({what})"), None))?;
        let ctx = || db(format!("describing the catalog ({what})"), None);
        for r in rows {
            let get = |i| -> Result<Option<String>> { r.try_get(i).map_err(ctx()) };
            // No value (NULL or empty): nothing to say, e.g. no comment, no arguments.
            let (Some(subject), Some(attr), Some(value)) = (get(0)?, get(1)?, get(2)?) else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            let hashed: bool = r.try_get(3).map_err(ctx())?;
            let kind = get(4)?;
            let args: Option<Vec<Option<String>>> = r.try_get(5).map_err(ctx())?;
            let args: Option<Vec<String>> = args.and_then(|a| a.into_iter().collect());
            let reread = match (kind, args, get(6)?, get(7)?) {
                (Some(kind), Some(args), Some(head), Some(piece))
                    if value.starts_with(&format!("{head}{piece}")) =>
                {
                    reread_plan(&kind, &args).map(|plan| (plan, head, piece))
                }
                _ => None,
            };
            lines.push(RawLine {
                subject,
                attr,
                value,
                hashed,
                reread,
            });
        }
    }
    let roles: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(pg_roles_query()))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing the roles the catalog names", None))?;
    Ok(RawCatalog { lines, roles })
}

impl RawCatalog {
    /// Re-reads every text PostgreSQL printed from an expression, as a restore will: a
    /// restore runs what pg_dump wrote, which is that printed text, and PostgreSQL prints
    /// the parsed result back differently in places. Tested on PostgreSQL 15 and 18 (see
    /// `tests/backup.rs`): views, materialized views, rules, CHECK and EXCLUDE constraints
    /// (of tables and domains), index expressions and predicates, trigger WHEN conditions,
    /// column defaults and generated columns, domain defaults, policies, partition keys,
    /// argument defaults and SQL-standard function bodies all change when they hold an
    /// ARRAY[] built of one type and cast to an array of another: `c IN ('a', 'b')` on a
    /// varchar column is stored as `(c)::text = ANY ((ARRAY['a'::character varying,
    /// 'b'::character varying])::text[])`, and reading that text back pushes the cast into the
    /// elements, `ARRAY[('a'::character varying)::text, …]`. One re-reading is the end of it:
    /// a restored database restored again prints the same. Other constructs came back as they
    /// were printed.
    ///
    /// So each such text is created again, on a temporary object in a transaction that is
    /// rolled back (CREATE TEMPORARY VIEW from a view's definition, a CHECK added to a
    /// temporary copy of its table, …), and the description holds what PostgreSQL prints
    /// for that. Comparing that, rather than the columns or dependencies of a view, still
    /// tells a changed literal or condition from a restore. A restored database gives the
    /// same text, and a text that comes back unchanged is described as it was printed (so a
    /// catalog recorded before this re-reading still matches, but for the texts that change).
    /// It costs about a millisecond a text on the server (a temporary table or view created
    /// and rolled back); plans go fifty to a round trip.
    ///
    /// The temporary objects need the TEMPORARY privilege on the database, and SELECT on the
    /// tables they copy (as pg_dump does). Where re-reading fails (a read-only server, a
    /// privilege missing, an event trigger refusing DDL) the printed text is kept as it is.
    pub async fn reread(self, conn: &mut PgConnection) -> Result<Catalog> {
        let plans: Vec<&RereadPlan> = self
            .lines
            .iter()
            .filter_map(|l| l.reread.as_ref().map(|(plan, _, _)| plan))
            .collect();
        let mut texts = Vec::new();
        if !plans.is_empty() && begin_rereading(conn).await {
            texts = run_plans(conn, &plans).await;
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        }
        let mut texts = texts.into_iter();
        let reread: Vec<Option<String>> = self
            .lines
            .iter()
            .map(|l| l.reread.as_ref().and_then(|_| texts.next().flatten()))
            .collect();
        let lines = self
            .lines
            .into_iter()
            .zip(reread)
            .map(|(line, text)| {
                let value = match (&line.reread, text) {
                    (Some((_, head, piece)), Some(text)) => {
                        format!("{head}{text}{}", &line.value[head.len() + piece.len()..])
                    }
                    _ => line.value,
                };
                let value = if line.hashed {
                    short_hash(&value)
                } else {
                    value
                };
                format!("{}: {} {value}", line.subject, line.attr)
            })
            .collect();
        Ok(Catalog::new(lines, self.roles))
    }
}

/// Opens the transaction the re-reading runs in (rolled back after it): read-write (temporary
/// objects), names schema-qualified as in the description, the bodies of stand-in functions
/// (an empty string, where only the arguments are re-read) not checked, a bounded wait for
/// locks (the temporary copies share locks with the tables they copy). Event triggers are
/// kept from firing where the role may (`session_replication_role`). False when no such
/// transaction can be had (a standby) or the role may not create temporary objects.
async fn begin_rereading(conn: &mut PgConnection) -> bool {
    let may: std::result::Result<bool, _> = sqlx::query_scalar(
        "SELECT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'TEMPORARY')",
    )
    .fetch_one(&mut *conn)
    .await;
    if !matches!(may, Ok(true)) {
        return false;
    }
    if sqlx::query("BEGIN READ WRITE")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        return false;
    }
    let settings = sqlx::raw_sql(
        "SET LOCAL search_path = '';
         SET LOCAL check_function_bodies = off;
         SET LOCAL standard_conforming_strings = on;
         SET LOCAL lock_timeout = '10s';
         SAVEPOINT rewind_settings",
    )
    .execute(&mut *conn)
    .await;
    if settings.is_err() {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return false;
    }
    let quiet = sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *conn)
        .await;
    let after = if quiet.is_ok() {
        "RELEASE SAVEPOINT rewind_settings"
    } else {
        "ROLLBACK TO SAVEPOINT rewind_settings; RELEASE SAVEPOINT rewind_settings"
    };
    if sqlx::raw_sql(after).execute(&mut *conn).await.is_err() {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return false;
    }
    true
}

/// Plans run in one round trip (a few hundred statements).
const BATCH: usize = 50;

/// Runs `plans`, each in a savepoint rolled back after it, a batch per round trip: the text
/// each printed, or `None` where it failed (the text stays as printed). A batch that fails
/// somewhere is run again one plan at a time, to keep what the others print. Fewer texts
/// than plans when the transaction cannot go on.
async fn run_plans(conn: &mut PgConnection, plans: &[&RereadPlan]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(plans.len());
    for batch in plans.chunks(BATCH) {
        if let Ok(texts) = run_batch(conn, batch).await {
            out.extend(texts);
            continue;
        }
        if !recover(conn).await {
            return out;
        }
        for plan in batch {
            match run_batch(conn, std::slice::from_ref(plan)).await {
                Ok(texts) => out.extend(texts),
                Err(_) if recover(conn).await => out.push(None),
                Err(_) => return out,
            }
        }
    }
    out
}

/// After an error inside a plan's savepoint: back to before it. False when even that fails.
async fn recover(conn: &mut PgConnection) -> bool {
    sqlx::raw_sql("ROLLBACK TO SAVEPOINT rewind_reread; RELEASE SAVEPOINT rewind_reread")
        .execute(&mut *conn)
        .await
        .is_ok()
}

/// One round trip: every plan of `batch` in a savepoint of its own, its printing query's row
/// numbered (a plan whose query finds nothing gives a row of NULLs, so none goes missing).
async fn run_batch(
    conn: &mut PgConnection,
    batch: &[&RereadPlan],
) -> std::result::Result<Vec<Option<String>>, sqlx::Error> {
    let mut sql = String::new();
    for (k, plan) in batch.iter().enumerate() {
        sql.push_str("SAVEPOINT rewind_reread;\n");
        for s in &plan.setup {
            sql.push_str(s);
            sql.push_str(";\n");
        }
        sql.push_str(&format!(
            "SELECT {k}::int4, p.* FROM (SELECT) AS one LEFT JOIN ({}) AS p ON true;\n\
             ROLLBACK TO SAVEPOINT rewind_reread;\nRELEASE SAVEPOINT rewind_reread;\n",
            plan.print
        ));
    }
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    let mut printed: Vec<Vec<&sqlx::postgres::PgRow>> = vec![Vec::new(); batch.len()];
    for row in &rows {
        let k: i32 = row.try_get(0)?;
        if let Some(rows) = usize::try_from(k).ok().and_then(|k| printed.get_mut(k)) {
            rows.push(row);
        }
    }
    Ok(batch
        .iter()
        .zip(printed)
        .map(|(plan, rows)| {
            // One object was created: more than one row means the query found another.
            let [row] = rows.as_slice() else {
                return None;
            };
            let text: String = row.try_get(1).ok().flatten()?;
            let Some(swap) = &plan.swap_back else {
                return Some(text);
            };
            // pg_get_indexdef and its kin write a temporary relation `pg_temp.name`, regclass
            // may write it bare: either may stand in the text.
            let temp: Option<String> = row.try_get(2).ok().flatten();
            [Some(TEMP.to_string()), temp]
                .into_iter()
                .flatten()
                .find_map(|temp| replace_relation(&text, swap.keyword, &temp, &swap.to))
        })
        .collect())
}

/// How to re-read one printed text: statements that create it again on a temporary object
/// named `rewind_reread` (or a temporary function of the original's name), and a query whose
/// one row prints it back. For a text naming the relation it belongs to (an index, a
/// trigger, a rule), the query also gives the temporary copy's name as printed, and
/// `swap_back` puts the original's name in its place.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RereadPlan {
    setup: Vec<String>,
    print: String,
    swap_back: Option<SwapBack>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SwapBack {
    /// `" ON "` or `" TO "`: what precedes the relation's name in the text.
    keyword: &'static str,
    /// The original's name, as printed.
    to: String,
}

/// The temporary relation (or domain) a plan creates.
const TEMP: &str = "pg_temp.rewind_reread";

/// The plan for a `kind` of text (named by [`pg_queries`]) and its arguments; `None` for what
/// cannot be re-read (a text that does not name its relation where expected).
fn reread_plan(kind: &str, args: &[String]) -> Option<RereadPlan> {
    let copy = |table: &str| format!("CREATE TEMPORARY TABLE rewind_reread (LIKE {table})");
    let plan = |setup: Vec<String>, print: String| {
        Some(RereadPlan {
            setup,
            print,
            swap_back: None,
        })
    };
    let temp_rel = format!("'{TEMP}'::pg_catalog.regclass");
    let attrdef = format!(
        "SELECT pg_catalog.pg_get_expr(adbin, adrelid) FROM pg_catalog.pg_attrdef
          WHERE adrelid = {temp_rel}"
    );
    match (kind, args) {
        ("view", [definition]) => plan(
            vec![format!(
                "CREATE TEMPORARY VIEW rewind_reread AS {}",
                definition.trim_end().trim_end_matches(';')
            )],
            format!("SELECT pg_catalog.pg_get_viewdef({temp_rel})"),
        ),
        ("default", [table, column, expr]) => plan(
            vec![
                copy(table),
                format!("ALTER TABLE {TEMP} ALTER COLUMN {column} SET DEFAULT {expr}"),
            ],
            attrdef,
        ),
        ("generated", [table, column, ty, expr, how]) => plan(
            vec![
                copy(table),
                format!("ALTER TABLE {TEMP} DROP COLUMN {column}"),
                format!(
                    "ALTER TABLE {TEMP} ADD COLUMN {column} {ty} GENERATED ALWAYS AS ({expr}) {how}"
                ),
            ],
            attrdef,
        ),
        ("table constraint", [table, name, definition]) => plan(
            vec![
                copy(table),
                format!("ALTER TABLE {TEMP} ADD CONSTRAINT {name} {definition}"),
            ],
            format!(
                "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint
                  WHERE conrelid = {temp_rel} AND contype IN ('c', 'x')"
            ),
        ),
        ("domain constraint", [base, name, definition]) => plan(
            vec![
                format!("CREATE DOMAIN {TEMP} AS {base}"),
                format!("ALTER DOMAIN {TEMP} ADD CONSTRAINT {name} {definition}"),
            ],
            format!(
                "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint
                  WHERE contypid = '{TEMP}'::pg_catalog.regtype AND contype = 'c'"
            ),
        ),
        ("domain default", [base, expr]) => plan(
            vec![format!("CREATE DOMAIN {TEMP} AS {base} DEFAULT {expr}")],
            format!(
                "SELECT pg_catalog.pg_get_expr(typdefaultbin, 0) FROM pg_catalog.pg_type
                  WHERE oid = '{TEMP}'::pg_catalog.regtype"
            ),
        ),
        ("partition key", [table, key]) => plan(
            vec![format!(
                "CREATE TEMPORARY TABLE rewind_reread (LIKE {table}) PARTITION BY {key}"
            )],
            format!("SELECT pg_catalog.pg_get_partkeydef({temp_rel})"),
        ),
        ("policy", [table, name, permissive, command, using, check]) => {
            let mut create =
                format!("CREATE POLICY {name} ON {TEMP} AS {permissive} FOR {command}");
            if !using.is_empty() {
                create.push_str(&format!(" USING ({using})"));
            }
            if !check.is_empty() {
                create.push_str(&format!(" WITH CHECK ({check})"));
            }
            plan(
                vec![copy(table), create],
                format!(
                    "SELECT {POLICY_QUALS} FROM pg_catalog.pg_policy p WHERE p.polrelid = {temp_rel}"
                ),
            )
        }
        ("function arguments" | "function body", [what, name, arguments, result, body]) => {
            let returns = if what == "PROCEDURE" {
                String::new()
            } else {
                format!(" RETURNS {result}")
            };
            let body = if body.is_empty() {
                "AS ''".to_string()
            } else {
                body.clone()
            };
            let printed = if kind == "function body" {
                "pg_catalog.pg_get_function_sqlbody(oid)"
            } else {
                "pg_catalog.pg_get_function_arguments(oid)"
            };
            plan(
                vec![format!(
                    "CREATE {what} pg_temp.{name}({arguments}){returns} LANGUAGE sql {body}"
                )],
                format!(
                    "SELECT {printed} FROM pg_catalog.pg_proc
                      WHERE pronamespace = pg_catalog.pg_my_temp_schema()"
                ),
            )
        }
        ("index", [table, on, definition]) => on_copy(
            table,
            " ON ",
            on,
            definition,
            format!(
                "SELECT pg_catalog.pg_get_indexdef(indexrelid), indrelid::pg_catalog.regclass::text
                   FROM pg_catalog.pg_index WHERE indrelid = {temp_rel}"
            ),
        ),
        ("trigger", [table, definition]) => on_copy(
            table,
            " ON ",
            table,
            definition,
            format!(
                "SELECT pg_catalog.pg_get_triggerdef(oid), tgrelid::pg_catalog.regclass::text
                   FROM pg_catalog.pg_trigger WHERE tgrelid = {temp_rel} AND NOT tgisinternal"
            ),
        ),
        ("rule", [table, definition]) => on_copy(
            table,
            " TO ",
            table,
            definition,
            format!(
                "SELECT pg_catalog.pg_get_ruledef(oid), ev_class::pg_catalog.regclass::text
                   FROM pg_catalog.pg_rewrite WHERE ev_class = {temp_rel}"
            ),
        ),
        _ => None,
    }
}

/// A plan that runs `definition` (an index, trigger or rule naming its relation `name` after
/// `keyword`) on a temporary copy of `table`: same columns, no rows, no indexes, triggers or
/// rules of its own, so its one object is the one re-read.
fn on_copy(
    table: &str,
    keyword: &'static str,
    name: &str,
    definition: &str,
    print: String,
) -> Option<RereadPlan> {
    let on_copy = replace_relation(definition, keyword, name, TEMP)?;
    Some(RereadPlan {
        setup: vec![
            format!("CREATE TEMPORARY TABLE rewind_reread (LIKE {table})"),
            on_copy,
        ],
        print,
        swap_back: Some(SwapBack {
            keyword,
            to: name.to_string(),
        }),
    })
}

/// `text` with the first `{keyword}{from}` followed by white space (or the end) made
/// `{keyword}{to}`. In a printed CREATE INDEX, TRIGGER or RULE, that is where the relation is
/// named: what comes before it holds no string literal, and a name is quoted when it holds
/// white space, so a longer name starting with `from` is not taken for it.
fn replace_relation(text: &str, keyword: &str, from: &str, to: &str) -> Option<String> {
    let needle = format!("{keyword}{from}");
    let mut start = 0;
    while let Some(k) = text[start..].find(&needle) {
        let at = start + k;
        let end = at + needle.len();
        if text[end..].chars().next().is_none_or(char::is_whitespace) {
            return Some(format!("{}{keyword}{to}{}", &text[..at], &text[end..]));
        }
        start = at + 1;
    }
    None
}

/// [`pg_describe`] in a read-only transaction of its own, then [`RawCatalog::reread`].
pub async fn pg_describe_now(conn: &mut PgConnection) -> Result<Catalog> {
    let ctx = "describing the catalog";
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *conn)
        .await
        .map_err(db(ctx, None))?;
    let described = pg_describe(conn).await;
    let _ = sqlx::query("COMMIT").execute(&mut *conn).await;
    described?.reread(conn).await
}

// ---- SQLite -------------------------------------------------------------------------------

/// Collapses every run of whitespace into one space.
fn normalize_sql(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Describes a SQLite database: every entry of `sqlite_schema` (its SQL with whitespace
/// normalized) and the `user_version` and `application_id` pragmas.
pub async fn sqlite_describe(pool: &SqlitePool) -> Result<Catalog> {
    let rows = sqlx::query(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema
          WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading sqlite_schema", None))?;
    let mut lines = Vec::new();
    for r in rows {
        let ctx = || db("reading sqlite_schema", None);
        let kind: String = r.try_get(0).map_err(ctx())?;
        let name: String = r.try_get(1).map_err(ctx())?;
        let table: String = r.try_get(2).map_err(ctx())?;
        let sql: Option<String> = r.try_get(3).map_err(ctx())?;
        let subject = format!("{kind} {}", crate::inspect::quote_ident(&name));
        if table != name {
            lines.push(format!(
                "{subject}: on {}",
                crate::inspect::quote_ident(&table)
            ));
        }
        if let Some(sql) = sql {
            lines.push(format!("{subject}: sql {}", normalize_sql(&sql)));
        }
    }
    for pragma in ["user_version", "application_id"] {
        let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {pragma}")))
            .fetch_one(pool)
            .await
            .map_err(db(format!("PRAGMA {pragma}"), None))?;
        lines.push(format!("database: {pragma} {v}"));
    }
    Ok(Catalog::new(lines, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn lines_split_at_the_first_colon_outside_quotes() {
        assert_eq!(
            split_line("schema public: ACL {=U/pg_database_owner}"),
            ("schema public: ACL", "{=U/pg_database_owner}")
        );
        assert_eq!(
            split_line("table public.\"we: ird\": comment 'a: b'"),
            ("table public.\"we: ird\": comment", "'a: b'")
        );
        assert_eq!(
            split_line("operator public.===(integer,integer): exists yes"),
            ("operator public.===(integer,integer): exists", "yes")
        );
        assert_eq!(split_line("no colon here"), ("no colon here", ""));
        assert_eq!(split_line("x: attr"), ("x: attr", ""));
    }

    #[test]
    fn differences_are_named_changed_added_or_missing() {
        let was = lines(&[
            "schema public: ACL {=U/postgres,postgres=UC/postgres}",
            "schema public: owner postgres",
            "table public.items: owner postgres",
            "column public.items.id: type integer not null",
        ]);
        let now = lines(&[
            "schema public: ACL {postgres=UC/postgres}",
            "schema public: owner postgres",
            "column public.items.id: type integer not null",
            "table public.audit: owner postgres",
        ]);
        let diffs: Vec<String> = compare(&was, &now).iter().map(|d| d.to_string()).collect();
        assert_eq!(
            diffs,
            [
                "schema public: ACL {postgres=UC/postgres} differs from the backup's \
                 {=U/postgres,postgres=UC/postgres}",
                "table public.audit: owner postgres (not in the backup)",
                "table public.items: owner postgres is missing (the backup has it)",
            ]
        );
        assert!(compare(&was, &was).is_empty());
    }

    #[test]
    fn catalog_is_sorted_deduplicated_and_fingerprinted() {
        let c = Catalog::new(
            vec!["b: x 1".into(), "a: x 1".into(), "b: x 1".into()],
            vec!["app".into(), "app".into()],
        );
        assert_eq!(c.lines, ["a: x 1", "b: x 1"]);
        assert_eq!(c.roles, ["app"]);
        assert_eq!(
            c.fingerprint,
            blake3::hash(b"a: x 1\nb: x 1\n").to_hex().to_string()
        );
        assert_eq!(
            normalize_sql("CREATE TABLE t (\n  id INTEGER,\tx  TEXT\n)"),
            "CREATE TABLE t ( id INTEGER, x TEXT )"
        );
    }

    #[test]
    fn the_relation_is_found_where_a_definition_names_it() {
        // Not in a longer name, not inside a literal that comes later.
        let index = "CREATE INDEX i ON public.t2 USING btree (c)";
        assert_eq!(replace_relation(index, " ON ", "public.t", TEMP), None);
        let trigger = "CREATE TRIGGER x AFTER INSERT ON public.t FOR EACH ROW \
                       EXECUTE FUNCTION public.f(' ON public.t ')";
        assert_eq!(
            replace_relation(trigger, " ON ", "public.t", TEMP).as_deref(),
            Some(
                "CREATE TRIGGER x AFTER INSERT ON pg_temp.rewind_reread FOR EACH ROW \
                 EXECUTE FUNCTION public.f(' ON public.t ')"
            )
        );
        let rule = "CREATE RULE r AS\n    ON INSERT TO public.t\n   WHERE (new.c = 'a'::text) \
                    DO INSTEAD NOTHING;";
        assert_eq!(
            replace_relation(rule, " TO ", "public.t", TEMP).as_deref(),
            Some(
                "CREATE RULE r AS\n    ON INSERT TO pg_temp.rewind_reread\n   \
                 WHERE (new.c = 'a'::text) DO INSTEAD NOTHING;"
            )
        );
        assert_eq!(
            replace_relation("x ON public.t", " ON ", "public.t", "y").as_deref(),
            Some("x ON y")
        );
    }

    #[test]
    fn reread_plans_recreate_the_text_on_a_temporary_object() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let view = reread_plan("view", &args(&[" SELECT c\n   FROM public.t;"])).unwrap();
        assert_eq!(
            view.setup,
            ["CREATE TEMPORARY VIEW rewind_reread AS  SELECT c\n   FROM public.t"]
        );
        assert_eq!(view.swap_back, None);

        // An index of a partitioned table is printed `ON ONLY`, and put back so.
        let index = reread_plan(
            "index",
            &args(&[
                "public.p",
                "ONLY public.p",
                "CREATE INDEX p_n ON ONLY public.p USING btree (n) WHERE (n > 0)",
            ]),
        )
        .unwrap();
        assert_eq!(
            index.setup,
            [
                "CREATE TEMPORARY TABLE rewind_reread (LIKE public.p)",
                "CREATE INDEX p_n ON pg_temp.rewind_reread USING btree (n) WHERE (n > 0)",
            ]
        );
        assert_eq!(
            index.swap_back,
            Some(SwapBack {
                keyword: " ON ",
                to: "ONLY public.p".into()
            })
        );

        let policy = reread_plan(
            "policy",
            &args(&[
                "public.t",
                "p",
                "RESTRICTIVE",
                "INSERT",
                "",
                "(c <> 'z'::text)",
            ]),
        )
        .unwrap();
        assert_eq!(
            policy.setup[1],
            "CREATE POLICY p ON pg_temp.rewind_reread AS RESTRICTIVE FOR INSERT \
             WITH CHECK ((c <> 'z'::text))"
        );

        let procedure = reread_plan(
            "function arguments",
            &args(&["PROCEDURE", "p", "IN x integer DEFAULT 1", "", ""]),
        )
        .unwrap();
        assert_eq!(
            procedure.setup,
            ["CREATE PROCEDURE pg_temp.p(IN x integer DEFAULT 1) LANGUAGE sql AS ''"]
        );
        let function = reread_plan(
            "function body",
            &args(&["FUNCTION", "f", "x integer", "boolean", "RETURN (x > 0)"]),
        )
        .unwrap();
        assert_eq!(
            function.setup,
            ["CREATE FUNCTION pg_temp.f(x integer) RETURNS boolean LANGUAGE sql RETURN (x > 0)"]
        );
        assert!(function.print.contains("pg_get_function_sqlbody"));

        // A definition that does not name its relation where expected is not re-read, and
        // neither is an unknown kind or a wrong number of arguments.
        assert_eq!(
            reread_plan(
                "trigger",
                &args(&["public.t", "CREATE TRIGGER x ON public.u"])
            ),
            None
        );
        assert_eq!(reread_plan("sequence", &args(&["x"])), None);
        assert_eq!(reread_plan("view", &args(&[])), None);
    }
}
