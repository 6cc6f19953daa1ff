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

-- smtpd_sender_login_maps: who may send as an address (or @domain) besides its owner
CREATE TABLE IF NOT EXISTS sender_logins (
  address TEXT NOT NULL CHECK (address = lower(address)),   -- alice@example.org or @example.org
  login   TEXT NOT NULL,                                      -- the SASL login (an email of users)
  PRIMARY KEY (address, login)
);

-- transport_maps: where mail for a domain (or address, or .parent) goes: smtp:[host]:port, lmtp:inet:host:port, ...
CREATE TABLE IF NOT EXISTS transports (
  domain    TEXT PRIMARY KEY CHECK (domain = lower(domain)),
  transport TEXT NOT NULL
);

-- dkim_signing_table: one row per signature; keyfile absolute or relative to dkim_key_directory
CREATE TABLE IF NOT EXISTS dkim_keys (
  domain    TEXT NOT NULL CHECK (domain = lower(domain)),
  selector  TEXT NOT NULL,
  keyfile   TEXT NOT NULL,
  algorithm TEXT NOT NULL DEFAULT '',                         -- rsa-sha256, ed25519-sha256, or '': the key's type
  PRIMARY KEY (domain, selector)
);
