-- Threads, their messages and agent runs (SPEC section 6).
-- Times are Unix milliseconds. Ids are UUID v4 strings made by the store.
-- Deleting a thread deletes its messages and runs: the foreign keys
-- cascade, which SQLite does only with `PRAGMA foreign_keys = ON`, set on
-- every connection by the pool's connect options.
CREATE TABLE threads (
    id         TEXT    NOT NULL PRIMARY KEY,
    owner      TEXT    NOT NULL,
    title      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- A user's thread list, most recently updated first, paged by
-- (updated_at, id).
CREATE INDEX threads_by_owner ON threads (owner, updated_at DESC, id DESC);

-- `seq` (the rowid) keeps the order messages were added in, which
-- timestamps alone cannot: a user message and its answer may share a
-- millisecond, and clocks step back.
CREATE TABLE messages (
    seq        INTEGER NOT NULL PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    thread_id  TEXT    NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    role       TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
    content    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX messages_by_thread ON messages (thread_id, seq);

CREATE TABLE runs (
    seq        INTEGER NOT NULL PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    thread_id  TEXT    NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    owner      TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('running', 'completed', 'stopped', 'failed')),
    error      TEXT,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER
);
CREATE INDEX runs_by_thread ON runs (thread_id, seq);
-- Runs in progress: failed at start-up, counted per user.
CREATE INDEX runs_running ON runs (owner) WHERE status = 'running';
