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
//! texts (function bodies, view definitions) are shown as a hash.

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

/// The queries, each giving (subject, attribute, value or NULL, hash the value?).
fn pg_queries(server_version_num: i32) -> Vec<(&'static str, String)> {
    let rel_kind = "CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
                    WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                    WHEN 'S' THEN 'sequence' ELSE 'foreign table' END";
    let sql_body = if server_version_num >= 140000 {
        "CASE WHEN p.prosqlbody IS NOT NULL THEN pg_get_function_sqlbody(p.oid) END"
    } else {
        "NULL"
    };
    let owner = |col: &str| format!("quote_ident(pg_get_userbyid({col}))");
    let comment = |oid: &str, cat: &str| format!("quote_literal(obj_description({oid}, '{cat}'))");
    vec![
        (
            "schemas",
            format!(
                "SELECT 'schema ' || quote_ident(n.nspname), x.attr, x.value, false
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
                "SELECT {rel_kind} || ' ' || c.oid::regclass::text, x.attr, x.value, x.hashed
                   FROM pg_class c
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
                        x.attr, x.value, false
                   FROM pg_attribute a
                   JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_type t ON t.oid = a.atttypid
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  CROSS JOIN LATERAL (VALUES
                        ('type', format_type(a.atttypid, a.atttypmod)
                            || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                            || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                                    THEN ' collate ' || a.attcollation::regcollation::text ELSE '' END
                            || CASE a.attidentity WHEN 'a' THEN ' generated always as identity'
                                    WHEN 'd' THEN ' generated by default as identity' ELSE '' END
                            || CASE WHEN a.attgenerated <> '' THEN ' generated always as ('
                                        || pg_get_expr(d.adbin, d.adrelid) || ')'
                                        || CASE a.attgenerated WHEN 's' THEN ' stored' ELSE ' virtual' END
                                    WHEN d.adbin IS NOT NULL THEN ' default ' || pg_get_expr(d.adbin, d.adrelid)
                                    ELSE '' END),
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
                        || '.' || quote_ident(con.conname), x.attr, x.value, false
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
                "SELECT 'index ' || i.indexrelid::regclass::text, x.attr, x.value, false
                   FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indexrelid
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
                        x.attr, x.value, false
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
                        'definition', pg_get_ruledef(r.oid), false
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
                        'definition',
                        concat_ws(' ',
                            CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END,
                            'for ' || CASE p.polcmd WHEN 'r' THEN 'select' WHEN 'a' THEN 'insert'
                                       WHEN 'w' THEN 'update' WHEN 'd' THEN 'delete' ELSE 'all' END,
                            'to ' || (SELECT string_agg(CASE WHEN r = 0 THEN 'public'
                                                 ELSE quote_ident(pg_get_userbyid(r)) END, ', ' ORDER BY 1)
                                        FROM unnest(p.polroles) r),
                            'using (' || pg_get_expr(p.polqual, p.polrelid) || ')',
                            'with check (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')'),
                        false
                   FROM pg_policy p
                   JOIN pg_class c ON c.oid = p.polrelid
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
                        || ' ' || p.oid::regprocedure::text, x.attr, x.value, x.hashed
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
                        || ' ' || t.oid::regtype::text, x.attr, x.value, false
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
                        'ACL', coalesce({}, '{{}}'), false
                   FROM pg_default_acl d
                   LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace",
                acl_or_null("d.defaclacl"),
            ),
        ),
        (
            "extensions",
            "SELECT 'extension ' || quote_ident(e.extname), 'version',
                    e.extversion || ' in schema ' || quote_ident(n.nspname), false
               FROM pg_extension e
               JOIN pg_namespace n ON n.oid = e.extnamespace"
                .to_string(),
        ),
        (
            "extension members' privileges",
            // Members come with CREATE EXTENSION, with the privileges its script gave them
            // (pg_init_privs); only privileges changed since are the database's own.
            format!(
                "SELECT o.type || ' ' || o.identity || ' (of extension '
                        || quote_ident(x.extname) || ')', 'ACL', coalesce({}, '(none)'), false
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
                "SELECT o.type || ' ' || o.identity, 'exists', 'yes', false
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

/// Describes the database `conn` is connected to. Run it inside a transaction (the caller's
/// snapshot, for a backup): it sets `search_path` to empty for that transaction, so every
/// name comes out schema-qualified whatever the role's settings.
pub async fn pg_describe(conn: &mut PgConnection) -> Result<Catalog> {
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
        for r in rows {
            let get = |i| -> Result<Option<String>> {
                r.try_get(i)
                    .map_err(db(format!("describing the catalog ({what})"), None))
            };
            // No value (NULL or empty): nothing to say, e.g. no comment, no arguments.
            let (Some(subject), Some(attr), Some(value)) = (get(0)?, get(1)?, get(2)?) else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            let hashed: bool = r
                .try_get(3)
                .map_err(db(format!("describing the catalog ({what})"), None))?;
            let value = if hashed { short_hash(&value) } else { value };
            lines.push(format!("{subject}: {attr} {value}"));
        }
    }
    let roles: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(pg_roles_query()))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing the roles the catalog names", None))?;
    Ok(Catalog::new(lines, roles))
}

/// [`pg_describe`] in a read-only transaction of its own.
pub async fn pg_describe_now(conn: &mut PgConnection) -> Result<Catalog> {
    let ctx = "describing the catalog";
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *conn)
        .await
        .map_err(db(ctx, None))?;
    let described = pg_describe(conn).await;
    let _ = sqlx::query("COMMIT").execute(&mut *conn).await;
    described
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
}
