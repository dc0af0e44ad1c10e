/**
 * A fixed offered rate for the load generators: `tick` is called `rate` times
 * a second on average, from a 5 ms timer, the fractions carried over, so the
 * rate holds whatever the timer's jitter.
 */
export function paced(rate: number, tick: () => void): NodeJS.Timeout {
  let due = 0;
  let last = performance.now();
  return setInterval(() => {
    const now = performance.now();
    due += ((now - last) / 1000) * rate;
    last = now;
    for (; due >= 1; due--) tick();
  }, 5);
}
