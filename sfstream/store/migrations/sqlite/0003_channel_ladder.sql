-- A per-user transcoding ladder set by an administrator (NULL: the server's --ladder).
ALTER TABLE channels ADD COLUMN ladder TEXT;
