/**
 * UTF-8 validation that can be fed a message in pieces, so a WebSocket text
 * message is refused (1007) as soon as the bytes that make it invalid arrive,
 * not once it is whole (RFC 6455 section 8.1 allows failing fast). The rules
 * are those of RFC 3629 section 4: no overlong forms, no surrogates, nothing
 * past U+10FFFF. Three numbers of state, no allocation.
 */
export class Utf8Validator {
  /** Continuation bytes still expected in the current character. */
  private need = 0;
  /** Allowed range of the next continuation byte (narrower after E0, ED, F0, F4). */
  private lo = 0x80;
  private hi = 0xbf;

  /** Feeds the next bytes of the message; false as soon as they cannot be UTF-8. */
  write(bytes: Buffer, start = 0, end = bytes.length): boolean {
    let { need, lo, hi } = this;
    for (let i = start; i < end; i++) {
      const b = bytes[i] as number;
      if (need === 0) {
        if (b < 0x80) continue;
        if (b >= 0xc2 && b <= 0xdf) {
          need = 1;
        } else if (b >= 0xe0 && b <= 0xef) {
          need = 2;
          if (b === 0xe0) lo = 0xa0;
          else if (b === 0xed) hi = 0x9f;
        } else if (b >= 0xf0 && b <= 0xf4) {
          need = 3;
          if (b === 0xf0) lo = 0x90;
          else if (b === 0xf4) hi = 0x8f;
        } else {
          return false;
        }
        continue;
      }
      if (b < lo || b > hi) return false;
      need--;
      lo = 0x80;
      hi = 0xbf;
    }
    this.need = need;
    this.lo = lo;
    this.hi = hi;
    return true;
  }

  /** True when the bytes so far end on a character boundary; resets for the next message. */
  end(): boolean {
    const complete = this.need === 0;
    this.need = 0;
    this.lo = 0x80;
    this.hi = 0xbf;
    return complete;
  }
}
