-- The store's identity: a random id given once, when the store is created (or first
-- migrated to this version). rewind writes it, with the audit chain's head, into a marker
-- beside the store and in the environment's directories, so that an emptied, replaced or
-- recreated store is recognised as not the one that recorded the environment.
CREATE TABLE store_identity (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    id         TEXT NOT NULL,
    created_at TEXT NOT NULL
);
INSERT INTO store_identity (one, id, created_at)
VALUES (1, lower(hex(randomblob(16))), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
