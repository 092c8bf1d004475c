-- The store's own facts: when it was created and by which schema.
-- Threads and messages arrive in later migrations.
CREATE TABLE wsgate_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO wsgate_meta (key, value)
VALUES ('created_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
