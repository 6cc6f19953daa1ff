// @postern/common: what programs share, grouped by area (docs/ipc.md, docs/tables.md).
export * from './util/index.js';
export * from './config/index.js';
export * from './queue/index.js';
export * from './ipc/index.js';
export * from './dns/index.js';
export * from './tables/index.js';
export * from './mail/index.js';
export * from './milter/index.js';
