import { type FormEvent, useState } from "react";
import { api, enc, type Page, type Sandbox } from "../api";
import { Ago, ErrorNote, Loading } from "../components";
import { useAction, usePaged, useResource, useTitle } from "../hooks";
import { useSession } from "../session";

interface AdminUser { id: string; email: string; name: string; role: "user" | "admin"; created_at: string }
interface OutboxMessage { id: string; to: string; subject: string; text: string; sent_at: string }
interface AdminWorkspace { id: string; name: string; created_by: string; created_at: string; status?: string }
interface AdminSandbox extends Sandbox { workspace_name: string | null; workspace_status: string }
const SANDBOX_STATUSES = ["creating", "running", "offline", "pausing", "paused", "resuming", "failed", "deleting", "deleted"];
interface Quotas {
  max_workspaces_per_user: number; max_sandboxes_per_workspace?: number; max_workspace_cpu?: number;
  max_workspace_memory?: number;
}
const QUOTA_FIELDS: { key: keyof Quotas; label: string; min: number }[] = [
  { key: "max_workspaces_per_user", label: "Workspaces per user", min: 1 },
  { key: "max_sandboxes_per_workspace", label: "Sandboxes per workspace", min: 0 },
  { key: "max_workspace_cpu", label: "CPU units per workspace (1024 = 1 vCPU)", min: 0 },
  { key: "max_workspace_memory", label: "Memory per workspace (MiB)", min: 0 },
];

function UserRow({ user, self, onChanged }: { user: AdminUser; self: boolean; onChanged: () => void }) {
  const action = useAction();
  return (
    <tr>
      <td data-label="User">{user.name || user.email}<div className="muted small">{user.email}</div></td>
      <td data-label="Role">
        <select aria-label={`System role of ${user.email}`} value={user.role} disabled={action.busy || self}
          onChange={(e) => void action.run(async () => {
            await api.patch(`/api/admin/users/${enc(user.id)}`, { role: e.target.value });
            onChanged();
          })}>
          <option value="user">user</option>
          <option value="admin">admin</option>
        </select>
        <ErrorNote error={action.error} />
      </td>
      <td data-label="Joined"><Ago iso={user.created_at} /></td>
    </tr>
  );
}

function QuotaForm() {
  const quotas = useResource(() => api.get<Quotas>("/api/admin/quotas"), "quotas");
  const action = useAction();
  const [edits, setEdits] = useState<Partial<Record<keyof Quotas, string>>>({});
  const fields = QUOTA_FIELDS.filter((field) => quotas.data?.[field.key] !== undefined);
  async function submit(event: FormEvent) {
    event.preventDefault();
    const body = Object.fromEntries(fields.map((field) => [field.key, Number(edits[field.key] ?? quotas.data?.[field.key])]));
    const saved = await action.run(() => api.put<Quotas>("/api/admin/quotas", body));
    if (saved) { setEdits({}); void quotas.reload(); }
  }
  return (
    <form className="card inline-form" onSubmit={submit}>
      <h2>Default quotas</h2>
      {quotas.loading && <Loading />}
      <ErrorNote error={quotas.error} onRetry={quotas.reload} />
      {quotas.data && <p>Each user may own up to <strong>{quotas.data.max_workspaces_per_user}</strong> workspaces.</p>}
      <div className="fields">
        {fields.map((field) => (
          <label key={field.key}>{field.label}
            <input name={field.key} type="number" min={field.min} required
              value={edits[field.key] ?? String(quotas.data?.[field.key] ?? "")}
              onChange={(e) => setEdits({ ...edits, [field.key]: e.target.value })} />
          </label>
        ))}
        <button type="submit" disabled={action.busy || !quotas.data}>Save</button>
      </div>
      <ErrorNote error={action.error} />
    </form>
  );
}

/** One sandbox of the server; an admin may delete it, also one whose workspace is gone. */
function AdminSandboxRow({ item, onChanged }: { item: AdminSandbox; onChanged: () => void }) {
  const action = useAction();
  const [confirming, setConfirming] = useState(false);
  const over = item.status === "deleted" || item.status === "deleting";
  return (
    <tr>
      <td data-label="Sandbox">{item.name} <span className="muted small">({item.kind})</span><div className="muted small"><code>{item.id}</code></div></td>
      <td data-label="Status">{item.status}</td>
      <td data-label="Workspace">{item.workspace_name ?? <em>gone</em>}
        {item.workspace_status === "deleting" && <span className="muted"> (deleting)</span>}
        <div className="muted small"><code>{item.workspace_id}</code></div></td>
      <td data-label="Created"><Ago iso={item.created_at} /></td>
      <td>{!over && !confirming && (
        <button type="button" className="danger" onClick={() => setConfirming(true)}
          aria-label={`Delete sandbox ${item.id}`}>Delete…</button>)}
        {!over && confirming && (<>
          <button type="button" className="danger" disabled={action.busy} aria-label={`Really delete sandbox ${item.id}`}
            onClick={() => void action.run(async () => {
              await api.del(`/api/admin/sandboxes/${enc(item.id)}`);
              setConfirming(false);
              onChanged();
            })}>Delete for good</button>{" "}
          <button type="button" className="link" onClick={() => setConfirming(false)}>Cancel</button>
        </>)}
        <ErrorNote error={action.error} /></td>
    </tr>
  );
}

