//! A PostgreSQL restore that brings back exactly what was dumped: owners, privileges, default
//! privileges and comments included, `public` too.
//!
//! What pg_dump writes for the `public` schema is relative to the state `initdb` gave it: it
//! never writes `CREATE SCHEMA public`, writes its owner only when it is not
//! `pg_database_owner`, its comment only when it is not `standard public schema` (and `''`
//! when there is none), and its privileges as GRANTs and REVOKEs against `pg_init_privs`.
//! Global default privileges are written against the built-in defaults, per-schema ones
//! against none. So a restore first puts the database in that assumed state and then runs
//! pg_restore, which lands each relative command on the base it was computed against:
//!
//! 0. event triggers are dropped (those rewind's role may drop): they would fire on every
//!    DROP below, and one that writes to a table or refuses a DROP makes the clearing fail.
//!    pg_dump writes a backup's event triggers last, so pg_restore brings them back after
//!    everything else, as they were;
//! 1. every user schema but `public` is dropped (CASCADE: their per-schema default
//!    privileges go with them);
//! 2. `public` is emptied, not dropped (dropping it would lose its `pg_init_privs` entry and
//!    with it the USAGE that PUBLIC has by default): extensions installed in it (or with
//!    members in it) are dropped, then every other object in it, owners before their parts
//!    (see [`clear_for_restore`]);
//! 3. `public` gets back the owner, privileges and comment of a new database's;
//! 4. default privileges: per-schema ones in `public` are removed, global ones set back to the
//!    built-in defaults;
//! 5. `pg_restore --clean --if-exists --exit-on-error`.
//!
//! Steps 0–4 are one transaction. Killed after it, the database is empty until the restore is
//! run again, which then finds nothing to drop and restores: it converges. The client tools
//! and the roles the backup needs are checked before any of it.
//!
//! Database-wide objects other than event triggers (publications, subscriptions, casts,
//! foreign servers) are left alone: pg_restore drops and recreates those the backup has, and
//! one made after the backup stays (a publication of a table that was dropped publishes
//! nothing).

use std::path::PathBuf;

use sqlx::{Connection, PgConnection};

use crate::backup::{BackupInfo, PgUrl, restore_into};
use crate::error::{Error, Result, db};
use crate::pgtools::ServerVersion;

/// How to restore.
#[derive(Clone, Debug, Default)]
pub struct PgRestoreOptions {
    /// pg_restore's `--jobs` (at least 1).
    pub jobs: usize,
    /// The directory of the client tools (`pg-bin`); `None`: the newest that fits.
    pub pg_bin: Option<PathBuf>,
    /// Roles the backup names (recorded with it): each must exist before anything changes.
    pub roles: Vec<String>,
}

/// Fails with [`Error::MissingRoles`] when some of `roles` do not exist on the server.
pub async fn check_roles(conn: &mut PgConnection, roles: &[String]) -> Result<()> {
    if roles.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT r FROM unnest($1::text[]) r
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)
          ORDER BY 1",
    )
    .bind(roles)
    .fetch_all(conn)
    .await
    .map_err(db("checking the roles the backup needs", None))?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingRoles { roles: missing })
    }
}

/// Restores `backup` into the database of `url` exactly (see the module's doc), after checking
/// the backup's checksum, the client tools and the roles. Returns what the clearing did, one
/// line each.
pub async fn pg_restore_exact(
    url: &str,
    backup: &BackupInfo,
    options: &PgRestoreOptions,
) -> Result<Vec<String>> {
    let url = PgUrl::parse(url)?;
    backup.check().await?;
    let secret = url.password();
    let mut conn = PgConnection::connect_with(&url.connect_options()?)
        .await
        .map_err(db("connecting to PostgreSQL", secret))?;
    let prepared = async {
        let server = ServerVersion::of(&mut conn).await?;
        let tools = crate::pgtools::choose(&server, options.pg_bin.as_deref()).await?;
        check_roles(&mut conn, &options.roles).await?;
        let notes = clear_for_restore(&mut conn, &server).await?;
        Ok::<_, Error>((server, tools, notes))
    }
    .await;
    let _ = conn.close().await;
    let (server, tools, notes) = prepared?;
    restore_into(&tools, &server, &url, backup, options.jobs).await?;
    Ok(notes)
}

