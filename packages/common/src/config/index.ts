// main.cf and master.cf: the parameter table, parsing, the install layout, the child-process skeleton.
export * from './params.js';
export * from './config.js';
export * from './layout.js';
export * from './service.js';
