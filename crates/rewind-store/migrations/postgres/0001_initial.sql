-- rewind state store, PostgreSQL. Times are RFC 3339 text (UTC, microseconds); JSON is text.

CREATE TABLE environments (
    name            TEXT PRIMARY KEY NOT NULL,
    current_release TEXT
);

CREATE TABLE deployed (
    env        TEXT NOT NULL REFERENCES environments (name),
    component  TEXT NOT NULL,
    version    TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (env, component)
);

CREATE TABLE releases (
    env        TEXT NOT NULL REFERENCES environments (name),
    name       TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    state      TEXT NOT NULL,
    components TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    actor      TEXT NOT NULL,
    run_id     TEXT,
    PRIMARY KEY (env, name),
    UNIQUE (env, seq)
);

CREATE TABLE runs (
    id           TEXT PRIMARY KEY NOT NULL,
    env          TEXT NOT NULL REFERENCES environments (name),
    kind         TEXT NOT NULL,
    "release"    TEXT NOT NULL,
    from_release TEXT,
    status       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    steps        TEXT NOT NULL,
    components   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    error        TEXT
);
CREATE INDEX runs_by_env ON runs (env, created_at);

CREATE TABLE journal (
    run_id  TEXT NOT NULL REFERENCES runs (id),
    seq     BIGINT NOT NULL,
    step    BIGINT,
    step_id TEXT,
    event   TEXT NOT NULL,
    at      TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE restore_points (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    env        TEXT NOT NULL,
    run_id     TEXT NOT NULL REFERENCES runs (id),
    component  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    version    TEXT,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX restore_points_by_env ON restore_points (env, run_id);

CREATE TABLE locks (
    env       TEXT PRIMARY KEY NOT NULL,
    run_id    TEXT NOT NULL,
    pid       BIGINT NOT NULL,
    host      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    since     TEXT NOT NULL,
    heartbeat TEXT NOT NULL
);

CREATE TABLE audit (
    env       TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    "release" TEXT,
    run_id    TEXT,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    PRIMARY KEY (env, seq)
);

-- The newest audit entry, kept apart from the chain: the chain alone cannot show that its
-- newest entries were removed.
CREATE TABLE audit_head (
    env  TEXT PRIMARY KEY,
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
