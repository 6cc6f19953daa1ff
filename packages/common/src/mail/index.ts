// Mail-specific rules shared by programs: addresses, headers, SMTP replies, restriction lists, routing.
export * from './address.js';
export * from './headers.js';
export * from './smtp-replies.js';
export * from './restriction-lists.js';
export * from './sender-login.js';
export * from './domains.js';
export * from './transport.js';
export * from './dkim-table.js';
export * from './log-events.js';
export * from './mta-sts-policy.js';
