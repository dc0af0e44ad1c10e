/**
 * The frame decoder on raw bytes, with no socket: what it hands on, what it
 * refuses and with which close code, and what it holds meanwhile.
 */
import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Utf8Validator } from '../src/transport/utf8.js';
import { type FrameSink, Receiver } from '../src/transport/websocket-receiver.js';
import { clientFrame, Op } from './hostile.js';

type Event =
  | ['text', string]
  | ['binary', number]
  | ['ping', string]
  | ['pong']
  | ['close', number]
  | ['error', number, string];

class Recorder implements FrameSink {
  readonly events: Event[] = [];
  frames = 0;
  onFrame(): void {
    this.frames++;
  }
  onMessage(binary: boolean, payload: Buffer): void {
    this.events.push(binary ? ['binary', payload.length] : ['text', payload.toString('utf8')]);
  }
  onPing(payload: Buffer): void {
    this.events.push(['ping', payload.toString()]);
  }
  onPong(): void {
    this.events.push(['pong']);
  }
  onClose(code: number): void {
    this.events.push(['close', code]);
  }
  onProtocolError(code: number, reason: string): void {
    this.events.push(['error', code, reason]);
  }
}

const MAX = 1024;

function receiver(limits = { maxPayload: MAX, maxFragments: 8 }) {
  const sink = new Recorder();
  return { sink, r: new Receiver(limits, sink) };
}

/** Feeds `bytes` in pieces of `size` (1 = byte by byte). */
function feed(r: Receiver, bytes: Buffer, size = bytes.length): void {
  for (let i = 0; i < bytes.length; i += size) r.push(bytes.subarray(i, i + size));
}

const closePayload = (code: number, reason = '') => {
  const b = Buffer.alloc(2 + Buffer.byteLength(reason));
  b.writeUInt16BE(code);
  b.write(reason, 2);
  return b;
};

