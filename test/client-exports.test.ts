/**
 * The package exports the client library as `charla/client` (ESM with type
 * declarations), resolved through the package's own name as an application
 * that depends on charla would import it.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as client from '../src/client/index.js';

const root = new URL('../../', import.meta.url);
const pkg = JSON.parse(readFileSync(new URL('package.json', root), 'utf8'));

describe('package exports', () => {
  it('maps ./client to the built ESM entry and its declarations', () => {
    const entry = pkg.exports['./client'];
    assert.equal(entry.import, './dist/src/client/index.js');
    assert.equal(entry.types, './dist/src/client/index.d.ts');
    for (const file of [entry.import, entry.types]) {
      assert.ok(existsSync(fileURLToPath(new URL(file, root))), `${file} exists`);
    }
    const dts = readFileSync(new URL(entry.types, root), 'utf8');
    assert.match(dts, /StreamChat/);
    assert.match(dts, /RequestChat/);
    // The main entry stays what it was.
    assert.equal(pkg.exports['.'], `./${pkg.main}`);
    assert.ok(pkg.dependencies['socket.io-client'], 'socket.io-client is a runtime dependency');
  });

  it('resolves charla/client by the package name to the same module', async () => {
    const name = 'charla/client';
    assert.equal(import.meta.resolve(name), new URL('dist/src/client/index.js', root).href);
    const viaName = (await import(name)) as typeof client;
    assert.equal(viaName.StreamChat, client.StreamChat);
    assert.equal(viaName.RequestChat, client.RequestChat);
    assert.equal(viaName.ChatClientError, client.ChatClientError);
  });

  it('the stream part imports nothing from Node (it runs in browsers)', () => {
    for (const file of ['stream.js', 'bounded.js', 'emitter.js', 'errors.js', 'types.js']) {
      const code = readFileSync(new URL(`dist/src/client/${file}`, root), 'utf8');
      const imports = [...code.matchAll(/from\s+'([^']+)'/g)].map((m) => m[1] as string);
      assert.deepEqual(
        imports.filter((i) => !i.startsWith('./')),
        [],
        `${file} imports only its siblings`,
      );
    }
  });
});
