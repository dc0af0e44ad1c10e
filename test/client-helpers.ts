/** Test helpers for the client library: recorders and polling waits. */
import type { StreamChat, StreamChatMessage } from '../src/client/index.js';

/** Records every event a StreamChat emits, in order. */
export class Recorder {
  readonly chats: StreamChatMessage[] = [];
  readonly events: Array<[string, unknown]> = [];

  constructor(readonly chat: StreamChat) {
    chat.on('chat', (m) => {
      this.chats.push(m);
      this.events.push(['chat', m]);
    });
    for (const e of ['open', 'auth', 'history', 'stream', 'delete', 'error', 'close'] as const) {
      chat.on(e, (x: unknown) => this.events.push([e, x]));
    }
  }

  texts(): string[] {
    return this.chats.map((m) => m.message);
  }

  of(event: string): any[] {
    return this.events.filter(([e]) => e === event).map(([, x]) => x);
  }
}

export async function until(pred: () => boolean, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
