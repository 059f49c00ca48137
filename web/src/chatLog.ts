// The Chat view's reading of a session's event log (api.md, "Event"; docs/harnesses.md, "Event data"): turns in
// order, each with what the member sent and what the agent did, folded as it streams in.
import type { SessionEvent } from "./api";

export type TurnStatus = "queued" | "running" | "completed" | "failed" | "cancelled" | "interrupted";
export const ENDED: ReadonlySet<TurnStatus> = new Set(["completed", "failed", "cancelled", "interrupted"]);

export interface Reply { kind: "reply"; key: string; text: string; streaming: boolean }
export interface ToolCall {
  kind: "tool"; key: string; callId: string; name: string; input: unknown; output?: string; isError?: boolean;
}
export interface Approval {
  kind: "approval"; key: string; approvalId: string; tool: string; input: unknown; description: string;
  answer?: { allow: boolean; by: string };
}
export interface Notice { kind: "notice"; key: string; text: string }
export type Item = Reply | ToolCall | Approval | Notice;

export interface TurnView {
  id: string; text: string; by: string | null; at: string; model: string | null; status: TurnStatus;
  cancelRequested: boolean; items: Item[]; usage: Record<string, number> | null; reason: string | null;
}

const text = (value: unknown): string => (typeof value === "string" ? value : value == null ? "" : String(value));

/** Mutable on purpose: a reply streams in thousands of deltas, and each is applied in place. */
export class ChatLog {
  readonly turns: TurnView[] = [];
  private byTurn = new Map<string, TurnView>();
  private replies = new Map<string, Reply>();
  private tools = new Map<string, ToolCall>();
  private approvals = new Map<string, Approval>();

  apply(events: SessionEvent[]): void {
    for (const event of events) this.applyOne(event);
  }

  /** The turn the agent works on or is to work on next: the one Cancel stops. */
  get activeTurn(): TurnView | undefined {
    return this.turns.find((turn) => !ENDED.has(turn.status));
  }

  private turn(event: SessionEvent): TurnView {
    let turn = this.byTurn.get(event.turn_id);
    if (!turn) {
      // A log read from its middle (expired events) starts without the turn's `turn.queued`.
      turn = { id: event.turn_id, text: "", by: null, at: event.at, model: null, status: "queued",
        cancelRequested: false, items: [], usage: null, reason: null };
      this.byTurn.set(turn.id, turn);
      this.turns.push(turn);
    }
    return turn;
  }

  private applyOne(event: SessionEvent): void {
    const data = event.data ?? {};
    const turn = this.turn(event);
    switch (event.type) {
      case "turn.queued":
        turn.text = text(data.text);
        turn.by = typeof data.by === "string" ? data.by : null;
        turn.at = event.at;
        turn.model = typeof data.model === "string" ? data.model : null;
        break;
      case "turn.started":
        if (turn.status === "queued") turn.status = "running";
        if (typeof data.model === "string" && data.model) turn.model = data.model;
        break;
      case "message.delta":
      case "message": {
        const key = `${turn.id}:${text(data.message_id) || event.id}`;
        let reply = this.replies.get(key);
        if (!reply) {
          reply = { kind: "reply", key, text: "", streaming: true };
          this.replies.set(key, reply);
          turn.items.push(reply);
        }
        if (event.type === "message") {
          reply.text = text(data.text);
          reply.streaming = false;
        } else {
          reply.text += text(data.text);
        }
        break;
      }
      case "tool.call":
      case "tool.result": {
        const callId = text(data.call_id) || event.id;
        let tool = this.tools.get(callId);
        if (!tool) {
          tool = { kind: "tool", key: `tool:${callId}`, callId, name: text(data.name) || "tool", input: data.input };
          this.tools.set(callId, tool);
          turn.items.push(tool);
        }
        if (event.type === "tool.call") {
          tool.name = text(data.name) || tool.name;
          tool.input = data.input;
        } else {
          tool.output = text(data.output);
          tool.isError = data.is_error === true;
        }
        break;
      }
      case "approval.requested": {
        const approvalId = text(data.approval_id) || event.id;
        const approval: Approval = { kind: "approval", key: `approval:${approvalId}`, approvalId,
          tool: text(data.tool), input: data.input, description: text(data.description),
          answer: this.approvals.get(approvalId)?.answer };
        this.approvals.set(approvalId, approval);
        turn.items.push(approval);
        break;
      }
      case "approval.resolved": {
        const approvalId = text(data.approval_id);
        const answer = { allow: data.allow === true || data.decision === "allow", by: text(data.by) };
        const approval = this.approvals.get(approvalId);
        // An answer logged before its request (it should not be) is kept for when the request comes.
        if (approval) approval.answer ??= answer;
        else this.approvals.set(approvalId, { kind: "approval", key: "", approvalId, tool: "", input: null,
          description: "", answer });
        break;
      }
      case "notice":
        turn.items.push({ kind: "notice", key: event.id, text: text(data.text) });
        break;
      case "turn.cancel_requested":
        turn.cancelRequested = true;
        break;
      case "turn.completed":
        turn.status = "completed";
        turn.usage = data.usage && typeof data.usage === "object" ? data.usage as Record<string, number> : null;
        this.endReplies(turn);
        break;
      case "turn.failed": {
        const reason = text(data.reason) || null;
        turn.status = data.cancelled === true ? "cancelled" : reason === "interrupted" ? "interrupted" : "failed";
        turn.reason = reason;
        this.endReplies(turn);
        break;
      }
      default:
        break; // a type this console does not know yet: kept in the log, not shown
    }
  }

  private endReplies(turn: TurnView): void {
    for (const item of turn.items) if (item.kind === "reply") item.streaming = false;
  }
}

/** A tool call's input in one line: its command, path or query when it has one ("→ Bash ls -la"). */
export function toolSummary(input: unknown): string {
  if (input == null) return "";
  if (typeof input !== "object") return String(input);
  const fields = input as Record<string, unknown>;
  for (const name of ["command", "cmd", "file_path", "filePath", "path", "file", "pattern", "url", "query",
    "description"]) {
    const value = fields[name];
    if (typeof value === "string" && value) return value;
    if (Array.isArray(value) && value.every((part) => typeof part === "string")) return value.join(" ");
  }
  const first = Object.values(fields).find((value) => typeof value === "string" && value);
  return typeof first === "string" ? first : JSON.stringify(input);
}
