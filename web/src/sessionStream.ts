// A live viewer of one session's event log (docs/sessions-live.md): a single-use viewer ticket, a WebSocket that
// offers it as a subprotocol, `subscribe` after the last seq held, then the backlog, `live`, and every append as it
// is logged. Events reach `onEvents` once each, in seq order, with nothing missing before them.
import { api, ApiError, enc, type EventPage, type SessionEvent, type ViewerTicket } from "./api";

export type StreamStatus = "connecting" | "live" | "reconnecting" | "ended";

export interface StreamListener {
  onEvents: (events: SessionEvent[]) => void;
  onStatus: (status: StreamStatus, problem?: string) => void;
}

/** How long a gap may stay open before it is read over HTTP: pushes of close appends may cross on the way. */
export const GAP_WAIT_MS = 1000;
/** Waits before reconnecting after a close: at once for the first (an idle timeout), longer while it keeps failing. */
const RECONNECT_MS = [250, 1000, 2000, 5000, 10_000, 30_000];
const PAGE = 500;

export class SessionStream {
  /** The highest seq applied with nothing missing before it. */
  private last = 0;
  /** The highest seq known to exist (seen, announced truncated, or in `live`'s last_seq). */
  private highest = 0;
  private held = new Map<number, SessionEvent>();
  private socket: WebSocket | null = null;
  private live = false;
  private stopped = false;
  private failures = 0;
  private gapTimer: number | undefined;
  private reconnectTimer: number | undefined;
  private reading = false;
  private readAgain = false;

  constructor(private readonly sessionId: string, private readonly listener: StreamListener) {}

  start(): void {
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.gapTimer);
    window.clearTimeout(this.reconnectTimer);
    const socket = this.socket;
    this.socket = null;
    socket?.close();
  }

  /** Reads whatever was logged after `last` over HTTP: after the viewer's own action (its event may not be
   * pushed), for a cut backlog, or for a gap that stayed open. Calls made while a read runs fold into one more. */
  catchUp(): void {
    if (this.stopped) return;
    if (this.reading) {
      this.readAgain = true;
      return;
    }
    this.reading = true;
    void (async () => {
      try {
        do {
          this.readAgain = false;
          await this.readAfterLast();
        } while (this.readAgain && !this.stopped);
      } catch {
        // Unreachable for now: the gap stays known and is read again at the next push or reconnect.
      } finally {
        this.reading = false;
        this.watchGap();
      }
    })();
  }

  private async readAfterLast(): Promise<void> {
    for (;;) {
      const page = await api.get<EventPage>(
        `/api/sessions/${enc(this.sessionId)}/events?after=${this.last}&limit=${PAGE}`);
      if (this.stopped) return;
      this.highest = Math.max(this.highest, page.last_seq);
      // The log over HTTP has no holes; seqs missing before its first event expired (retention) and never come.
      if (page.items.length && page.items[0].seq > this.last + 1) this.last = page.items[0].seq - 1;
      this.accept(page.items);
      if (!page.next_cursor || !page.items.length) return;
    }
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.live = false;
    let ticket: ViewerTicket;
    try {
      ticket = await api.post<ViewerTicket>(`/api/sessions/${enc(this.sessionId)}/viewer-tickets`);
    } catch (caught) {
      // 404: the session is gone or no longer ours to see; 401 already sends the user to sign in.
      if (caught instanceof ApiError && [401, 403, 404].includes(caught.status)) this.end(caught.message);
      else this.reconnectLater();
      return;
    }
    if (this.stopped) return;
    let socket: WebSocket;
    try {
      // The ticket travels as a subprotocol, never in the URL (URLs end up in logs).
      socket = new WebSocket(ticket.url, ticket.protocols);
    } catch {
      this.reconnectLater();
      return;
    }
    this.socket = socket;
    socket.onopen = () => socket.send(JSON.stringify({ action: "subscribe", after: this.last }));
    socket.onmessage = (message) => {
      if (this.socket === socket && typeof message.data === "string") this.receive(message.data);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return; // stopped, or replaced
      this.socket = null;
      this.reconnectLater();
    };
  }

  private reconnectLater(): void {
    if (this.stopped) return;
    this.live = false;
    this.listener.onStatus("reconnecting");
    const wait = RECONNECT_MS[Math.min(this.failures, RECONNECT_MS.length - 1)];
    this.failures += 1;
    window.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = window.setTimeout(() => void this.connect(), wait);
  }

  private end(problem: string): void {
    this.stop();
    this.listener.onStatus("ended", problem);
  }

  private receive(text: string): void {
    let message: { type?: string; events?: SessionEvent[]; last_seq?: number; error?: { code?: string; message?: string } };
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.type === "events" && Array.isArray(message.events)) {
      this.accept(message.events);
      this.watchGap();
    } else if (message.type === "live") {
      this.live = true;
      this.failures = 0;
      this.listener.onStatus("live");
      this.highest = Math.max(this.highest, message.last_seq ?? 0);
      // A backlog cut at its size bound ends before last_seq: the rest is read over HTTP at once.
      if (this.last < (message.last_seq ?? 0) && !this.held.size) this.catchUp();
      else this.watchGap();
    } else if (message.type === "error") {
      const code = message.error?.code;
      if (code === "not_found") this.end("This session no longer exists.");
      else if (code === "access_revoked") this.end("You are no longer a member of this workspace.");
      // Anything else: the server closes, and the close reconnects.
    }
  }

  /** Drops what is already applied, holds what comes early, applies what follows `last` without a hole. */
  private accept(events: SessionEvent[]): void {
    for (const event of events) {
      this.highest = Math.max(this.highest, event.seq);
      // A truncated push stays a hole, to be read whole over HTTP.
      if (event.seq > this.last && !event.truncated) this.held.set(event.seq, event);
    }
    const ready: SessionEvent[] = [];
    for (let next = this.held.get(this.last + 1); next; next = this.held.get(this.last + 1)) {
      this.held.delete(next.seq);
      ready.push(next);
      this.last = next.seq;
    }
    if (ready.length) this.listener.onEvents(ready);
  }

  /** Once live, a hole that is still open after GAP_WAIT_MS is read over HTTP. */
  private watchGap(): void {
    if (this.highest <= this.last) {
      window.clearTimeout(this.gapTimer);
      this.gapTimer = undefined;
      return;
    }
    if (!this.live || this.gapTimer !== undefined || this.stopped) return;
    this.gapTimer = window.setTimeout(() => {
      this.gapTimer = undefined;
      if (this.highest > this.last) this.catchUp();
    }, GAP_WAIT_MS);
  }
}
