/** The Store conformance suite against SQLite, one temp file per test. */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { SqliteStore } from '../src/store/sqlite.js';
import { tempDir } from './helpers.js';
import { storeSuite } from './store-suite.js';

storeSuite('sqlite', async () => {
  const dir = tempDir('charla-store-');
  return {
    open: async () => new SqliteStore(join(dir, 'charla.db')),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});
