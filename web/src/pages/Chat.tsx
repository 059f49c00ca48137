// The Chat view of an agent (docs/console.md, "Chat"): its sessions, newest first, and the chosen session's event
// log as it happens, over the live viewer WebSocket (sessionStream.ts). Members who may drive the agent send and
// cancel turns and answer approvals; guests read.
import { type FormEvent, type KeyboardEvent, useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "react";
import { NavLink, useNavigate, useParams } from "react-router";
import {
  api, atLeast, type ChatSession, type Delivery, enc, type Member, type Page, type PermissionMode, type Sandbox,
  type Turn, type Workspace,
} from "../api";
import { type Approval, ChatLog, ENDED, type Item, type ToolCall, toolSummary, type TurnView } from "../chatLog";
import { Ago, Dialog, Empty, ErrorNote, formatNumber, Loading } from "../components";
import { useAction, usePaged, useResource } from "../hooks";
import { Markdown } from "../markdown";
import { useSession } from "../session";
import { SessionStream, type StreamStatus } from "../sessionStream";

const MODES: { value: PermissionMode; label: string }[] = [
  { value: "ask", label: "Ask before edits and commands" },
  { value: "accept-edits", label: "Accept file edits, ask before commands" },
  { value: "full-auto", label: "Full auto: ask nothing" },
];

/** Who may send, cancel and answer (api.md, "Sessions", note 1): developers and above, and on another member's
 * local agent (their own machine) only while they share it. The server checks again. */
export function mayDrive(role: Workspace["role"], sandbox: Sandbox, userId: string | undefined): boolean {
  if (!atLeast(role, "developer")) return false;
  return sandbox.kind !== "local" || sandbox.created_by === userId || sandbox.shared === true;
}

export function chatPath(workspaceId: string, sandboxId: string, sessionId?: string): string {
  const base = `/w/${workspaceId}/sandboxes/${sandboxId}/chat`;
  return sessionId ? `${base}/${sessionId}` : base;
}

function NewSessionDialog({ sandbox, open, onClose, onCreated }: {
  sandbox: Sandbox; open: boolean; onClose: () => void; onCreated: (session: ChatSession) => void;
}) {
  const action = useAction();
  const [title, setTitle] = useState("");
  const [mode, setMode] = useState<PermissionMode | "">("");
  async function submit(event: FormEvent) {
    event.preventDefault();
    const created = await action.run(() => api.post<ChatSession>(`/api/sandboxes/${enc(sandbox.id)}/sessions`, {
      ...(title.trim() ? { title: title.trim() } : {}), ...(mode ? { permission_mode: mode } : {}),
    }));
    if (created) {
      setTitle("");
      setMode("");
      onCreated(created);
    }
  }
  return (
    <Dialog title="New session" open={open} onClose={() => { action.clear(); onClose(); }}>
      <form onSubmit={submit} className="stack" aria-label="New session">
        <label>Title (optional)
          <input name="session-title" maxLength={200} value={title} onChange={(e) => setTitle(e.target.value)} />
        </label>
        <label>Permission mode
          <select name="permission-mode" value={mode} onChange={(e) => setMode(e.target.value as PermissionMode | "")}>
            <option value="">The workspace's default</option>
            {MODES.map((choice) => <option key={choice.value} value={choice.value}>{choice.label}</option>)}
          </select>
        </label>
        <ErrorNote error={action.error} />
        <div className="actions">
          <button type="button" onClick={onClose}>Cancel</button>
          <button className="primary" type="submit" disabled={action.busy}>
            {action.busy ? "Starting…" : "Start session"}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function SessionList({ workspace, sandbox, sessions, current, canStart, onNew, more }: {
  workspace: Workspace; sandbox: Sandbox; sessions: ChatSession[]; current: string | undefined; canStart: boolean;
  onNew: () => void; more: { shown: boolean; busy: boolean; error: string | null; load: () => void };
}) {
  return (
    <aside className="chat-sessions" aria-labelledby="sessions-heading">
      <div className="chat-sessions-head">
        <h2 id="sessions-heading">Sessions</h2>
        {canStart && <button type="button" className="primary" onClick={onNew}>New session</button>}
      </div>
      {!sessions.length && <p className="muted small">No sessions yet.</p>}
      <nav aria-label="Sessions of this agent">
        <ul>
          {sessions.map((session) => (
            <li key={session.id}>
              <NavLink to={chatPath(workspace.id, sandbox.id, session.id)}
                aria-current={session.id === current ? "page" : undefined}>
                <span className="chat-session-title">{session.title || "Untitled session"}</span>
                <span className="muted small"><Ago iso={session.created_at} />
                  {session.state === "running" && " · running"}</span>
              </NavLink>
            </li>
          ))}
        </ul>
      </nav>
      {more.shown && (
        <button type="button" className="chat-sessions-more" onClick={more.load} disabled={more.busy}>
          {more.busy ? "Loading…" : "More sessions"}
        </button>
      )}
      <ErrorNote error={more.error} />
    </aside>
  );
}

/** The one line that says where the session stands, from the log, the last send's `delivery` and the agent. */
function stateOf(sandbox: Sandbox, active: TurnView | undefined, delivery: Delivery | null,
  stream: StreamStatus): { state: string; text: string } {
  const offline = sandbox.kind === "local" && sandbox.status === "offline";
  const resuming = sandbox.kind === "cloud" && ["paused", "pausing", "resuming", "creating"].includes(sandbox.status);
  const unavailable = ["failed", "deleting", "deleted"].includes(sandbox.status);
  if (stream === "ended") return { state: "ended", text: "This session cannot be watched any more." };
  if (active?.status === "running") {
    return active.cancelRequested ? { state: "cancelling", text: "Cancelling: the agent is stopping the turn…" }
      : { state: "running", text: "Running: the agent is working on the turn." };
  }
  if (active) {
    if (unavailable || delivery === "agent_unavailable") {
      return { state: "unavailable", text: `The agent is unavailable (${sandbox.status}): the turn waits.` };
    }
    if (resuming || delivery === "resuming_agent") {
      return { state: "resuming", text: "Cloud sandbox resuming: the turn is delivered once it runs." };
    }
    if (offline || delivery === "waiting_for_agent") {
      return { state: "offline", text: "Agent offline: the turn waits and is delivered when it reconnects." };
    }
    return { state: "queued", text: "Delivering the turn to the agent…" };
  }
  if (unavailable) return { state: "unavailable", text: `Idle. The agent is unavailable (${sandbox.status}).` };
  if (offline) return { state: "idle-offline", text: "Idle. Agent offline: a turn sent now waits until it reconnects." };
  if (resuming) return { state: "idle-paused", text: "Idle. The sandbox is paused: a turn sent now resumes it." };
  return { state: "idle", text: "Idle." };
}

const USAGE_LABELS: [string, string][] = [
  ["input_tokens", "input"], ["output_tokens", "output"], ["cache_read_input_tokens", "cache read"],
  ["cache_creation_input_tokens", "cache write"],
];

function TurnEnd({ turn }: { turn: TurnView }) {
  if (turn.status === "completed") {
    const usage = turn.usage ?? {};
    const parts = USAGE_LABELS.filter(([key]) => typeof usage[key] === "number")
      .map(([key, label]) => `${formatNumber(usage[key])} ${label}`);
    return (
      <p className="turn-end ok" data-testid="turn-usage">
        Completed{parts.length ? ` · ${parts.join(" · ")} tokens` : ""}
      </p>
    );
  }
  if (turn.status === "interrupted") {
    return <p className="turn-end failed">Interrupted: the agent's connection dropped mid-turn. What it did so far
      is kept, and the session goes on.</p>;
  }
  if (turn.status === "cancelled") return <p className="turn-end muted">Cancelled.</p>;
  if (turn.status === "failed") {
    return <p className="turn-end failed">Failed{turn.reason ? `: ${turn.reason}` : "."}</p>;
  }
  return null;
}

function pretty(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2) ?? "";
}

function ToolRow({ tool }: { tool: ToolCall }) {
  const summary = toolSummary(tool.input);
  return (
    <details className={`tool${tool.isError ? " tool-error" : ""}`}>
      <summary>
        <span aria-hidden="true">→ </span><strong>{tool.name}</strong> <code className="tool-summary">{summary}</code>
        {tool.output === undefined && <span className="spinner small" aria-label="running" />}
        {tool.isError && <span className="badge status-failed">error</span>}
      </summary>
      <div className="tool-body">
        <div className="muted small">Input</div>
        <pre>{pretty(tool.input)}</pre>
        <div className="muted small">Result</div>
        <pre>{tool.output === undefined ? "(no result yet)" : tool.output || "(empty)"}</pre>
      </div>
    </details>
  );
}

function ApprovalRow({ approval, turn, canAnswer, who, onAnswer }: {
  approval: Approval; turn: TurnView; canAnswer: boolean; who: (id: string) => string;
  onAnswer: (approval: Approval, decision: "allow" | "deny") => Promise<void>;
}) {
  const [busy, setBusy] = useState(false);
  const answer = approval.answer;
  const ended = ENDED.has(turn.status);
  const answeredBy = !answer ? "" : answer.by === "mode" ? "the permission mode"
    : answer.by === "user" || !answer.by ? "a member, through the agent" : who(answer.by);
  async function decide(decision: "allow" | "deny") {
    setBusy(true);
    try {
      await onAnswer(approval, decision);
    } finally {
      setBusy(false);
    }
  }
  return (
    <div className="approval" role="group" aria-label={`Approval: ${approval.description || approval.tool}`}>
      <p><strong>{approval.tool || "Permission"}</strong>{approval.description && <> · {approval.description}</>}</p>
      {approval.input != null && (
        <details><summary className="small">Input</summary><pre>{pretty(approval.input)}</pre></details>
      )}
      {canAnswer && (
        <div className="actions approval-actions">
          <button type="button" className="primary" disabled={busy || !!answer || ended}
            aria-pressed={answer ? answer.allow : undefined} onClick={() => void decide("allow")}>Allow</button>
          <button type="button" className="danger" disabled={busy || !!answer || ended}
            aria-pressed={answer ? !answer.allow : undefined} onClick={() => void decide("deny")}>Deny</button>
        </div>
      )}
      {answer ? (
        <p className={`small ${answer.allow ? "ok" : "failed"}`} data-testid="approval-answer">
          {answer.allow ? "Allowed" : "Denied"} by {answeredBy}.
        </p>
      ) : ended ? <p className="muted small">Not answered: the turn ended.</p>
        : !canAnswer && <p className="muted small">Waiting for a developer to answer.</p>}
    </div>
  );
}

function ItemRow({ item, turn, canAnswer, who, onAnswer }: {
  item: Item; turn: TurnView; canAnswer: boolean; who: (id: string) => string;
  onAnswer: (approval: Approval, decision: "allow" | "deny") => Promise<void>;
}) {
  switch (item.kind) {
    case "reply":
      return <Markdown className="reply" text={item.text} streaming={item.streaming} />;
    case "tool":
      return <ToolRow tool={item} />;
    case "approval":
      return <ApprovalRow approval={item} turn={turn} canAnswer={canAnswer} who={who} onAnswer={onAnswer} />;
    case "notice":
      return <p className="notice small">{item.text}</p>;
  }
}

function Composer({ onSend, onCancel, cancelling, cancellable }: {
  onSend: (text: string) => Promise<boolean>; onCancel: () => void; cancelling: boolean; cancellable: boolean;
}) {
  const [draft, setDraft] = useState("");
  const [sending, setSending] = useState(false);
  async function send(event?: FormEvent) {
    event?.preventDefault();
    if (!draft.trim() || sending) return;
    setSending(true);
    try {
      if (await onSend(draft)) setDraft("");
    } finally {
      setSending(false);
    }
  }
  function keys(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      void send();
    } else if (event.key === "Escape" && draft) {
      event.preventDefault(); // a dialog around it must not close as well
      setDraft("");
    }
  }
  return (
    <form className="composer" onSubmit={send} aria-label="Send a turn">
      <label className="visually-hidden" htmlFor="turn-text">Message</label>
      <textarea id="turn-text" rows={3} value={draft} maxLength={100_000} placeholder="Ask the agent…"
        aria-describedby="composer-help" onChange={(e) => setDraft(e.target.value)} onKeyDown={keys} />
      <div className="composer-bar">
        <span id="composer-help" className="muted small">Enter sends · Shift+Enter new line · Escape clears</span>
        <div className="actions">
          {cancellable && (
            <button type="button" className="danger" onClick={onCancel} disabled={cancelling}>
              {cancelling ? "Cancelling…" : "Cancel turn"}
            </button>
          )}
          <button type="submit" className="primary" disabled={sending || !draft.trim()}>
            {sending ? "Sending…" : "Send"}
          </button>
        </div>
      </div>
    </form>
  );
}

/** One session's stream, live (also the Tasks page's view of a task's session). */
export function SessionPane({ sessionId, sandbox, canDrive, who, onActivity }: {
  sessionId: string; sandbox: Sandbox; canDrive: boolean; who: (id: string) => string; onActivity: () => void;
}) {
  const session = useResource(() => api.get<ChatSession>(`/api/sessions/${enc(sessionId)}`), sessionId);
  const chat = useRef(new ChatLog());
  const stream = useRef<SessionStream | null>(null);
  const [, setVersion] = useState(0);
  const [status, setStatus] = useState<{ status: StreamStatus; problem?: string }>({ status: "connecting" });
  const [delivery, setDelivery] = useState<Delivery | null>(null);
  const action = useAction();
  const scroller = useRef<HTMLDivElement>(null);
  const stuckToBottom = useRef(true);
  const activity = useRef(onActivity);
  activity.current = onActivity;

  useEffect(() => {
    const log = new ChatLog();
    chat.current = log;
    setVersion((v) => v + 1);
    const viewer = new SessionStream(sessionId, {
      onEvents: (events) => {
        log.apply(events);
        setVersion((v) => v + 1);
        // A turn that ends changes the session's state in the list.
        if (events.some((e) => e.type === "turn.completed" || e.type === "turn.failed")) activity.current();
      },
      onStatus: (next, problem) => setStatus({ status: next, problem }),
    });
    stream.current = viewer;
    viewer.start();
    return () => viewer.stop();
  }, [sessionId]);

  // Follow the stream while the reader is at its end; leave them where they are when they scrolled up.
  useLayoutEffect(() => {
    const box = scroller.current;
    if (box && stuckToBottom.current) box.scrollTop = box.scrollHeight;
  });

  const log = chat.current;
  const active = log.activeTurn;
  const line = stateOf(sandbox, active, active ? delivery : null, status.status);

  async function send(text: string): Promise<boolean> {
    const turn = await action.run(() => api.post<Turn>(`/api/sessions/${enc(sessionId)}/turns`, { text }));
    if (!turn) return false;
    setDelivery(turn.delivery ?? null);
    stuckToBottom.current = true;
    stream.current?.catchUp(); // the turn.queued the server logged, whether or not it is pushed
    activity.current();
    return true;
  }
  async function cancel() {
    if (!active) return;
    const done = await action.run(() => api.post<Turn>(`/api/sessions/${enc(sessionId)}/turns/${enc(active.id)}/cancel`));
    if (done) stream.current?.catchUp();
  }
  async function answer(approval: Approval, decision: "allow" | "deny") {
    await action.run(() => api.post(`/api/sessions/${enc(sessionId)}/approvals/${enc(approval.approvalId)}`,
      { decision }));
    stream.current?.catchUp(); // the answer as logged, or (after a 409) the one that came first
  }

  const info = session.data;
  return (
    <section className="chat-pane card" aria-labelledby="session-heading">
      <div className="chat-pane-head">
        <h2 id="session-heading">{info?.title || "Untitled session"}</h2>
        {info && (
          <span className="muted small">
            {info.model ?? "the harness's model"} · {MODES.find((m) => m.value === info.permission_mode)?.label
              ?? info.permission_mode}
          </span>
        )}
      </div>
      <ErrorNote error={session.error} onRetry={session.reload} />
      <p className={`chat-state state-${line.state}`} role="status" aria-live="polite" data-testid="chat-state"
        data-state={line.state}>
        {["running", "cancelling", "queued", "resuming"].includes(line.state)
          && <span className="spinner small" aria-hidden="true" />} {line.text}
        {status.status === "reconnecting" && <span className="muted small"> (reconnecting to the live stream…)</span>}
      </p>
      {status.problem && <ErrorNote error={status.problem} />}
      <div className="chat-stream" ref={scroller} tabIndex={0} role="region" aria-label="Session events"
        onScroll={(event) => {
          const box = event.currentTarget;
          stuckToBottom.current = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
        }}>
        {status.status === "connecting" && !log.turns.length && <Loading label="Loading the session…" />}
        {status.status !== "connecting" && !log.turns.length && (
          <Empty title="Nothing here yet.">{canDrive && <p className="muted">Send the agent a first turn below.</p>}</Empty>
        )}
        <ol className="turns">
          {log.turns.map((turn) => (
            <li key={turn.id} className="turn" data-turn-status={turn.status}>
              <div className="turn-head muted small">
                <span>{turn.by ? who(turn.by) : "Someone"}</span> · <Ago iso={turn.at} />
                {turn.status === "queued" && " · waiting"}
                {turn.cancelRequested && !ENDED.has(turn.status) && " · cancel asked"}
              </div>
              {turn.text && <div className="sent">{turn.text}</div>}
              {turn.items.map((item) => (
                <ItemRow key={item.key} item={item} turn={turn} canAnswer={canDrive} who={who} onAnswer={answer} />
              ))}
              <TurnEnd turn={turn} />
            </li>
          ))}
        </ol>
      </div>
      <ErrorNote error={action.error} />
      {canDrive ? (
        <Composer onSend={send} onCancel={() => void cancel()} cancellable={!!active}
          cancelling={!!active?.cancelRequested} />
      ) : (
        <p className="muted small" data-testid="read-only">
          You can read this session; sending, cancelling and answering need a developer role
          {sandbox.kind === "local" ? " (and, on another member's local agent, that they share it)" : ""}.
        </p>
      )}
    </section>
  );
}

export function ChatView({ workspace, sandbox, onSandboxChanged }: {
  workspace: Workspace; sandbox: Sandbox; onSandboxChanged: () => void;
}) {
  const { sessionId } = useParams();
  const { user } = useSession();
  const navigate = useNavigate();
  const [creating, setCreating] = useState(false);
  // Newest first, 50 a page; "More sessions" reads on (next_cursor)
  const paged = usePaged<ChatSession>(`/api/sandboxes/${enc(sandbox.id)}/sessions`);
  const sessions = paged.first;
  const members = useResource(() => api.get<Page<Member>>(`/api/workspaces/${enc(workspace.id)}/members`),
    workspace.id);
  const canDrive = mayDrive(workspace.role, sandbox, user?.id);
  const names = useMemo(() => new Map((members.data?.items ?? []).map((m) => [m.user_id, m.name || m.email])),
    [members.data]);
  const who = useCallback((id: string) => (id === user?.id ? "you" : names.get(id) ?? "a former member"),
    [names, user?.id]);
  const list = sessions.data && paged.items;
  const reloadSessions = sessions.reload;
  const sandboxChanged = useRef(onSandboxChanged);
  sandboxChanged.current = onSandboxChanged;
  const onActivity = useCallback(() => {
    void reloadSessions();
    sandboxChanged.current(); // a turn may have resumed the sandbox
  }, [reloadSessions]);

  // Without a session in the address, the newest one is shown.
  useEffect(() => {
    if (!sessionId && list?.length) navigate(chatPath(workspace.id, sandbox.id, list[0].id), { replace: true });
  }, [sessionId, list, navigate, workspace.id, sandbox.id]);

  return (
    <div className="chat">
      <SessionList workspace={workspace} sandbox={sandbox} sessions={list ?? []} current={sessionId}
        canStart={canDrive} onNew={() => setCreating(true)}
        more={{ shown: paged.hasMore, busy: paged.more.busy, error: paged.more.error,
          load: () => void paged.loadMore() }} />
      <div className="chat-main">
        {sessions.loading && <Loading label="Loading sessions…" />}
        <ErrorNote error={sessions.error} onRetry={sessions.reload} />
        {sessionId ? (
          <SessionPane key={sessionId} sessionId={sessionId} sandbox={sandbox} canDrive={canDrive} who={who}
            onActivity={onActivity} />
        ) : list && !list.length && (
          <Empty title="No sessions with this agent yet.">
            {canDrive ? <p><button type="button" className="primary" onClick={() => setCreating(true)}>
              Start a session</button></p>
              : <p className="muted">A developer starts one; you can read it here.</p>}
          </Empty>
        )}
      </div>
      <NewSessionDialog sandbox={sandbox} open={creating} onClose={() => setCreating(false)}
        onCreated={(created) => {
          setCreating(false);
          void sessions.reload();
          navigate(chatPath(workspace.id, sandbox.id, created.id));
        }} />
    </div>
  );
}
