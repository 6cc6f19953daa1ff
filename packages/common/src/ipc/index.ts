/**
 * Everything programs say to each other over Unix sockets: the message types
 * (protocol.ts), the schemas that check them (schema.ts), and the one server
 * skeleton (server.ts). The wire itself is framing.ts.
 */
export * from './schema.js';
export * from './protocol.js';
export * from './server.js';
export * from './cleanup-client.js';
export * from './connection.js';
export * from './idle-pool.js';
export * from './framing.js';
export * from './request-pool.js';
