/**
 * The table of main.cf parameters: name, type, default and meaning. The config
 * parser, `postern config show --defaults` and docs/parameters.md all read this
 * one table, so a parameter exists exactly when it is listed here.
 */

import { checkSaslPath, checkTransport } from '../mail/transport.js';
import { checkMilterList } from '../milter/spec.js';

export type ParamType = 'string' | 'list' | 'int' | 'time' | 'size' | 'bool' | 'enum';

export interface ParamSpec {
  name: string;
  type: ParamType;
  /** Default as it would be written in main.cf ($name expansion applies). */
  default: string;
  description: string;
  /** Allowed words for 'enum'. */
  values?: string[];
  /** Further syntax check of the expanded value: what is wrong, or null. */
  check?: (value: string) => string | null;
}

const P = (name: string, type: ParamType, def: string, description: string, values?: string[]): ParamSpec =>
  ({ name, type, default: def, description, values });

export const PARAMETERS: readonly ParamSpec[] = [
  // Where things are
  P('config_directory', 'string', '/etc/postern', 'Directory holding main.cf, master.cf and the lookup tables.'),
  P('queue_directory', 'string', '/var/spool/postern', 'Root of the mail queue (incoming, active, deferred, hold, corrupt, maildrop, private, public, pid).'),
  P('virtual_mailbox_base', 'string', '/var/mail/vhosts', 'Root of the mailbox tree; a user\'s default home is $virtual_mailbox_base/DOMAIN/USER.'),
  P('maillog_file', 'string', '/var/log/postern/postern.log', 'Log file master writes when running in the background (reopened on reload); in the foreground logs go to standard output.'),
  P('daemon_directory', 'string', '', 'Directory holding the compiled service programs; empty means the installed program tree.'),

  // Identity
  P('myhostname', 'string', 'localhost', 'This host\'s fully-qualified name, used in the SMTP greeting and Received: headers.'),
  P('mydomain', 'string', 'localdomain', 'This host\'s mail domain.'),
  P('myorigin', 'string', '$mydomain', 'Domain appended to unqualified sender addresses of locally submitted mail.'),
  P('mydestination', 'list', '$myhostname, localhost.$mydomain, localhost', 'Domains delivered by this host to users of virtual_mailbox_maps.'),
  P('virtual_mailbox_domains', 'list', '', 'Further domains whose users live in virtual_mailbox_maps: names, or type:source tables in which the domain is looked up (pgsql:, sqlite:, texthash:; docs/tables.md).'),
  P('virtual_mailbox_maps', 'string', 'passwd-file:$config_directory/users', 'The user table (Dovecot-compatible passwd-file): who exists, passwords, mailbox location.'),
  P('mynetworks', 'list', '127.0.0.0/8, [::1]/128', 'Trusted client networks: may relay, skip client checks, and may send bare LF (normalised).'),
  P('smtpd_banner', 'string', '$myhostname ESMTP Postern', 'Text after the 220 code in the SMTP greeting.'),

  // Service users (used only when master runs as root)
  P('unprivileged', 'bool', 'no', 'Sandbox mode: every service runs as the user who starts master, nothing is chowned. Implied when master is not started as root.'),
  P('mail_owner', 'string', 'postern', 'Owner of the queue; cleanup, qmgr and pickup run as this user.'),
  P('smtpd_user', 'string', 'postern-smtpd', 'User smtpd runs as.'),
  P('relay_user', 'string', 'postern-relay', 'User the smtp/lmtp delivery client runs as.'),
  P('mailbox_user', 'string', 'vmail', 'User the local delivery agent runs as; mailbox files belong to it unless the user table says otherwise.'),

  // Limits
  P('queue_minfree', 'size', '0', 'smtpd refuses MAIL FROM with 452 4.3.1 while the queue file system has no more free bytes than this (and a SIZE= that does not fit).'),
  P('message_size_limit', 'size', '10240000', 'Largest message accepted, in bytes (headers included).'),
  P('smtpd_recipient_limit', 'int', '1000', 'Most recipients accepted in one message.'),
  P('header_size_limit', 'size', '102400', 'Largest primary header section cleanup examines, in bytes; what lies beyond is treated as body (an empty line is put at the cut).'),
  P('hopcount_limit', 'int', '50', 'A message with this many Received: header fields (ours not counted) is refused (554 5.4.6 "too many hops") or, from sendmail, bounced: a mail loop.'),
  P('smtpd_timeout', 'time', '300s', 'How long smtpd waits for a client command or data.'),
  P('smtpd_client_connection_count_limit', 'int', '50', 'Simultaneous connections one client address may hold.'),
  P('smtpd_client_connection_rate_limit', 'int', '0', 'Connections one client address may open per anvil_rate_time_unit (421 4.7.0 beyond it); 0 means no limit.'),
  P('smtpd_client_message_rate_limit', 'int', '0', 'MAIL FROM commands one client address may send per anvil_rate_time_unit (450 4.7.1 beyond it); 0 means no limit.'),
  P('smtpd_client_recipient_rate_limit', 'int', '0', 'RCPT TO commands one client address may send per anvil_rate_time_unit (450 4.7.1 beyond it); 0 means no limit.'),
  P('smtpd_client_auth_rate_limit', 'int', '0', 'Failed AUTH attempts one client address may make per anvil_rate_time_unit; its next AUTH gets 421 4.7.0 and the connection is closed. 0 means no limit.'),
  P('smtpd_client_event_limit_exceptions', 'list', '$mynetworks', 'Clients (networks) exempt from the connection count and rate limits above.'),
  P('smtpd_client_ipv4_prefix_length', 'int', '32', 'Client limits count IPv4 clients per network block of this many bits (32: per address), as Postfix 3.8.'),
  P('smtpd_client_ipv6_prefix_length', 'int', '64', 'Client limits count IPv6 clients per network block of this many bits, so a client cannot dodge them with more addresses of its /64 (Postfix 3.8 has 84; see security.md).'),
  P('anvil_rate_time_unit', 'time', '60s', 'The time unit of the client rate limits, counted by the anvil service across every smtpd process.'),
  P('smtpd_soft_error_limit', 'int', '10', 'After this many errors in a session, smtpd waits smtpd_error_sleep_time before each error reply to MAIL FROM and RCPT TO.'),
  P('smtpd_hard_error_limit', 'int', '20', 'After this many errors in a session smtpd replies 421 4.7.0 "too many errors" and disconnects.'),
  P('smtpd_error_sleep_time', 'time', '1s', 'Delay before a MAIL or RCPT error reply once a client passed smtpd_soft_error_limit; a failed AUTH waits this times the client\'s AUTH failures (at most 10 times).'),
  P('smtpd_junk_command_limit', 'int', '100', 'NOOP, RSET, VRFY and HELP commands a session may send before each further one counts as an error.'),
  P('line_length_limit', 'int', '2048', 'Longest SMTP command line smtpd accepts (421 and disconnect beyond it).'),
  P('default_process_limit', 'int', '100', 'Default process limit for master.cf entries whose limit is "-".'),

  // Queue
  P('minimal_backoff_time', 'time', '300s', 'Shortest wait before retrying a deferred message.'),
  P('maximal_backoff_time', 'time', '4000s', 'Longest wait between retries of a deferred message.'),
  P('maximal_queue_lifetime', 'time', '5d', 'How long a message may stay queued before it is returned as undeliverable.'),
  P('bounce_queue_lifetime', 'time', '5d', 'Queue lifetime for bounce messages (null sender).'),
  P('queue_run_delay', 'time', '300s', 'How often qmgr scans the deferred queue.'),
  P('qmgr_message_active_limit', 'int', '20000', 'Most messages qmgr keeps in the active queue at once.'),
  P('default_destination_concurrency_limit', 'int', '20', 'Parallel deliveries to one destination.'),
  P('local_destination_concurrency_limit', 'int', '20', 'Parallel deliveries to the local mailbox service.'),
  P('lmtp_destination_concurrency_limit', 'int', '$default_destination_concurrency_limit', 'Parallel deliveries (and so connections) to one LMTP server named by an lmtp: transport (docs/dovecot.md).'),
  P('delivery_timeout', 'time', '600s', 'How long qmgr waits for one delivery request before treating it as a temporary failure.'),

  // Aliases (expanded by cleanup; smtpd accepts their addresses at RCPT)
  P('virtual_alias_maps', 'list', '', 'Alias tables (texthash:FILE, lines "address target, target..."): keys user@domain or @domain (catch-all); targets local users or remote addresses.'),
  P('alias_maps', 'list', '', 'Alias tables like virtual_alias_maps whose keys may also be a bare local part, meaning that name in every $mydestination domain.'),
  P('virtual_alias_recursion_limit', 'int', '1000', 'Deepest nesting of aliases; deeper expansion bounces the recipient (5.3.5).'),
  P('virtual_alias_expansion_limit', 'int', '1000', 'Most addresses one original recipient may expand into; more bounces the recipient (5.3.5).'),
  P('postmaster_address', 'string', 'postmaster@$mydomain', 'Where postmaster@ and abuse@ of every local domain go unless an alias table says otherwise (RFC 5321 requires postmaster).'),

  // Local delivery
  P('mailbox_format', 'enum', 'maildir', 'Mailbox format for users whose entry does not say (userdb_mail).', ['maildir', 'mbox']),
  P('mailbox_lock_timeout', 'time', '10s', 'How long local waits for an mbox lock before deferring.'),
  { ...P('virtual_transport', 'string', 'local', 'Who delivers mail for users in virtual_mailbox_domains: local (Postern\'s mailbox service), lmtp:unix:PATH (relative to queue_directory unless absolute) or lmtp:inet:HOST:PORT, e.g. Dovecot\'s LMTP (docs/dovecot.md).'), check: checkTransport },
  { ...P('mailbox_transport', 'string', 'local', 'The same for users in mydestination domains.'), check: checkTransport },
  P('transport_maps', 'list', '', 'Tables of "address-or-domain transport:nexthop" (Postfix\'s transport(5): smtp:[host]:port, smtp:host, lmtp:unix:PATH, lmtp:inet:HOST:PORT, local), looked up by qmgr as the address, the domain, then .parent domains; they override the routes above and relayhost.'),

  // TLS (submission uses these; the MX listener offers STARTTLS when a certificate exists)
  P('smtpd_tls_cert_file', 'string', '$config_directory/tls/cert.pem', 'PEM certificate chain for smtpd.'),
  P('smtpd_tls_key_file', 'string', '$config_directory/tls/key.pem', 'PEM private key for smtpd.'),
  P('smtpd_tls_security_level', 'enum', 'may', 'STARTTLS policy: none, may (offer) or encrypt (required before MAIL).', ['none', 'may', 'encrypt']),
  P('smtpd_tls_wrappermode', 'bool', 'no', 'Speak TLS from the first byte (port 465, RFC 8314).'),
  P('smtpd_sasl_auth_enable', 'bool', 'no', 'Offer AUTH (only after TLS) against virtual_mailbox_maps.'),
  P('smtpd_sasl_type', 'enum', 'internal', 'Who checks AUTH passwords: internal (virtual_mailbox_maps) or dovecot (Dovecot\'s auth service at smtpd_sasl_path; docs/dovecot.md).', ['internal', 'dovecot']),
  { ...P('smtpd_sasl_path', 'string', 'private/auth', 'Dovecot\'s auth-client socket: a Unix socket path (relative to queue_directory unless absolute) or inet:HOST:PORT.'), check: checkSaslPath },
  // Restrictions (smtpd): evaluated in order at RCPT time, as Postfix does with smtpd_delay_reject = yes
  P('smtpd_client_restrictions', 'list', 'permit_mynetworks, permit_sasl_authenticated, reject_unknown_reverse_client_hostname', 'Checks of the client: permit_mynetworks, permit_sasl_authenticated, reject_unknown_reverse_client_hostname, reject_unknown_client_hostname, reject_rbl_client ZONE[=127.0.0.N], reject_rhsbl_client ZONE, reject_rhsbl_sender ZONE, permit, reject (any restriction may appear in any list).'),
  P('smtpd_helo_restrictions', 'list', 'permit_mynetworks, permit_sasl_authenticated, reject_invalid_helo_hostname', 'Checks of the HELO/EHLO name: reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname, ...'),
  P('smtpd_sender_restrictions', 'list', '', 'Checks of the MAIL FROM address: reject_unknown_sender_domain, reject_rhsbl_sender ZONE, ...'),
  P('smtpd_relay_restrictions', 'list', 'permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination', 'Relay control, before smtpd_recipient_restrictions: reject_unauth_destination refuses recipients outside our domains (554 5.7.1 Relay access denied).'),
  P('smtpd_recipient_restrictions', 'list', '', 'Checks of the RCPT TO address, after smtpd_relay_restrictions.'),
  P('smtpd_reject_unlisted_recipient', 'bool', 'yes', 'Refuse recipients in our domains that are not in the user table (550 5.1.1), after the restriction lists.'),
  P('unknown_client_reject_code', 'int', '450', 'Reply code of reject_unknown_client_hostname (the client name does not resolve back to its address); DNS failures always get 450.'),
  P('unknown_reverse_client_reject_code', 'int', '550', 'Reply code of reject_unknown_reverse_client_hostname (the client address has no PTR record); DNS failures always get 450.'),
  P('smtpd_forbid_unauth_pipelining', 'bool', 'yes', 'Disconnect clients that talk before the greeting or send commands ahead of replies without having negotiated PIPELINING (554 5.5.0).'),
  // DNS (one resolver with a TTL cache for every lookup in the project)
  P('dns_servers', 'list', '', 'Resolvers to ask (ip or ip:port, tried in order); empty means those in /etc/resolv.conf.'),
  P('dns_timeout', 'time', '5s', 'How long one DNS query waits for an answer before trying the next server.'),

  // Outbound delivery (smtp)
  P('relayhost', 'string', '', 'Send all non-local mail through this smart host: [host]:port (no MX lookup) or host:port (MX lookup).'),
  P('smtp_sasl_password_maps', 'string', '', 'Table (texthash:, pgsql:, sqlite:) of "[host]:port username:password" for AUTH to the relayhost.'),
  P('smtp_tls_security_level', 'enum', 'may', 'Outbound TLS: none, may (opportunistic), encrypt (required, unverified) or dane (RFC 7672: DANE where the MX hosts have secure TLSA records, else may; needs smtp_dns_support_level = dnssec). See docs/tls-policy.md.', ['none', 'may', 'encrypt', 'dane']),
  P('smtp_tls_policy_maps', 'string', '', 'texthash: table of "domain level" (none, may, encrypt, dane) overriding smtp_tls_security_level per destination.'),
  P('smtp_dns_support_level', 'enum', 'enabled', 'enabled: plain DNS lookups; dnssec: MX, address and TLSA lookups for delivery ask with DO/AD and trust the AD bit of dns_servers (which must be a validating resolver on a trusted path), as Postfix; DANE needs it.', ['enabled', 'dnssec']),
  P('smtp_tls_CAfile', 'string', '', 'PEM file of the CAs the smtp client trusts for MTA-STS (certificates of MX hosts and of the policy server); empty means the system\'s CAs.'),
  P('smtp_mta_sts_enable', 'bool', 'yes', 'Apply MTA-STS (RFC 8461) policies of recipient domains (not for relayhost deliveries; DANE takes precedence). See docs/tls-policy.md.'),
  P('smtp_mta_sts_https_port', 'int', '443', 'Port of the HTTPS policy fetch (RFC 8461 says 443; only tests and labs change it).'),
  P('smtp_mta_sts_fetch_timeout', 'time', '10s', 'How long the HTTPS fetch of an MTA-STS policy may take.'),
  // TLS-RPT (RFC 8460; Postfix has its own through an external library): docs/tlsrpt.md
  P('smtp_tlsrpt_enable', 'bool', 'yes', 'Record the TLS outcome of each outbound session to a recipient domain\'s MX host (policy sts, tlsa or no-policy-found; success or RFC 8460 result type) in the spool\'s tlsrpt/ directory, for the daily TLS-RPT reports. See docs/tlsrpt.md.'),
  P('tlsrpt_report_enable', 'bool', 'yes', 'smtp sends each finished UTC day\'s TLS-RPT reports (RFC 8460) to the rua of the domain\'s _smtp._tls TXT record (mailto: through maildrop/, https: by POST); "postern tlsrpt send" sends at once either way.'),
  P('tlsrpt_check_interval', 'time', '1h', 'How often smtp looks for finished days whose TLS-RPT reports are not sent yet (a failed report is retried then).'),
  P('tlsrpt_organization', 'string', '$mydomain', 'organization-name of the TLS-RPT reports (RFC 8460 4.4).'),
  P('tlsrpt_contact_info', 'string', 'postmaster@$mydomain', 'contact-info of the TLS-RPT reports (RFC 8460 4.4).'),
  P('tlsrpt_sender', 'string', 'postmaster@$mydomain', 'Envelope sender and From: of mailed TLS-RPT reports.'),
  P('tlsrpt_max_file_size', 'size', '4194304', 'Most bytes of session records kept per recipient domain and day (about 20000 sessions); beyond it sessions go uncounted, with one warning.'),
  P('tlsrpt_smtp_server', 'string', '', 'host:port of the SMTP server mailed TLS-RPT reports are submitted to (as a client in mynetworks); empty means this instance\'s first smtpd listener in master.cf without -o options (127.0.0.1 for a wildcard one).'),
  P('tlsrpt_https_timeout', 'time', '30s', 'How long the HTTPS POST of a TLS-RPT report to an https: rua may take.'),
  P('tlsrpt_retention_days', 'int', '7', 'Days the session records and report state of a day are kept before removal, sent or not.'),
  P('smtp_helo_name', 'string', '$myhostname', 'Name sent in EHLO/HELO by the smtp client.'),
  P('smtp_connect_timeout', 'time', '30s', 'How long the smtp client waits for a TCP connection.'),
  P('proxymap_cache_ttl', 'time', '10s', 'How long proxymap keeps an answer from a database table (pgsql:, sqlite:), "no such key" included; failures are not kept. A user deleted from the database is refused by every host at the latest this long after.'),
  P('proxy_interfaces', 'list', '', 'Addresses (IP) on which this mail system receives mail through a proxy or NAT, as in Postfix: an MX host with one of them is this instance (mail for DOMAIN loops back to myself), and `postern dns check` expects the MX, PTR and SPF records to name them.'),
  P('smtp_port', 'int', '25', 'Port the smtp client connects to at an MX host (tests point it elsewhere).'),
  P('smtp_dead_destination_time', 'time', '60s', 'How long a destination that failed at connect or greeting is not tried again.'),
  P('smtp_connection_cache_time', 'time', '2s', 'How long an idle connection to a destination is kept for the next message.'),
  P('delay_warning_time', 'time', '0h', 'Send the sender one warning when a message has been delayed this long; 0 turns it off.'),
  P('bounce_template_sender', 'string', 'MAILER-DAEMON', 'Local part of the From: address of delivery status notifications.'),
  P('bounce_size_limit', 'size', '50000', 'Largest original message returned whole in a delivery status notification when the sender asked for it (DSN RET=FULL); larger ones are returned as headers only.'),

  // DKIM signing (cleanup)
  P('dkim_signing_table', 'string', '$config_directory/dkim/signing.table', 'Lines "domain selector keyfile [algorithm]": which key signs mail from which sender domain; or a type:source table (pgsql:, sqlite:) whose value for the domain is "selector keyfile [algorithm]", several separated by commas (docs/dkim.md).'),
  P('smtpd_sender_login_maps', 'list', '', 'Tables of "address-or-@domain login, login...": the logins that may send as an address besides its own (reject_sender_login_mismatch at MAIL FROM and for the From: header), as Postfix; a table that cannot answer gives 451 4.3.0.'),
  P('smtpd_reject_header_from_mismatch', 'bool', 'yes', 'Refuse (550 5.7.1) a submission whose From: header names an address the sender does not own: the login of an authenticated SMTP submission (the reject_sender_login_mismatch rule), or the local user of sendmail (LOGIN@$myorigin, LOGIN@$myhostname; the message is bounced to its sender). "no" queues it without a DKIM signature.'),
  P('dkim_key_directory', 'string', '$config_directory/dkim', 'Where "postern dkim keygen" writes private keys (readable by the queue owner only).'),

  // Message checks on mail from outside (smtpd; clients in mynetworks and authenticated clients skip them)
  P('smtpd_message_auth', 'bool', 'yes', 'Check SPF, DKIM, DMARC and ARC of mail from outside and add one Authentication-Results: header (incoming ones claiming $myhostname are removed by cleanup).'),
  P('smtpd_dmarc_reject', 'bool', 'yes', 'Honour DMARC p=reject: a failing message gets 550 5.7.1 at the end of DATA (when no, it is treated as p=quarantine).'),
  P('smtpd_dmarc_quarantine', 'bool', 'yes', 'Honour DMARC p=quarantine: a failing message is delivered with "X-Postern-Quarantine: dmarc" for the mailbox side to file as junk.'),
  P('smtpd_spf_hardfail_reject', 'bool', 'no', 'Reject mail whose MAIL FROM domain says SPF -all for the client (550 5.7.23); off by default, DMARC decides.'),
  P('spamd_address', 'string', '', 'SpamAssassin spamd to ask about each message from outside: host:port, [ipv6]:port or a Unix socket path; empty turns spam filtering off.'),
  P('spam_reject_score', 'int', '10', 'Reject (550 5.7.1) a message spamd scores at or above this; 0 never rejects, only adds the X-Spam-* headers.'),
  P('spamd_max_size', 'size', '512000', 'Larger messages are not sent to spamd (they pass unchecked, as with spamc).'),
  P('spamd_timeout', 'time', '30s', 'How long to wait for spamd\'s verdict; a slower or absent spamd means the message passes unchecked.'),
  P('backscatter_protection', 'bool', 'yes', 'Send a non-delivery notification for mail from outside only when its sender passed SPF or an aligned DKIM check; otherwise log and drop it.'),

  // Milters (Sendmail milter protocol 6, as Postfix speaks it; docs/milter.md)
  { ...P('smtpd_milters', 'string', '', 'Milters smtpd runs on mail from the network: unix:/path or inet:host:port, comma or space separated; { inet:host:port, default_action=accept } sets one milter\'s own options.'), check: checkMilterList },
  { ...P('non_smtpd_milters', 'string', '', 'Milters for mail not from smtpd (sendmail, pickup), in the same syntax as smtpd_milters.'), check: checkMilterList },
  P('milter_default_action', 'enum', 'tempfail', 'What happens when a milter is unreachable, times out or breaks the protocol: accept (go on without it), tempfail (451 4.7.1) or reject (550 5.7.1).', ['accept', 'tempfail', 'reject', 'quarantine']),
  P('milter_connect_timeout', 'time', '30s', 'How long to wait for a milter connection and its option negotiation.'),
  P('milter_command_timeout', 'time', '30s', 'How long to wait for a milter\'s reply to a command (connect, HELO, MAIL, RCPT, DATA, header, end of header).'),
  P('milter_content_timeout', 'time', '300s', 'How long to wait for a milter\'s reply to a body chunk or to the end of the message.'),
  P('milter_protocol', 'enum', '6', 'The milter protocol version offered to milters.', ['2', '3', '4', '6']),
  P('milter_macro_daemon_name', 'string', '$myhostname', 'The {daemon_name} macro sent to milters.'),
  P('milter_macro_v', 'string', 'Postern', 'The v macro (MTA name and version) sent to milters.'),
  P('milter_connect_macros', 'string', 'j {daemon_name} {daemon_addr} v _', 'Macros sent to milters with the connect event.'),
  P('milter_helo_macros', 'string', '{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}', 'Macros sent to milters with HELO.'),
  P('milter_mail_macros', 'string', 'i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}', 'Macros sent to milters with MAIL FROM.'),
  P('milter_rcpt_macros', 'string', 'i {rcpt_addr} {rcpt_host} {rcpt_mailer}', 'Macros sent to milters with each RCPT TO.'),
  P('milter_data_macros', 'string', 'i', 'Macros sent to milters with DATA.'),
  P('milter_end_of_header_macros', 'string', 'i', 'Macros sent to milters at the end of the header section.'),
  P('milter_end_of_data_macros', 'string', 'i', 'Macros sent to milters at the end of the message.'),
  P('milter_unknown_command_macros', 'string', '', 'Macros sent to milters with an unknown SMTP command.'),

  // Operations (the metrics service, docs/metrics.md)
  P('metrics_listen', 'string', '', 'host:port (loopback by example: 127.0.0.1:9154) where the metrics service serves Prometheus metrics (/metrics) and the read-only status page (/); empty (the default) turns it off and the metrics service is not started.'),

  // Local submission
  P('authorized_submit_users', 'list', 'static:anyone', 'Who may use the sendmail command (static:anyone or user names).'),
];

const byName = new Map(PARAMETERS.map((p) => [p.name, p]));

export function paramSpec(name: string): ParamSpec | undefined {
  return byName.get(name);
}
