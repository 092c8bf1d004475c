-- Threads, their messages and agent runs (SPEC section 6).
-- Times are Unix milliseconds. Ids are UUID v4 strings made by the store,
-- compared bytewise (COLLATE "C") so paging orders them as SQLite does.
-- Deleting a thread deletes its messages and runs: the foreign keys cascade.
CREATE TABLE threads (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner      TEXT   NOT NULL,
    title      TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- A user's thread list, most recently updated first, paged by
-- (updated_at, id).
CREATE INDEX threads_by_owner ON threads (owner, updated_at DESC, id DESC);

-- `seq` keeps the order messages were added in, which timestamps alone
-- cannot: a user message and its answer may share a millisecond, and
-- clocks step back.
CREATE TABLE messages (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT COLLATE "C" NOT NULL UNIQUE,
    thread_id  TEXT COLLATE "C" NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    role       TEXT   NOT NULL CHECK (role IN ('user', 'assistant')),
    content    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX messages_by_thread ON messages (thread_id, seq);

CREATE TABLE runs (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT COLLATE "C" NOT NULL UNIQUE,
    thread_id  TEXT COLLATE "C" NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    owner      TEXT   NOT NULL,
    status     TEXT   NOT NULL CHECK (status IN ('running', 'completed', 'stopped', 'failed')),
    error      TEXT,
    started_at BIGINT NOT NULL,
    ended_at   BIGINT
);
CREATE INDEX runs_by_thread ON runs (thread_id, seq);
-- Runs in progress: failed at start-up, counted per user.
CREATE INDEX runs_running ON runs (owner) WHERE status = 'running';