/** Every sandbox on the server, whatever workspace it is in (or was: a workspace being deleted or gone). */
function AllSandboxes() {
  const [status, setStatus] = useState("");
  const [workspace, setWorkspace] = useState("");
  const [applied, setApplied] = useState("");
  const query = new URLSearchParams({ limit: "50", ...(status ? { status } : {}), ...(applied ? { workspace: applied } : {}) });
  const sandboxes = usePaged<AdminSandbox>(`/api/admin/sandboxes?${query.toString()}`);
  return (
    <section className="card wide-card" aria-label="All sandboxes">
      <h2>Sandboxes</h2>
      <form className="inline-form fields" onSubmit={(e) => { e.preventDefault(); setApplied(workspace.trim()); }}>
        <label>Status
          <select name="sandbox-status" value={status} onChange={(e) => setStatus(e.target.value)}>
            <option value="">all but deleted</option>
            {SANDBOX_STATUSES.map((item) => <option key={item} value={item}>{item}</option>)}
          </select>
        </label>
        <label>Workspace id <input name="sandbox-workspace" maxLength={64} value={workspace} onChange={(e) => setWorkspace(e.target.value)} /></label>
        <button type="submit">Filter</button>
      </form>
      {sandboxes.first.loading && <Loading />}
      <ErrorNote error={sandboxes.first.error} onRetry={sandboxes.first.reload} />
      <table className="list">
        <thead><tr><th>Sandbox</th><th>Status</th><th>Workspace</th><th>Created</th><th></th></tr></thead>
        <tbody>{sandboxes.items.map((item) => (
          <AdminSandboxRow key={item.id} item={item} onChanged={() => void sandboxes.first.reload()} />
        ))}</tbody>
      </table>
      {!sandboxes.first.loading && !sandboxes.items.length && <p className="muted">No sandboxes match.</p>}
      {sandboxes.hasMore && <button type="button" onClick={() => void sandboxes.loadMore()} disabled={sandboxes.more.busy}>Show more</button>}
      <ErrorNote error={sandboxes.more.error} />
    </section>
  );
}

export function AdminPage() {
  useTitle("Administration");
  const { user } = useSession();
  if (user?.role !== "admin") return <ErrorNote error="This page is for system administrators." />;
  return <Administration selfId={user.id} />;
}

function Administration({ selfId }: { selfId: string }) {
  const users = usePaged<AdminUser>("/api/admin/users");
  const workspaces = usePaged<AdminWorkspace>("/api/admin/workspaces");
  return (
    <section>
      <div className="page-head"><div><h1>Administration</h1><p className="muted">Everyone on this server</p></div></div>
      <QuotaForm />
      <Outbox />
      <div className="columns">
        <section className="card wide-card">
          <h2>Users</h2>
          {users.first.loading && <Loading />}
          <ErrorNote error={users.first.error} onRetry={users.first.reload} />
          <table className="list">
            <thead><tr><th>User</th><th>System role</th><th>Joined</th></tr></thead>
            <tbody>{users.items.map((item) => <UserRow key={item.id} user={item} self={item.id === selfId}
              onChanged={() => void users.first.reload()} />)}</tbody>
          </table>
          {users.hasMore && <button type="button" onClick={() => void users.loadMore()} disabled={users.more.busy}>Show more</button>}
          <ErrorNote error={users.more.error} />
        </section>
        <section className="card wide-card">
          <h2>Workspaces</h2>
          {workspaces.first.loading && <Loading />}
          <ErrorNote error={workspaces.first.error} onRetry={workspaces.first.reload} />
          <table className="list">
            <thead><tr><th>Workspace</th><th>Created</th></tr></thead>
            <tbody>{workspaces.items.map((item) => (
              <tr key={item.id}><td data-label="Workspace">{item.name}
                {item.status === "deleting" && <span className="muted"> (deleting)</span>}
                <div className="muted small"><code>{item.id}</code></div></td>
                <td data-label="Created"><Ago iso={item.created_at} /></td></tr>
            ))}</tbody>
          </table>
          {workspaces.hasMore && <button type="button" onClick={() => void workspaces.loadMore()} disabled={workspaces.more.busy}>Show more</button>}
          <ErrorNote error={workspaces.more.error} />
        </section>
        <AllSandboxes />
      </div>
    </section>
  );
}

/** The embedded stack's mail (nothing is sent from a laptop): admins read the links here. Absent where SES sends mail. */
function Outbox() {
  const outbox = useResource(() => api.get<Page<OutboxMessage>>("/api/admin/outbox?limit=50"), "outbox");
  if (outbox.error?.status === 404) return null;
  return (
    <section className="card wide-card" aria-label="Outbox">
      <h2>Outbox</h2>
      <p className="muted small">Mail this local server would have sent, newest first. Only admins see it.</p>
      {outbox.loading && <Loading />}
      <ErrorNote error={outbox.error} onRetry={outbox.reload} />
      {outbox.data && !outbox.data.items.length && <p>No mail yet.</p>}
      {outbox.data?.items.map((message) => (
        <details key={message.id}>
          <summary>{message.subject} · to {message.to} · <Ago iso={message.sent_at} /></summary>
          <pre className="mail">{message.text}</pre>
        </details>
      ))}
    </section>
  );
}
