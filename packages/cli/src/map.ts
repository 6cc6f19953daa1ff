/**
 * `postern map query TABLE KEY`: Postfix's `postmap -q KEY TABLE`. Looks KEY
 * up exactly as written in the table (keys compare case-insensitively) and
 * prints the value; exits 1 when it is not there. TABLE is `type:source`
 * (texthash:/etc/postern/virtual) or the name of a parameter that lists
 * tables (virtual_alias_maps), whose tables are then asked in order.
 */
import { Command } from 'commander';
import { MainConfig, openTable, paramSpec, TableError } from '@postern/common';

export function addMapCommands(program: Command, configDir: () => string, setExit: (code: number) => void): void {
  const map = program.command('map').description('lookup tables (postmap)');
  map.command('query <table> <key>').description('print the value of KEY in TABLE (postmap -q); exit 1 when not found')
    .action(async (table: string, key: string) => {
      const specs = /^[a-z0-9_]+$/.test(table) && paramSpec(table) ? MainConfig.load(configDir()).list(table) : [table];
      if (!specs.length) {
        process.stderr.write(`postern: ${table} names no table\n`);
        return setExit(1);
      }
      try {
        for (const spec of specs) {
          const value = await openTable(spec, spec === table ? undefined : table)!.lookup(key);
          if (value !== undefined) { console.log(value); return; }
        }
      } catch (e) {
        if (!(e instanceof TableError)) throw e;
        process.stderr.write(`postern: ${(e as Error).message}\n`);
        return setExit(1);
      }
      process.stderr.write(`postern: ${key}: not found in ${table}\n`);
      setExit(1);
    });
}
