-- The migrations applied once a release is deployed, per database component (JSON object:
-- component → list of migration keys): what a rollback to that release returns the
-- database to.
ALTER TABLE releases ADD COLUMN migrations TEXT NOT NULL DEFAULT '{}';
