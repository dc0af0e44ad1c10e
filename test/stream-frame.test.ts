import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import { frameText } from '../src/transport/stream-ws.js';

// ws ships its frame decoder, but its type definitions do not declare it.
const { Receiver } = createRequire(import.meta.url)('ws') as { Receiver: any };

/** Parses frames with ws's own client-side receiver, as a browser would. */
function parse(frame: Buffer): string[] {
  const got: string[] = [];
  const receiver = new Receiver({ isServer: false, maxPayload: 0 });
  receiver.on('message', (data: Buffer, isBinary: boolean) => {
    assert.equal(isBinary, false);
    got.push(data.toString());
  });
  receiver.write(frame);
  return got;
}

describe('frameText', () => {
  it('builds unmasked text frames at every length encoding', () => {
    for (const n of [0, 1, 125, 126, 127, 65535, 65536, 70000]) {
      const text = 'é'.repeat(Math.floor(n / 2)) + 'a'.repeat(n % 2);
      const frame = frameText(text);
      assert.equal(frame[0], 0x81);
      assert.deepEqual(parse(frame), [text], `length ${n}`);
    }
  });
  it('frames several messages back to back as one buffer stream', () => {
    const both = Buffer.concat([frameText('uno'), frameText('dos'.repeat(100))]);
    assert.deepEqual(parse(both), ['uno', 'dos'.repeat(100)]);
  });
});
