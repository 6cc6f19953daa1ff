// Generic helpers with no mail in them: descriptors and files, system accounts, group commit, the log.
export * from './files.js';
export * from './system.js';
export * from './group-commit.js';
export * from './log.js';
