// The spool: queue ids and directories, the queue file format, queue operations, maildrop files.
export * from './spool.js';
export * from './queuefile.js';
export * from './queue-ops.js';
export * from './queue-list.js';
export * from './maildrop.js';
