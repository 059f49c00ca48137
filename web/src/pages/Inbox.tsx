import { useState } from "react";
import { Link } from "react-router";
import { api, atLeast, enc, type Page, type Sandbox, type Workspace } from "../api";
import { Ago, Empty, ErrorNote, Loading, StatusBadge } from "../components";
import { useAction, useResource, useTitle } from "../hooks";
import { WorkspacePage } from "../Layout";
import { Principal } from "../principals";

/** A mailbox message (docs/api.md, "Mailboxes"). */
export interface MailMessage {
  message_id: string; workspace_id: string; from: string; to: string; context_id: string; task_id: string | null;
  parts: ({ kind: "text"; text: string } | { kind: "data"; data: Record<string, unknown> })[];
  seq: number; sent_at: string; state: "queued" | "delivered" | "read" | "acked" | "failed";
  delivered_at: string | null; read_at: string | null; acked_at: string | null; turn_id: string | null;
  session_id: string | null; attempts: number; reason: string | null;
}

const newMessageId = () => `console-${crypto.randomUUID()}`;

function Parts({ message }: { message: MailMessage }) {
  return (
    <div className="message-parts">
      {message.parts.map((part, index) => part.kind === "text"
        ? <p key={index} className="pre-wrap">{part.text}</p>
        : <pre key={index}><code>{JSON.stringify(part.data, null, 2)}</code></pre>)}
    </div>
  );
}

function MessageList({ workspaceId, messages, who, onAck, busy }: {
  workspaceId: string; messages: MailMessage[]; who: "from" | "to"; onAck?: (message: MailMessage) => void;
  busy?: boolean;
}) {
  return (
    <ul className="messages">
      {messages.map((message) => (
        <li key={`${message.to}:${message.seq}`} className="card message" data-testid="message"
          data-message-id={message.message_id}>
          <div className="message-head">
            <strong>{who === "from" ? <Principal workspaceId={workspaceId} principal={message.from} />
              : <>to <Principal workspaceId={workspaceId} principal={message.to} /></>}</strong>{" "}
            <StatusBadge status={message.state} reason={message.reason} />{" "}
            <span className="muted small">thread <code>{message.context_id}</code> · <Ago iso={message.sent_at} /></span>
            {onAck && <button type="button" className="secondary" disabled={busy}
              onClick={() => onAck(message)}>Acknowledge</button>}
          </div>
          <Parts message={message} />
          {message.reason && <p className="muted small">{message.reason}</p>}
        </li>
      ))}
    </ul>
  );
}

function Inbox({ workspace }: { workspace: Workspace }) {
  useTitle("Inbox");
  const inbox = useResource(() => api.get<Page<MailMessage>>(`/api/workspaces/${enc(workspace.id)}/inbox?limit=100`),
    workspace.id, 5000);
  const sent = useResource(() => api.get<Page<MailMessage>>(`/api/workspaces/${enc(workspace.id)}/messages?limit=50`),
    workspace.id, 5000);
  const action = useAction();
  const ack = (ids: string[]) => void action.run(async () => {
    await api.post(`/api/workspaces/${enc(workspace.id)}/inbox/ack`, { message_ids: ids });
    await inbox.reload();
  });
  const items = inbox.data?.items ?? [];
  return (
    <section>
      <div className="page-head">
        <div>
          <h1>Inbox</h1>
          <p className="muted">Messages to you in {workspace.name}, until you acknowledge them.</p>
        </div>
        {items.length > 1 && <button type="button" disabled={action.busy}
          onClick={() => ack(items.slice(0, 100).map((m) => m.message_id))}>Acknowledge all</button>}
      </div>
      <ErrorNote error={action.error} />
      {inbox.loading && <Loading label="Loading your inbox…" />}
      <ErrorNote error={inbox.error} onRetry={inbox.reload} />
      {inbox.data && !items.length && <Empty title="No messages waiting for you." />}
      {items.length > 0 && <MessageList workspaceId={workspace.id} messages={items} who="from" busy={action.busy}
        onAck={(message) => ack([message.message_id])} />}
      <h2>Sent</h2>
      <ErrorNote error={sent.error} onRetry={sent.reload} />
      {sent.data && !sent.data.items.length && <Empty title="You have sent no messages here." />}
      {sent.data && sent.data.items.length > 0 && <MessageList workspaceId={workspace.id} messages={sent.data.items} who="to" />}
    </section>
  );
}

export function InboxPage() {
  return <WorkspacePage>{(workspace) => <Inbox workspace={workspace} />}</WorkspacePage>;
}

/** Compose a message to the agent and follow its state (queued → delivered → read → acked). */
function Compose({ workspace, sandbox }: { workspace: Workspace; sandbox: Sandbox }) {
  const [text, setText] = useState("");
  const [context, setContext] = useState("");
  const [sentId, setSentId] = useState<string | null>(null);
  const action = useAction();
  const status = useResource(async () => sentId
    ? api.get<MailMessage>(`/api/workspaces/${enc(workspace.id)}/messages/${enc(sentId)}`) : null,
  sentId ?? "", sentId ? 1000 : undefined);
  if (!atLeast(workspace.role, "developer")) return null;
  const send = () => void action.run(async () => {
    const sent = await api.post<MailMessage>(`/api/workspaces/${enc(workspace.id)}/messages`, {
      to: `agent:${sandbox.id}`, message_id: newMessageId(), context_id: context.trim() || undefined,
      parts: [{ kind: "text", text }],
    });
    setSentId(sent.message_id);
    setContext(sent.context_id);
    setText("");
  });
  const message = status.data;
  return (
    <section className="card compose">
      <h2>Message</h2>
      <form className="stack" onSubmit={(event) => { event.preventDefault(); if (text.trim()) send(); }}>
        <label>Message to {sandbox.name}
          <textarea value={text} onChange={(event) => setText(event.target.value)} rows={3} required
            maxLength={60000} />
        </label>
        <label>Thread (context id; empty: a new thread)
          <input value={context} onChange={(event) => setContext(event.target.value)} maxLength={128}
            pattern="[A-Za-z0-9._:\-]+" />
        </label>
        <button type="submit" disabled={action.busy || !text.trim()}>Send</button>
      </form>
      <ErrorNote error={action.error} />
      {message && (
        <p data-testid="sent-state">
          Sent <code>{message.message_id}</code>: <StatusBadge status={message.state} reason={message.reason} />
          {message.session_id && <> · <Link to={`/w/${workspace.id}/sandboxes/${sandbox.id}/chat/${message.session_id}`}>
            its session</Link></>}
        </p>
      )}
    </section>
  );
}

/** The agent's Inbox tab: its unacked messages (read-only), and a compose box. */
export function AgentInboxView({ workspace, sandbox }: { workspace: Workspace; sandbox: Sandbox }) {
  const inbox = useResource(() => api.get<Page<MailMessage>>(`/api/sandboxes/${enc(sandbox.id)}/inbox?limit=100`),
    sandbox.id, 3000);
  const items = inbox.data?.items ?? [];
  return (
    <div className="columns">
      <Compose workspace={workspace} sandbox={sandbox} />
      <section className="card">
        <h2>Mailbox</h2>
        <p className="muted small">Messages to this agent that it has not finished; each runs as a turn.</p>
        {inbox.loading && <Loading label="Loading the agent's mailbox…" />}
        <ErrorNote error={inbox.error} onRetry={inbox.reload} />
        {inbox.data && !items.length && <Empty title="Nothing waiting for this agent." />}
        {items.length > 0 && <MessageList workspaceId={workspace.id} messages={items} who="from" />}
      </section>
    </div>
  );
}
