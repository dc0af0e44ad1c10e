// What the server tells the client about itself, from `/client-config.json`,
// fetched once for the whole page: the attachment URL prefixes it accepts
// (attachments.js) and how long a request chat message may still be edited
// or deleted (conversation.js).

/**
 * The settings as known so far: the defaults until `clientConfigReady` has
 * settled, and for good if the file could not be loaded.
 */
export const clientConfig = {
  /** Attachment URL prefixes: only URLs under one become links or images. */
  attachmentUrlPrefixes: [],
  /** Seconds after `createdAt` that the sender may edit or delete; undefined: not known. */
  editWindowSeconds: undefined,
  /**
   * How far the server's clock is ahead of this browser's (ms), from the
   * answer's `Date` header; 0 unless they differ by more than its whole-second
   * precision. Times the server stamps are compared with `serverNow()`.
   */
  clockOffsetMs: 0,
};

/** The server's time now, as far as this browser can tell. */
export function serverNow() {
  return Date.now() + clientConfig.clockOffsetMs;
}

/** Tolerated difference between the clocks: the `Date` header counts whole seconds. */
const CLOCK_SLACK_MS = 2000;

/**
 * Settles once the settings are known (or could not be loaded, at most 5 s
 * later): a view draws its messages only after it.
 */
export const clientConfigReady = fetch('/client-config.json', {
  signal: AbortSignal.timeout(5000),
})
  .then((r) => {
    const offset = Date.parse(r.headers.get('date') ?? '') - Date.now();
    if (Math.abs(offset) > CLOCK_SLACK_MS) clientConfig.clockOffsetMs = offset;
    return r.ok ? r.json() : {};
  })
  .then((c) => {
    if (Array.isArray(c?.attachmentUrlPrefixes)) {
      clientConfig.attachmentUrlPrefixes = c.attachmentUrlPrefixes.map(String);
    }
    const seconds = Number(c?.editWindowSeconds);
    if (c?.editWindowSeconds != null && Number.isFinite(seconds) && seconds > 0) {
      clientConfig.editWindowSeconds = seconds;
    }
  })
  .catch(() => {});
