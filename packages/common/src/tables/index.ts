// The lookup interface (types.ts), the registry of table types, and the file backends.
export * from './types.js';
export * from './registry.js';
export { parseTexthash } from './texthash.js';
export { WatchedFile } from './watched-file.js';
export { closeSqlTables, parseSqlCf, expandQuery } from './sql-cf.js';
export type { ProxyOp } from './proxy-client.js';
export * from './users.js';
export * from './password.js';
export { PasswordChecker, PasswordCheckUnavailable } from './password-check.js';
export * from './aliases.js';