describe('Receiver', () => {
  const stream = () =>
    Buffer.concat([
      clientFrame(Op.text, 'hola ñandú'),
      clientFrame(Op.text, 'uno ', { fin: false }),
      clientFrame(Op.ping, 'p'),
      clientFrame(Op.continuation, 'dos ', { fin: false }),
      clientFrame(Op.continuation, '', { fin: false }),
      clientFrame(Op.continuation, 'tres'),
      clientFrame(Op.binary, Buffer.alloc(300)),
      clientFrame(Op.pong),
      clientFrame(Op.text, 'x'.repeat(200)),
      clientFrame(Op.text, ''),
      clientFrame(Op.close, closePayload(4000, 'bye')),
      clientFrame(Op.text, 'after close'),
    ]);
  const expected: Event[] = [
    ['text', 'hola ñandú'],
    ['ping', 'p'],
    ['text', 'uno dos tres'],
    ['binary', 300],
    ['pong'],
    ['text', 'x'.repeat(200)],
    ['text', ''],
    ['close', 4000],
  ];

  for (const size of [1, 2, 3, 7, 64, 100_000]) {
    it(`decodes messages, fragments and control frames fed ${size} bytes at a time`, () => {
      const { sink, r } = receiver();
      feed(r, stream(), size);
      assert.deepEqual(sink.events, expected);
      assert.equal(sink.frames, 11, 'every frame up to the close is counted');
      assert.equal(r.heldBytes, 0);
    });
  }

  it('reports a close frame without a code as 1005', () => {
    const { sink, r } = receiver();
    r.push(clientFrame(Op.close));
    assert.deepEqual(sink.events, [['close', 1005]]);
  });

  const refusals: Array<[string, () => Buffer, number]> = [
    ['an unmasked frame', () => Buffer.from([0x81, 0x02, 0x68, 0x69]), 1002],
    ['reserved bits', () => clientFrame(Op.text, 'hi', { rsv: 4 }), 1002],
    ['an unknown opcode', () => clientFrame(3, 'hi'), 1002],
    ['a fragmented ping', () => clientFrame(Op.ping, 'hi', { fin: false }), 1002],
    ['a ping over 125 bytes', () => clientFrame(Op.ping, 'x'.repeat(126)), 1002],
    ['a continuation without a start', () => clientFrame(Op.continuation, 'hi'), 1002],
    [
      'a new message inside a fragmented one',
      () => Buffer.concat([clientFrame(Op.text, 'a', { fin: false }), clientFrame(Op.text, 'b')]),
      1002,
    ],
    ['a one-byte close payload', () => clientFrame(Op.close, Buffer.from([3])), 1002],
    ['a reserved close code', () => clientFrame(Op.close, closePayload(1005)), 1002],
    [
      'a close reason that is not UTF-8',
      () => clientFrame(Op.close, Buffer.concat([closePayload(1000), Buffer.from([0xff])])),
      1002,
    ],
    ['invalid UTF-8', () => clientFrame(Op.text, Buffer.from([0xc3, 0x28])), 1007],
    ['an encoded surrogate', () => clientFrame(Op.text, Buffer.from([0xed, 0xa0, 0x80])), 1007],
    ['an overlong encoding', () => clientFrame(Op.text, Buffer.from([0xc0, 0xaf])), 1007],
    [
      'a text message that ends inside a character',
      () =>
        Buffer.concat([
          clientFrame(Op.text, Buffer.from([0x61, 0xe2, 0x82]), { fin: false }),
          clientFrame(Op.continuation, ''),
        ]),
      1007,
    ],
    ['a message over the limit', () => clientFrame(Op.text, 'x'.repeat(MAX + 1)), 1009],
    [
      'fragments that add up past the limit',
      () =>
        Buffer.concat([
          clientFrame(Op.text, 'x'.repeat(MAX), { fin: false }),
          clientFrame(Op.continuation, 'x'),
        ]),
      1009,
    ],
    [
      'a 64-bit length past the limit, before its payload arrives',
      () => {
        const b = Buffer.alloc(14);
        b[0] = 0x81;
        b[1] = 0x80 | 127;
        b.writeBigUInt64BE(2n ** 63n, 2);
        return b;
      },
      1009,
    ],
  ];
  for (const [what, bytes, code] of refusals) {
    it(`refuses ${what} with ${code}, byte by byte too, and reads nothing after`, () => {
      for (const size of [1, 100_000]) {
        const { sink, r } = receiver();
        feed(r, Buffer.concat([bytes(), clientFrame(Op.text, 'after the error')]), size);
        assert.equal(sink.events.length, 1, JSON.stringify(sink.events));
        assert.equal(sink.events[0]?.[0], 'error');
        assert.equal(sink.events[0]?.[1], code);
        assert.equal(r.heldBytes, 0);
      }
    });
  }

  it('keeps nothing of empty continuation frames, counts each, and caps the fragments', () => {
    const { sink, r } = receiver({ maxPayload: MAX, maxFragments: 100 });
    r.push(clientFrame(Op.text, 'a', { fin: false }));
    const empty = clientFrame(Op.continuation, '', { fin: false });
    for (let i = 0; i < 98; i++) r.push(empty);
    assert.equal(sink.frames, 99);
    assert.ok(r.heldBytes <= 256, `holds ${r.heldBytes} bytes`);
    assert.deepEqual(sink.events, []);
    r.push(Buffer.concat([empty, empty]));
    assert.deepEqual(sink.events, [['error', 1009, 'too many fragments']]);
  });

  it('refuses invalid UTF-8 as soon as it arrives, before the frame is complete', () => {
    const { sink, r } = receiver({ maxPayload: 100_000, maxFragments: 8 });
    const bytes = clientFrame(Op.text, Buffer.concat([Buffer.from('ok '), Buffer.alloc(60_000)]));
    // Corrupt the first payload byte after "ok " (masked with 0x12 0x34 0x56 0x78).
    const at = 4 + 4 + 3;
    bytes[at] = 0xff ^ 0x78;
    r.push(bytes.subarray(0, at + 1));
    assert.deepEqual(sink.events, [['error', 1007, 'invalid UTF-8']]);
  });

  it('refuses invalid UTF-8 in the middle of a fragmented message, before it ends', () => {
    const { sink, r } = receiver();
    r.push(clientFrame(Op.text, 'caf\u00e9 ', { fin: false }));
    r.push(clientFrame(Op.continuation, Buffer.from([0x80, 0x41]), { fin: false }));
    assert.deepEqual(sink.events, [['error', 1007, 'invalid UTF-8']]);
  });

  it('holds at most what arrived of a frame, not what its header announces', () => {
    const { r } = receiver({ maxPayload: 1 << 20, maxFragments: 8 });
    const bytes = clientFrame(Op.binary, Buffer.alloc(1 << 20));
    r.push(bytes.subarray(0, 14 + 1000));
    assert.ok(r.heldBytes <= 4096, `holds ${r.heldBytes} bytes`);
  });

  it('reassembles a frame that arrives 8 bytes at a time in linear time', () => {
    // Copying the partial frame again for every piece made this quadratic:
    // 65 KB in 8-byte pieces took about a second of CPU.
    const payload = Buffer.alloc(65_000, 0x61);
    const bytes = clientFrame(Op.text, payload);
    const { sink, r } = receiver({ maxPayload: 1 << 20, maxFragments: 8 });
    const start = process.cpuUsage();
    feed(r, bytes, 8);
    const used = process.cpuUsage(start);
    assert.equal(sink.events.length, 1);
    assert.equal((sink.events[0] as ['text', string])[1].length, 65_000);
    const ms = (used.user + used.system) / 1000;
    assert.ok(ms < 300, `took ${ms.toFixed(0)} ms of CPU`);
  });

  it('decodes any split of any valid frame sequence the same as whole', () => {
    const frameArb = fc.oneof(
      fc.string({ maxLength: 300 }).map((s) => clientFrame(Op.text, s)),
      fc.uint8Array({ maxLength: 300 }).map((b) => clientFrame(Op.binary, Buffer.from(b))),
      fc.string({ maxLength: 100 }).map((s) => clientFrame(Op.ping, s.slice(0, 40))),
    );
    fc.assert(
      fc.property(
        fc.array(frameArb, { maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        (frames, cuts) => {
          // Each receiver unmasks in place, so each gets its own copy.
          const bytes = Buffer.concat(frames);
          const whole = receiver({ maxPayload: 1 << 16, maxFragments: 8 });
          whole.r.push(Buffer.from(bytes));
          const split = receiver({ maxPayload: 1 << 16, maxFragments: 8 });
          const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort(
            (a, b) => a - b,
          );
          let prev = 0;
          for (const p of [...points, bytes.length]) {
            split.r.push(bytes.subarray(prev, p));
            prev = p;
          }
          assert.deepEqual(split.sink.events, whole.sink.events);
          assert.equal(whole.sink.events.length, frames.length);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('Utf8Validator', () => {
  it('agrees with the platform on any bytes, in any pieces', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 64 }),
          fc.string({ unit: 'binary', maxLength: 32 }).map((s) => new Uint8Array(Buffer.from(s))),
        ),
        fc.nat(),
        (bytes, cut) => {
          const buf = Buffer.from(bytes);
          const at = buf.length === 0 ? 0 : cut % buf.length;
          const v = new Utf8Validator();
          const ok = v.write(buf, 0, at) && v.write(buf, at) && v.end();
          assert.equal(ok, isUtf8(buf), buf.toString('hex'));
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('refuses what RFC 3629 refuses', () => {
    for (const hex of ['c0af', 'e08080', 'eda080', 'f4908080', 'f5', 'ff', '80', 'c2']) {
      const v = new Utf8Validator();
      assert.equal(v.write(Buffer.from(hex, 'hex')) && v.end(), false, hex);
    }
    for (const text of ['', 'a', 'ñ', '€', '𝄞', '\u{10FFFF}']) {
      const v = new Utf8Validator();
      assert.equal(v.write(Buffer.from(text)) && v.end(), true, text);
    }
  });
});
