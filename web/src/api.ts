// The console's only way to the server: same-origin calls under /api (CloudFront sends /api/* to the HTTP
// API; the embedded gateway serves both), the session cookie, and the double-submit CSRF header.

export type Role = "guest" | "developer" | "maintainer" | "owner";
export const ROLES: Role[] = ["guest", "developer", "maintainer", "owner"];

export interface User { id: string; email: string; name: string; role: "user" | "admin"; email_verified: boolean }
export interface Providers {
  password: boolean; oidc: { id: string; name: string }[]; invite_only?: boolean; setup_pending?: boolean;
}
export interface Invitation {
  id: string; workspace_id: string; workspace_name: string; email: string; role: Role; invited_by: string;
  inviter_name: string; created_at: string; expires_at: string;
}
export interface Workspace { id: string; name: string; role: Role; created_at: string; status?: "active" | "deleting" }
export interface Member { user_id: string; email: string; name: string; role: Role; joined_at: string }
export interface AgentInfo {
  hostname?: string; os?: string; agent_type?: string; working_directory?: string;
  versions?: Record<string, string>;
}
export interface Sandbox {
  id: string; workspace_id: string; name: string; kind: "cloud" | "local"; type: string; status: string;
  status_reason: string | null; created_by: string; created_at: string; last_activity_at: string | null;
  last_heartbeat_at: string | null; agent_info: AgentInfo; cpu?: number | null; memory?: number | null;
  idle_timeout?: number | null;
  shared?: boolean; // a local agent: may other developers open it (only its owner may, otherwise)
}
export interface SandboxEvent { at: string; phase: string; reason: string | null }
export interface AgentCode { code: string; expires_at: string; command: string }
export interface Token { id: string; name: string; created_at: string; expires_at: string | null; last_used_at: string | null }
export interface CreatedToken extends Token { token: string }
export interface LlmQuota { max_rpd: number; used_today: number; resets_at: string; uses_default?: boolean; default_max_rpd?: number; max_settable?: number | null; may_set_unlimited?: boolean }
/** One row of a usage report: `key` is the day (YYYY-MM-DD), sandbox id or model it groups by. */
export interface UsageRow {
  key: string; requests: number; errors: number; input_tokens: number; output_tokens: number;
  cache_read_tokens: number; cache_write_tokens: number;
}
export interface UsageReport { from: string; to: string; group_by: string; items: UsageRow[]; totals: UsageRow }
export interface Page<T> { items: T[]; next_cursor: string | null }
export interface ClientConfig { api_url: string; websocket_url: string; relay_url: string; llm_base_url: string; version: string }

/** An API failure, carrying a sentence a person can act on. */
export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string) {
    super(message);
  }
}

const FALLBACK_SENTENCES: Record<number, string> = {
  400: "The request was not accepted. Check the form and try again.",
  401: "You are not signed in, or your session has ended. Sign in again.",
  403: "You are not allowed to do that.",
  404: "That was not found, or you cannot see it.",
  409: "That conflicts with the current state. Reload and try again.",
  413: "That is too large.",
  429: "Too many requests. Wait a little and try again.",
  500: "The server ran into a problem. Try again in a moment.",
  503: "The server is busy or unavailable. Try again in a moment.",
};

/** Ends the server's message as a sentence; its first word may be a field name, so its case is kept. */
function sentence(text: string): string {
  const trimmed = text.trim();
  return !trimmed || /[.!?]$/.test(trimmed) ? trimmed : `${trimmed}.`;
}

async function errorFrom(response: Response): Promise<ApiError> {
  let code = "http_" + response.status;
  let message = "";
  try {
    const body = await response.json();
    if (body?.error?.message) {
      code = body.error.code ?? code;
      message = body.error.message;
    }
  } catch {
    // Not our JSON (a gateway page, say): fall back on the status.
  }
  if (!message) message = FALLBACK_SENTENCES[response.status] ?? `The server answered with status ${response.status}.`;
  if (response.status === 429) {
    const wait = response.headers.get("retry-after");
    if (wait && /^\d+$/.test(wait)) message = `${sentence(message)} Try again in ${wait} seconds.`;
  }
  return new ApiError(response.status, code, sentence(message));
}

function csrfToken(): string | null {
  const match = document.cookie.split("; ").find((part) => part.startsWith("agentserver_csrf="));
  return match ? decodeURIComponent(match.slice("agentserver_csrf=".length)) : null;
}

