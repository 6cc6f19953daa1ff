-- Postern's users, domains and aliases in PostgreSQL, one table of users read by
-- Postern (pgsql:/etc/postern/users.cf) and by Dovecot (passdb sql / userdb sql):
-- the same login and password for SMTP AUTH and IMAP, the same mailbox.
-- psql -d mail -f docs/sql/pgsql.sql      (docs/sql/README.md has both sides' queries)

CREATE TABLE IF NOT EXISTS users (
  email    text PRIMARY KEY CHECK (email = lower(email)),
  password text NOT NULL,               -- {SCHEME}hash as Dovecot writes it (postern user add: {SHA512-CRYPT})
  uid      integer,                     -- NULL: the mailbox_user's
  gid      integer,
  home     text NOT NULL,               -- /var/vmail/example.org/alice
  mail     text NOT NULL DEFAULT 'maildir:~/Maildir'   -- Dovecot's mail location (userdb_mail)
);

CREATE TABLE IF NOT EXISTS domains (
  domain text PRIMARY KEY CHECK (domain = lower(domain))
);

CREATE TABLE IF NOT EXISTS aliases (
  address     text NOT NULL CHECK (address = lower(address)),
  destination text NOT NULL,
  PRIMARY KEY (address, destination)
);

-- smtpd_sender_login_maps: who may send as an address (or @domain) besides its owner
CREATE TABLE IF NOT EXISTS sender_logins (
  address text NOT NULL CHECK (address = lower(address)),   -- alice@example.org or @example.org
  login   text NOT NULL,                                      -- the SASL login (an email of users)
  PRIMARY KEY (address, login)
);

-- transport_maps: where mail for a domain (or address, or .parent) goes: smtp:[host]:port, lmtp:inet:host:port, ...
CREATE TABLE IF NOT EXISTS transports (
  domain    text PRIMARY KEY CHECK (domain = lower(domain)),
  transport text NOT NULL
);

-- dkim_signing_table: one row per signature; keyfile absolute or relative to dkim_key_directory
CREATE TABLE IF NOT EXISTS dkim_keys (
  domain    text NOT NULL CHECK (domain = lower(domain)),
  selector  text NOT NULL,
  keyfile   text NOT NULL,
  algorithm text NOT NULL DEFAULT '',                         -- rsa-sha256, ed25519-sha256, or '': the key's type
  PRIMARY KEY (domain, selector)
);

-- Postern's account on the database reads (and, for postern user add/del, writes) users;
-- Dovecot's only reads. Passwords here are examples: set your own.
-- CREATE ROLE postern LOGIN PASSWORD 'change-me';
-- GRANT SELECT, INSERT, UPDATE, DELETE ON users TO postern;
-- GRANT SELECT ON domains, aliases, sender_logins, transports, dkim_keys TO postern;
-- CREATE ROLE dovecot LOGIN PASSWORD 'change-me-too';
-- GRANT SELECT ON users TO dovecot;
