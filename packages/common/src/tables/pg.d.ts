// pg ships no types and @types/pg is not a dependency: the little pgsql.ts uses is typed there.
declare module 'pg';
