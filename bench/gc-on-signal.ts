/**
 * Preloaded into every server under test (`--import`), never part of charla:
 * SIGUSR2 runs a full garbage collection, so idle memory is read as what the
 * connections retain, not as garbage the collector has not reached yet.
 */
process.on('SIGUSR2', () => {
  (globalThis as { gc?: () => void }).gc?.();
});
