/**
 * Server frames of RFC 6455 (section 5.2): unmasked, FIN set, built once and
 * written as the same bytes to every receiver. No extensions are negotiated,
 * so a frame is its header and its payload.
 */

export const Opcode = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

/** Close codes of RFC 6455 section 7.4.1 that charla sends on protocol errors. */
export const ProtocolClose = {
  normal: 1000,
  protocolError: 1002,
  /** Received in place of a code when a close frame carried none (never sent). */
  noStatus: 1005,
  invalidData: 1007,
  messageTooBig: 1009,
} as const;

/** Builds one unmasked server frame with FIN set. */
export function frame(opcode: number, payload: string | Buffer): Buffer {
  const length = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  const head = length < 126 ? 2 : length < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(head + length);
  out[0] = 0x80 | opcode;
  if (length < 126) {
    out[1] = length;
  } else if (length < 65536) {
    out[1] = 126;
    out.writeUInt16BE(length, 2);
  } else {
    out[1] = 127;
    out.writeBigUInt64BE(BigInt(length), 2);
  }
  if (typeof payload === 'string') out.write(payload, head, 'utf8');
  else payload.copy(out, head);
  return out;
}

export const frameText = (text: string): Buffer => frame(Opcode.text, text);

export function closeFrame(code: number, reason: string): Buffer {
  const payload = Buffer.allocUnsafe(2 + Buffer.byteLength(reason));
  payload.writeUInt16BE(code, 0);
  payload.write(reason, 2, 'utf8');
  return frame(Opcode.close, payload);
}

/** The heartbeat's ping: empty, and the same bytes for every connection. */
export const PING_FRAME = frame(Opcode.ping, Buffer.alloc(0));
