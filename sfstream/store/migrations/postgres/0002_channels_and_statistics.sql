-- A channel per user: the stream key (encrypted at rest, found on publish by its HMAC) and the
-- defaults a new broadcast starts from. A stream row is one broadcast: prepared (started_at NULL),
-- live (is_live) or ended (ended_at set).

CREATE TABLE channels (
    user_id               BIGINT      PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    stream_key_ciphertext BYTEA       NOT NULL,
    stream_key_hmac       TEXT        NOT NULL CONSTRAINT channels_stream_key_hmac_key UNIQUE,
    title                 TEXT        NOT NULL DEFAULT '',
    description           TEXT        NOT NULL DEFAULT '',
    category_id           BIGINT      REFERENCES categories (id) ON DELETE SET NULL,
    is_private            BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Summary of an ended broadcast (the samples below hold the detail).
ALTER TABLE streams
    ADD COLUMN peak_viewers   INTEGER          NOT NULL DEFAULT 0,
    ADD COLUMN unique_viewers INTEGER          NOT NULL DEFAULT 0,
    ADD COLUMN watch_seconds  DOUBLE PRECISION NOT NULL DEFAULT 0;
-- At most one live broadcast per user, whatever the number of processes.
CREATE UNIQUE INDEX streams_one_live_per_user ON streams (user_id) WHERE is_live;
CREATE INDEX streams_started_at_idx ON streams (started_at);

-- Concurrent viewers of a live broadcast, sampled every few seconds.
CREATE TABLE stream_samples (
    stream_id  BIGINT      NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    sampled_at TIMESTAMPTZ NOT NULL,
    viewers    INTEGER     NOT NULL CHECK (viewers >= 0),
    PRIMARY KEY (stream_id, sampled_at)
);