/// Steps 0–4 of the module's doc, in one transaction.
pub async fn clear_for_restore(
    conn: &mut PgConnection,
    server: &ServerVersion,
) -> Result<Vec<String>> {
    let mut tx = conn
        .begin()
        .await
        .map_err(db("clearing the database before the restore", None))?;
    let mut notes = Vec::new();
    async fn run(tx: &mut PgConnection, sql: String, what: &str) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(tx)
            .await
            .map(|_| ())
            .map_err(db(
                format!("clearing the database before the restore: {what}"),
                None,
            ))
    }
    async fn statements(tx: &mut PgConnection, sql: &str, what: &str) -> Result<Vec<String>> {
        let rows: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(tx)
            .await
            .map_err(db(
                format!("clearing the database before the restore: {what}"),
                None,
            ))?;
        Ok(rows.into_iter().flatten().collect())
    }

    // 0. Event triggers, before they can fire on the DROPs below. DROP EVENT TRIGGER fires
    // none itself. Only their owner (a superuser) or a superuser may drop them: those left
    // are named.
    let triggers: Vec<(String, bool)> = sqlx::query_as(
        "SELECT quote_ident(evtname), pg_catalog.pg_has_role(evtowner, 'USAGE')
           FROM pg_catalog.pg_event_trigger ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db(
        "clearing the database before the restore: listing event triggers",
        None,
    ))?;
    let (droppable, kept): (Vec<_>, Vec<_>) = triggers.into_iter().partition(|(_, may)| *may);
    for (t, _) in &droppable {
        run(
            &mut tx,
            format!("DROP EVENT TRIGGER {t}"),
            &format!("dropping event trigger {t}"),
        )
        .await?;
    }
    if !droppable.is_empty() {
        notes.push(format!(
            "dropped event trigger{} {}",
            plural(droppable.len()),
            droppable
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !kept.is_empty() {
        notes.push(format!(
            "left event trigger{} {} (only {} owner or a superuser may drop {}): {} on the \
             DROPs of this restore",
            plural(kept.len()),
            kept.iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if kept.len() == 1 { "its" } else { "their" },
            if kept.len() == 1 { "it" } else { "them" },
            if kept.len() == 1 {
                "it fires"
            } else {
                "they fire"
            },
        ));
    }

    // 1. Every user schema but public.
    let schemas = statements(
        &mut tx,
        "SELECT quote_ident(nspname) FROM pg_catalog.pg_namespace
          WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
            AND nspname NOT LIKE 'pg\\_%'
          ORDER BY 1",
        "listing schemas",
    )
    .await?;
    for s in &schemas {
        run(
            &mut tx,
            format!("DROP SCHEMA {s} CASCADE"),
            &format!("dropping schema {s}"),
        )
        .await?;
    }
    if !schemas.is_empty() {
        notes.push(format!(
            "dropped schema{} {}",
            plural(schemas.len()),
            schemas.join(", ")
        ));
    }

    // 2. Empty public (create it if it is gone: a restore of an older rewind dropped it).
    let public_exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'public')",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db("clearing the database before the restore", None))?;
    let default_owner = if server.num >= 150000 {
        "pg_database_owner".to_string()
    } else {
        // Before 15, initdb made the bootstrap superuser public's owner.
        statements(
            &mut tx,
            "SELECT quote_ident(rolname) FROM pg_catalog.pg_roles WHERE oid = 10",
            "finding the bootstrap superuser",
        )
        .await?
        .pop()
        .unwrap_or_else(|| "postgres".into())
    };
    if !public_exists {
        run(
            &mut tx,
            format!("CREATE SCHEMA public AUTHORIZATION {default_owner}"),
            "creating schema public",
        )
        .await?;
        notes.push("created schema public (it was gone)".into());
    }
    let extensions = statements(
        &mut tx,
        "SELECT quote_ident(e.extname) FROM pg_catalog.pg_extension e
          WHERE e.extnamespace = 'public'::regnamespace
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend m
                          JOIN pg_catalog.pg_depend n
                            ON n.classid = m.classid AND n.objid = m.objid
                           AND n.refclassid = 'pg_catalog.pg_namespace'::regclass
                           AND n.refobjid = 'public'::regnamespace
                         WHERE m.refclassid = 'pg_catalog.pg_extension'::regclass
                           AND m.refobjid = e.oid AND m.deptype = 'e')
          ORDER BY 1",
        "listing extensions in public",
    )
    .await?;
    for e in &extensions {
        run(
            &mut tx,
            format!("DROP EXTENSION {e} CASCADE"),
            &format!("dropping extension {e}"),
        )
        .await?;
    }
    // Some objects in public exist only as a part of another: an identity column's sequence
    // (an internal dependency, `i`, on its column), a sequence OWNED BY a column (`a`), a
    // partition (`a` on its parent) and a partition's index (`P`, `S`), a statistics object
    // (`a` on its columns), an extension's member (`e`). PostgreSQL refuses to drop one on its
    // own when the dependency is internal ("cannot drop sequence … because column … requires
    // it"); the others go with their owner anyway. So owners are dropped first (CASCADE takes
    // their parts), and a part is dropped only if it is still there afterwards (its owner
    // lives elsewhere). A table's row type, its indexes (a constraint's too), its TOAST
    // table, rules and triggers are no entries here: they have no dependency on the schema,
    // only on their table. A dependency of an object on itself (a partitioned table on its
    // key's columns) does not make it a part.
    let objects: Vec<(i64, i64, i32)> = sqlx::query_as(
        "SELECT d.classid::int8, d.objid::int8, d.objsubid
           FROM pg_catalog.pg_depend d
          WHERE d.refclassid = 'pg_catalog.pg_namespace'::regclass
            AND d.refobjid = 'public'::regnamespace
            AND d.deptype IN ('n', 'a')
          ORDER BY EXISTS (SELECT 1 FROM pg_catalog.pg_depend o
                            WHERE o.classid = d.classid AND o.objid = d.objid
                              AND o.deptype IN ('i', 'a', 'P', 'S', 'e')
                              AND o.refclassid <> 'pg_catalog.pg_namespace'::regclass
                              AND NOT (o.refclassid = d.classid AND o.refobjid = d.objid)),
                   1, 2, 3",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db("listing the objects in public", None))?;
    let mut dropped = 0;
    for (class, obj, sub) in objects {
        // Identified now: an earlier DROP … CASCADE (of its owner, or of an object it
        // depends on) may have taken it already.
        let (kind, identity): (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT type, identity FROM pg_catalog.pg_identify_object($1::int8::oid, $2::int8::oid, $3)",
        )
        .bind(class)
        .bind(obj)
        .bind(sub)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("identifying an object in public", None))?;
        let (Some(kind), Some(identity)) = (kind, identity) else {
            continue;
        };
        let Some(keyword) = drop_keyword(&kind) else {
            continue;
        };
        run(
            &mut tx,
            format!("DROP {keyword} {identity} CASCADE"),
            &format!("dropping {kind} {identity}"),
        )
        .await?;
        dropped += 1;
    }
    if dropped > 0 || !extensions.is_empty() {
        let mut what = format!("emptied schema public ({dropped} object{}", plural(dropped));
        if !extensions.is_empty() {
            what.push_str(&format!(
                ", extension{} {}",
                plural(extensions.len()),
                extensions.join(", ")
            ));
        }
        notes.push(what + ")");
    }

    // 3. public as a new database has it: owner, comment, privileges (pg_init_privs, or the
    // owner's alone when public has no entry there).
    let (owner, comment): (String, Option<String>) = sqlx::query_as(
        "SELECT quote_ident(pg_catalog.pg_get_userbyid(nspowner)),
                pg_catalog.obj_description(oid, 'pg_namespace')
           FROM pg_catalog.pg_namespace WHERE nspname = 'public'",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db("reading schema public", None))?;
    let mut reset = Vec::new();
    if owner != default_owner {
        run(
            &mut tx,
            format!("ALTER SCHEMA public OWNER TO {default_owner}"),
            "resetting public's owner",
        )
        .await?;
        reset.push("owner");
    }
    if comment.as_deref() != Some("standard public schema") {
        run(
            &mut tx,
            "COMMENT ON SCHEMA public IS 'standard public schema'".into(),
            "resetting public's comment",
        )
        .await?;
        reset.push("comment");
    }
    let acl_statements = statements(
        &mut tx,
        "WITH s AS (
              SELECT n.oid, n.nspowner,
                     coalesce(n.nspacl, acldefault('n', n.nspowner)) AS now,
                     coalesce((SELECT i.initprivs FROM pg_catalog.pg_init_privs i
                                WHERE i.classoid = 'pg_catalog.pg_namespace'::regclass
                                  AND i.objoid = n.oid AND i.objsubid = 0),
                              acldefault('n', n.nspowner)) AS want
                FROM pg_catalog.pg_namespace n WHERE n.nspname = 'public'),
          same AS (
              SELECT (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(s.now) a)
                     IS NOT DISTINCT FROM
                     (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(s.want) a) AS yes
                FROM s)
         SELECT stmt FROM (
              SELECT 0 AS step, 0::int8 AS n,
                     'REVOKE ALL ON SCHEMA public FROM ' || string_agg(DISTINCT
                         CASE WHEN e.grantee = 0 THEN 'PUBLIC'
                              ELSE quote_ident(pg_get_userbyid(e.grantee)) END, ', ')
                     || ' CASCADE' AS stmt
                FROM s CROSS JOIN LATERAL aclexplode(s.now) e
               WHERE NOT (SELECT yes FROM same)
              UNION ALL
              SELECT 1, min(u.n),
                     'GRANT ' || string_agg(e.privilege_type, ', ') || ' ON SCHEMA public TO '
                     || CASE WHEN e.grantee = 0 THEN 'PUBLIC'
                             ELSE quote_ident(pg_get_userbyid(e.grantee)) END
                     || CASE WHEN e.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
                FROM s CROSS JOIN LATERAL unnest(s.want) WITH ORDINALITY AS u(item, n)
               CROSS JOIN LATERAL aclexplode(ARRAY[u.item]) e
               WHERE NOT (SELECT yes FROM same)
               GROUP BY e.grantee, e.is_grantable) x
          ORDER BY step, n",
        "computing public's privileges",
    )
    .await?;
    if !acl_statements.is_empty() {
        reset.push("privileges");
    }
    for sql in acl_statements {
        run(&mut tx, sql, "resetting public's privileges").await?;
    }
    if !reset.is_empty() {
        notes.push(format!(
            "set schema public's {} back to a new database's",
            reset.join(", ")
        ));
    }

    // 4. Default privileges: none per schema (the other schemas' went with them), the
    // built-in ones globally.
    let default_acl = statements(
        &mut tx,
        "WITH d AS (
              SELECT d.oid, d.defaclrole, d.defaclnamespace, d.defaclacl,
                     'ALTER DEFAULT PRIVILEGES FOR ROLE ' || quote_ident(pg_get_userbyid(d.defaclrole))
                     || CASE WHEN d.defaclnamespace = 0 THEN ''
                             ELSE ' IN SCHEMA ' || quote_ident(n.nspname) END AS head,
                     CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                          WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' WHEN 'n' THEN 'SCHEMAS'
                          WHEN 'L' THEN 'LARGE OBJECTS' END AS objects,
                     (CASE d.defaclobjtype WHEN 'S' THEN 's' ELSE d.defaclobjtype END)::\"char\" AS kind
                FROM pg_catalog.pg_default_acl d
                LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
               WHERE d.defaclnamespace = 0 OR n.nspname = 'public')
         SELECT stmt FROM (
              SELECT d.oid, 0 AS step,
                     d.head || ' REVOKE ALL ON ' || d.objects || ' FROM ' || string_agg(DISTINCT
                         CASE WHEN e.grantee = 0 THEN 'PUBLIC'
                              ELSE quote_ident(pg_get_userbyid(e.grantee)) END, ', ') AS stmt
                FROM d CROSS JOIN LATERAL aclexplode(d.defaclacl) e
               GROUP BY d.oid, d.head, d.objects
              UNION ALL
              SELECT d.oid, 1,
                     d.head || ' GRANT ' || string_agg(e.privilege_type, ', ') || ' ON ' || d.objects
                     || ' TO ' || CASE WHEN e.grantee = 0 THEN 'PUBLIC'
                                       ELSE quote_ident(pg_get_userbyid(e.grantee)) END
                     || CASE WHEN e.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
                FROM d CROSS JOIN LATERAL aclexplode(acldefault(d.kind, d.defaclrole)) e
               WHERE d.defaclnamespace = 0
               GROUP BY d.oid, d.head, d.objects, e.grantee, e.is_grantable) x
          ORDER BY oid, step, stmt",
        "computing default privileges",
    )
    .await?;
    let entries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_catalog.pg_default_acl d
          WHERE d.defaclnamespace = 0 OR d.defaclnamespace = 'public'::regnamespace",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db("counting default privileges", None))?;
    for sql in default_acl {
        run(&mut tx, sql, "resetting default privileges").await?;
    }
    if entries > 0 {
        notes.push(format!(
            "set {entries} default privilege entr{} back to the built-in defaults",
            if entries == 1 { "y" } else { "ies" }
        ));
    }
    tx.commit()
        .await
        .map_err(db("clearing the database before the restore: commit", None))?;
    Ok(notes)
}

/// The DROP keyword for a `pg_identify_object` type; `None` for what is not dropped here
/// (default privileges are reset above; a publication's schema list belongs to the
/// publication, which pg_restore --clean recreates when the backup has it).
fn drop_keyword(kind: &str) -> Option<String> {
    match kind {
        "default acl" | "publication namespace" | "extension" => None,
        "statistics object" => Some("STATISTICS".into()),
        "composite type" => Some("TYPE".into()),
        other => Some(other.to_uppercase()),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_keywords() {
        assert_eq!(drop_keyword("table").as_deref(), Some("TABLE"));
        assert_eq!(
            drop_keyword("materialized view").as_deref(),
            Some("MATERIALIZED VIEW")
        );
        assert_eq!(
            drop_keyword("operator class").as_deref(),
            Some("OPERATOR CLASS")
        );
        assert_eq!(
            drop_keyword("statistics object").as_deref(),
            Some("STATISTICS")
        );
        assert_eq!(drop_keyword("default acl"), None);
        assert_eq!(drop_keyword("publication namespace"), None);
    }
}
