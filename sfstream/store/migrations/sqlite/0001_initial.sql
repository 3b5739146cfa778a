-- Initial schema (SQLite). Times are TEXT 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: fixed width,
-- so comparing the strings compares the times. Booleans are INTEGER 0/1.
-- AUTOINCREMENT: ids of deleted rows are never handed out again (a token naming user 7
-- must not become valid for the next user to register).

CREATE TABLE users (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    username        TEXT    NOT NULL COLLATE NOCASE UNIQUE,
    email           TEXT    NOT NULL COLLATE NOCASE UNIQUE,
    password_hash   TEXT    NOT NULL,
    avatar          TEXT,
    bio             TEXT    NOT NULL DEFAULT '',
    followers_count INTEGER NOT NULL DEFAULT 0 CHECK (followers_count >= 0),
    is_admin        INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now'))
);

CREATE TABLE refresh_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    family_id   TEXT    NOT NULL,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  TEXT    NOT NULL UNIQUE,
    expires_at  TEXT    NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    used_at     TEXT,
    revoked_at  TEXT,
    user_agent  TEXT    NOT NULL DEFAULT '',
    ip          TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX refresh_tokens_family_id_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_id_idx ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_expires_at_idx ON refresh_tokens (expires_at);

CREATE TABLE categories (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL COLLATE NOCASE UNIQUE,
    description   TEXT    NOT NULL DEFAULT '',
    thumbnail     TEXT,
    viewers_count INTEGER NOT NULL DEFAULT 0 CHECK (viewers_count >= 0),
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    updated_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now'))
);

CREATE TABLE streams (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id               INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title                 TEXT    NOT NULL DEFAULT '',
    description           TEXT    NOT NULL DEFAULT '',
    thumbnail             TEXT,
    category_id           INTEGER REFERENCES categories (id) ON DELETE SET NULL,
    is_live               INTEGER NOT NULL DEFAULT 0 CHECK (is_live IN (0, 1)),
    viewers_count         INTEGER NOT NULL DEFAULT 0 CHECK (viewers_count >= 0),
    is_private            INTEGER NOT NULL DEFAULT 0 CHECK (is_private IN (0, 1)),
    started_at            TEXT,
    ended_at              TEXT,
    created_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    updated_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now'))
);
CREATE INDEX streams_user_id_idx ON streams (user_id);
CREATE INDEX streams_category_id_idx ON streams (category_id);
CREATE INDEX streams_live_idx ON streams (viewers_count) WHERE is_live = 1;

CREATE TABLE follows (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    follower_id  INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    following_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    UNIQUE (follower_id, following_id),
    CONSTRAINT follows_no_self_follow CHECK (follower_id <> following_id)
);
CREATE INDEX follows_following_id_idx ON follows (following_id);

INSERT INTO categories (name, description) VALUES
    ('Just Chatting', 'Talk shows, hanging out and conversations with chat.'),
    ('Gaming', 'Video games of every kind.'),
    ('Music', 'Live music, DJ sets and music production.'),
    ('Art', 'Drawing, painting, crafts and other creative work.'),
    ('Science & Technology', 'Programming, engineering, science and technology.');