/** Whoever wants to hear that the session is gone (the app sends the user to sign in). */
let onSignedOut: (() => void) | null = null;
export function whenSignedOut(listener: (() => void) | null): void {
  onSignedOut = listener;
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!["GET", "HEAD"].includes(method)) {
    const csrf = csrfToken();
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  let response: Response;
  try {
    response = await fetch(path, {
      method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "unreachable", "The server could not be reached. Check your connection and try again.");
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401 && !path.startsWith("/api/auth/")) onSignedOut?.();
    throw error;
  }
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

export const api = {
  get: <T>(path: string) => request<T>("GET", path),
  post: <T>(path: string, body?: unknown) => request<T>("POST", path, body),
  put: <T>(path: string, body?: unknown) => request<T>("PUT", path, body),
  patch: <T>(path: string, body?: unknown) => request<T>("PATCH", path, body),
  del: <T>(path: string) => request<T>("DELETE", path),
};

export const enc = encodeURIComponent;

let config: Promise<ClientConfig | null> | null = null;
/** /config.json: the endpoints the deployment wrote next to the console (null if it cannot be read). */
export function clientConfig(): Promise<ClientConfig | null> {
  config ??= fetch("/config.json", { cache: "no-store" })
    .then((response) => (response.ok ? (response.json() as Promise<ClientConfig>) : null))
    .catch(() => null);
  return config;
}

/** Role ranks as in docs/roles.md, so pages offer only what the caller's role may do. */
export function atLeast(role: Role | undefined, minimum: Role): boolean {
  return role !== undefined && ROLES.indexOf(role) >= ROLES.indexOf(minimum);
}

// Sessions (api.md, "Sessions"): a conversation with one agent, its turns and its event log.
export type PermissionMode = "ask" | "accept-edits" | "full-auto";
export interface ChatSession {
  id: string; workspace_id: string; agent_id: string; agent_type: string; title: string; created_by: string;
  created_at: string; model: string | null; permission_mode: PermissionMode; harness_session_id: string | null;
  state: "idle" | "running"; current_turn_id: string | null; queued_turn_ids: string[]; last_seq: number;
}
/** Where a new turn stands: the agent has it, it waits for a local agent to reconnect, a cloud sandbox resumes for it. */
export type Delivery = "agent_online" | "waiting_for_agent" | "resuming_agent" | "agent_unavailable";
export interface Turn {
  id: string; session_id: string; text: string; status: string; model: string | null; created_by: string;
  created_at: string; ended_at: string | null; reason: string | null; usage: Record<string, number> | null;
  delivery?: Delivery | null;
}
export interface SessionEvent {
  seq: number; id: string; turn_id: string; type: string; at: string; data: Record<string, unknown>; raw?: unknown;
  truncated?: boolean; // a live push too large for one WebSocket message: read it whole over HTTP
}
export interface EventPage { items: SessionEvent[]; next_cursor: string | null; last_seq: number }
export interface ViewerTicket { ticket: string; expires_at: string; url: string; protocols: string[] }

// Agent cards (api.md, "Agent cards"): what an agent reports plus what developers write; discovery by them.
export interface AgentSkill { id: string; name: string; description: string; tags: string[]; examples: string[] }
export interface AgentCard {
  id: string; workspace_id: string; name: string; description: string; summary: string; harness: string;
  harness_version: string | null; client_version: string | null; kind: "cloud" | "local"; host: string | null;
  os: string | null; status: string; status_reason: string | null; owner: string; shared: boolean;
  last_heartbeat_at: string | null; created_at: string; skills: AgentSkill[]; tags: string[];
  updated_by: string | null; updated_at: string | null;
}

/** A delegated task (docs/api.md, "Tasks"). */
export type TaskState = "submitted" | "working" | "input-required" | "auth-required" | "completed" | "failed"
  | "canceled" | "rejected";
export const TASK_STATES: TaskState[] = ["submitted", "working", "input-required", "auth-required", "completed",
  "failed", "canceled", "rejected"];
export const OPEN_TASK_STATES: TaskState[] = ["submitted", "working", "input-required", "auth-required"];
export interface Task {
  task_id: string; workspace_id: string; context_id: string; requester: string; assignee: string; state: TaskState;
  text: string; parts: ({ kind: "text"; text: string } | { kind: "data"; data: Record<string, unknown> })[];
  created_at: string; updated_at: string; deadline: string; session_id: string | null; turn_id: string | null;
  request_message_id: string; parent_task_id: string | null; depth: number; chain: string[];
  result: { text: string; artifacts: { artifact_id: string; name: string; parts: unknown[] }[] } | null;
  reason: string | null; result_message_id: string | null;
}
/** One record of the workspace's interaction record (docs/api.md, "Interactions"). */
export interface Interaction {
  id: string; at: string; workspace_id: string; actor: string;
  kind: "message.sent" | "message.state" | "task.created" | "task.state"; from: string; to: string;
  message_id: string | null; task_id: string | null; state: string | null; detail: string | null;
}
