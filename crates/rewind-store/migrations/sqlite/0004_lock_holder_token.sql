-- A lock is held by a holder, never by a run: `token` is drawn at random by each process that
-- takes the lock, and the heartbeat, the release and a take-over all name it. (Before this, a
-- process resuming the same run id could re-take a lock that a live process still held.)
-- Rows written by an older version have an empty token; they are taken over like any other
-- once their holder is dead or stale.
ALTER TABLE locks ADD COLUMN token TEXT NOT NULL DEFAULT '';
