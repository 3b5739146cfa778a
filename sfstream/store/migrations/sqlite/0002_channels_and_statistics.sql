-- A channel per user: the stream key (encrypted at rest, found on publish by its HMAC) and the
-- defaults a new broadcast starts from. A stream row is one broadcast: prepared (started_at NULL),
-- live (is_live = 1) or ended (ended_at set).

CREATE TABLE channels (
    user_id               INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    stream_key_ciphertext BLOB    NOT NULL,
    stream_key_hmac       TEXT    NOT NULL UNIQUE,
    title                 TEXT    NOT NULL DEFAULT '',
    description           TEXT    NOT NULL DEFAULT '',
    category_id           INTEGER REFERENCES categories (id) ON DELETE SET NULL,
    is_private            INTEGER NOT NULL DEFAULT 0 CHECK (is_private IN (0, 1)),
    created_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    updated_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now'))
);

-- Summary of an ended broadcast (the samples below hold the detail).
ALTER TABLE streams ADD COLUMN peak_viewers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE streams ADD COLUMN unique_viewers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE streams ADD COLUMN watch_seconds REAL NOT NULL DEFAULT 0;
-- At most one live broadcast per user, whatever the number of processes.
CREATE UNIQUE INDEX streams_one_live_per_user ON streams (user_id) WHERE is_live = 1;
CREATE INDEX streams_started_at_idx ON streams (started_at);

-- Concurrent viewers of a live broadcast, sampled every few seconds.
CREATE TABLE stream_samples (
    stream_id  INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    sampled_at TEXT    NOT NULL,
    viewers    INTEGER NOT NULL CHECK (viewers >= 0),
    PRIMARY KEY (stream_id, sampled_at)
);
