/**
 * Bounds how much of one client's costly work runs at once: `running` at a
 * time, up to `waiting` more queued in arrival order (a resolver each, nothing
 * read yet), and the rest refused with `refuse()`. What a client can make the
 * server hold in memory is then a fixed number of answers, whatever it sends.
 */
export class Gate {
  private active = 0;
  private readonly queue: Array<() => void> = [];

  constructor(
    private readonly running: number,
    private readonly waiting: number,
    private readonly refuse: () => Error,
  ) {}

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.active < this.running) {
      this.active += 1;
    } else {
      if (this.queue.length >= this.waiting) throw this.refuse();
      // The slot is handed over by the run that finishes, still counted as active.
      await new Promise<void>((resolve) => this.queue.push(resolve));
    }
    try {
      return await work();
    } finally {
      const next = this.queue.shift();
      if (next) next();
      else this.active -= 1;
    }
  }
}
