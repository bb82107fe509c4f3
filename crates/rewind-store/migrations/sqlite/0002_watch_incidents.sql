-- Monitoring windows and incidents.

CREATE TABLE watches (
    env         TEXT NOT NULL REFERENCES environments (name),
    "release"   TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    window_secs REAL NOT NULL,
    baseline    TEXT NOT NULL,
    status      TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (env, "release")
);

CREATE TABLE incidents (
    id           TEXT PRIMARY KEY,
    env          TEXT NOT NULL REFERENCES environments (name),
    "release"    TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    signal       TEXT,
    summary      TEXT NOT NULL,
    evidence     TEXT NOT NULL,
    status       TEXT NOT NULL,
    rollback_run TEXT,
    opened_at    TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE INDEX incidents_env ON incidents (env, opened_at);
