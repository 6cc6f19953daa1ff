-- Postern's users, domains and aliases in SQLite, one table of users read by Postern
-- (sqlite:/etc/postern/users.cf, dbpath = this database) and by Dovecot (passdb sql /
-- userdb sql, driver = sqlite): the same login and password for SMTP AUTH and IMAP.
-- sqlite3 /var/lib/postern/mail.sqlite < docs/sql/sqlite.sql   (docs/sql/README.md)

PRAGMA journal_mode = WAL;  -- readers (proxymap, Dovecot) never wait for postern user add

CREATE TABLE IF NOT EXISTS users (
  email    TEXT PRIMARY KEY CHECK (email = lower(email)),
  password TEXT NOT NULL,               -- {SCHEME}hash as Dovecot writes it
  uid      INTEGER,                     -- NULL: the mailbox_user's
  gid      INTEGER,
  home     TEXT NOT NULL,
  mail     TEXT NOT NULL DEFAULT 'maildir:~/Maildir'
);

CREATE TABLE IF NOT EXISTS domains (
  domain TEXT PRIMARY KEY CHECK (domain = lower(domain))
);

CREATE TABLE IF NOT EXISTS aliases (
  address     TEXT NOT NULL CHECK (address = lower(address)),
  destination TEXT NOT NULL,
  PRIMARY KEY (address, destination)
);
