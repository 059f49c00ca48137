import { type FormEvent, useState } from "react";
import { Link } from "react-router";
import { api, atLeast, enc, type Page, type Sandbox, type Workspace } from "../api";
import { Ago, Dialog, Empty, ErrorNote, isTransitional, Loading, StatusBadge } from "../components";
import { useAction, useResource, useTitle } from "../hooks";
import { WorkspacePage } from "../Layout";
import { DeleteDialog, RenameDialog, SandboxButtons } from "../sandboxActions";
import { useSession } from "../session";

// Fargate's CPU sizes (1024 units = 1 vCPU) and the memory each can run with, in MiB (as the server checks).
const FARGATE_SIZES: { cpu: number; memory: number[] }[] = [
  { cpu: 256, memory: steps(512, 2048, 512) },
  { cpu: 512, memory: steps(1024, 4096, 1024) },
  { cpu: 1024, memory: steps(2048, 8192, 1024) },
  { cpu: 2048, memory: steps(4096, 16384, 1024) },
  { cpu: 4096, memory: steps(8192, 30720, 1024) },
];
function steps(from: number, to: number, step: number): number[] {
  return Array.from({ length: (to - from) / step + 1 }, (_, index) => from + index * step);
}
const AGENT_TYPES = [
  { value: "opencode", label: "opencode" },
  { value: "claudecode", label: "Claude Code" },
  { value: "codex", label: "Codex" },
];

/**
 * The limits a new sandbox must fit in, from the workspace (`GET /api/workspaces/{wid}`); until they
 * have loaded, the server's defaults. Either way the server checks again and its refusal is shown
 * as a sentence.
 */
export interface SandboxBounds {
  max_cpu: number; max_memory: number; min_idle_timeout: number; max_idle_timeout: number;
  max_sandboxes?: number;
}
const DEFAULT_BOUNDS: SandboxBounds = { max_cpu: 4096, max_memory: 16384, min_idle_timeout: 60, max_idle_timeout: 86400 };

const vcpu = (units: number) => `${units / 1024} vCPU`;
const gib = (mib: number) => (mib >= 1024 ? `${mib / 1024} GiB` : `${mib} MiB`);

function CreateSandboxDialog({ workspace, open, onClose, onCreated }: {
  workspace: Workspace; open: boolean; onClose: () => void; onCreated: () => void;
}) {
  const detail = useResource(
    () => api.get<Workspace & { sandbox_limits: SandboxBounds }>(`/api/workspaces/${enc(workspace.id)}`),
    `${workspace.id}:${open}`);
  const bounds = detail.data?.sandbox_limits ?? DEFAULT_BOUNDS;
  const cpus = FARGATE_SIZES.filter((choice) => choice.cpu <= bounds.max_cpu);
  const action = useAction();
  const [name, setName] = useState("");
  const [type, setType] = useState("opencode");
  const [cpu, setCpu] = useState(1024);
  const [memory, setMemory] = useState(2048);
  const [idleMinutes, setIdleMinutes] = useState(30);
  const memories = (cpus.find((choice) => choice.cpu === cpu)?.memory ?? []).filter((m) => m <= bounds.max_memory);
  const minMinutes = Math.ceil(bounds.min_idle_timeout / 60), maxMinutes = Math.floor(bounds.max_idle_timeout / 60);

  async function submit(event: FormEvent) {
    event.preventDefault();
    const created = await action.run(() => api.post<Sandbox>(`/api/workspaces/${enc(workspace.id)}/sandboxes`, {
      name, type, cpu, memory, idle_timeout: idleMinutes * 60,
    }));
    if (created) { setName(""); onCreated(); onClose(); }
  }
  return (
    <Dialog title="New sandbox" open={open} onClose={() => { action.clear(); onClose(); }}>
      <form onSubmit={submit} className="stack">
        <label>Name <input name="name" required maxLength={64} value={name} onChange={(e) => setName(e.target.value)} /></label>
        <label>Agent
          <select name="type" value={type} onChange={(e) => setType(e.target.value)}>
            {AGENT_TYPES.map((agent) => <option key={agent.value} value={agent.value}>{agent.label}</option>)}
          </select>
        </label>
        <div className="grid-2">
          <label>CPU
            <select name="cpu" value={cpu} onChange={(e) => {
              const next = Number(e.target.value);
              setCpu(next);
              const allowed = (FARGATE_SIZES.find((c) => c.cpu === next)?.memory ?? []).filter((m) => m <= bounds.max_memory);
              if (!allowed.includes(memory)) setMemory(allowed[0] ?? memory);
            }}>
              {cpus.map((choice) => <option key={choice.cpu} value={choice.cpu}>{vcpu(choice.cpu)}</option>)}
            </select>
          </label>
          <label>Memory
            <select name="memory" value={memory} onChange={(e) => setMemory(Number(e.target.value))}>
              {memories.map((mib) => <option key={mib} value={mib}>{gib(mib)}</option>)}
            </select>
          </label>
        </div>
        <label>Pause after this many idle minutes
          <input name="idle_timeout" type="number" required min={minMinutes} max={maxMinutes} value={idleMinutes}
            onChange={(e) => setIdleMinutes(Number(e.target.value))} />
        </label>
        <p className="muted small">
          This workspace allows up to {vcpu(bounds.max_cpu)} and {gib(bounds.max_memory)} per sandbox, and an idle
          timeout between {minMinutes} and {maxMinutes} minutes
          {bounds.max_sandboxes ? `; at most ${bounds.max_sandboxes} sandboxes in the workspace` : ""}.
        </p>
        <ErrorNote error={action.error} />
        <div className="actions">
          <button type="button" onClick={onClose}>Cancel</button>
          <button className="primary" type="submit" disabled={action.busy}>{action.busy ? "Creating…" : "Create sandbox"}</button>
        </div>
      </form>
    </Dialog>
  );
}

function agentSummary(sandbox: Sandbox): string {
  const info = sandbox.agent_info ?? {};
  const versions = Object.entries(info.versions ?? {}).map(([name, version]) => `${name} ${version}`).join(", ");
  return [info.hostname, versions].filter(Boolean).join(" · ") || "—";
}

function Progress({ status }: { status: string }) {
  const words: Record<string, string> = {
    creating: "Starting…", resuming: "Resuming…", pausing: "Pausing…", deleting: "Deleting…",
  };
  return (
    <span className="progress-line">
      <progress aria-label={words[status]} />
      <span className="muted small">{words[status]}</span>
    </span>
  );
}

function SandboxList({ workspace }: { workspace: Workspace }) {
  useTitle(`Sandboxes · ${workspace.name}`);
  const { user } = useSession();
  const [creating, setCreating] = useState(false);
  const [renaming, setRenaming] = useState<Sandbox | null>(null);
  const [deleting, setDeleting] = useState<Sandbox | null>(null);
  // Live status: poll, and faster while something is starting, so its progress shows promptly.
  const [fast, setFast] = useState(false);
  const sandboxes = useResource(async () => {
    const page = await api.get<Page<Sandbox>>(`/api/workspaces/${enc(workspace.id)}/sandboxes`);
    setFast(page.items.some((sandbox) => isTransitional(sandbox.status)));
    return page.items;
  }, workspace.id, fast ? 1500 : 5000);
  const developer = atLeast(workspace.role, "developer");
  const items = sandboxes.data ?? [];

  return (
    <section>
      <div className="page-head">
        <div>
          <h1>Sandboxes</h1>
          <p className="muted">{workspace.name} · you are {workspace.role === "owner" ? "an owner" : `a ${workspace.role}`}</p>
        </div>
        {developer && (
          <div className="actions">
            <Link className="button" to={`/w/${workspace.id}/connect`}>Connect a local agent</Link>
            <button type="button" className="primary" onClick={() => setCreating(true)}>New sandbox</button>
          </div>
        )}
      </div>
      {sandboxes.loading && <Loading label="Loading sandboxes…" />}
      <ErrorNote error={sandboxes.error} onRetry={sandboxes.reload} />
      {sandboxes.data && !items.length && (
        <Empty title="No sandboxes or local agents yet.">
          {developer
            ? <p>Create a cloud sandbox, or connect an agent running on your own machine.</p>
            : <p>When members create sandboxes or connect agents, they show up here.</p>}
        </Empty>
      )}
      {items.length > 0 && (
        <table className="list sandboxes">
          <thead>
            <tr><th>Name</th><th>Status</th><th>Kind</th><th>Agent</th><th>Last activity</th><th><span className="visually-hidden">Actions</span></th></tr>
          </thead>
          <tbody>
            {items.map((sandbox) => (
              <tr key={sandbox.id} data-sandbox={sandbox.id}>
                <td data-label="Name"><Link to={`/w/${workspace.id}/sandboxes/${sandbox.id}`}>{sandbox.name}</Link>
                  <div className="muted small">{sandbox.type}</div></td>
                <td data-label="Status">
                  <StatusBadge status={sandbox.status} reason={sandbox.status_reason} />
                  {isTransitional(sandbox.status) && <Progress status={sandbox.status} />}
                </td>
                <td data-label="Kind">{sandbox.kind}</td>
                <td data-label="Agent" className="small">{agentSummary(sandbox)}</td>
                <td data-label="Last activity"><Ago iso={sandbox.last_activity_at ?? sandbox.last_heartbeat_at} /></td>
                <td>
                  <SandboxButtons sandbox={sandbox} role={workspace.role} userId={user?.id}
                    onChanged={() => void sandboxes.reload()} onRename={setRenaming} onDelete={setDeleting} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {developer && <CreateSandboxDialog workspace={workspace} open={creating} onClose={() => setCreating(false)}
        onCreated={() => void sandboxes.reload()} />}
      <RenameDialog sandbox={renaming} onClose={() => setRenaming(null)} onDone={() => void sandboxes.reload()} />
      <DeleteDialog sandbox={deleting} onClose={() => setDeleting(null)} onDone={() => void sandboxes.reload()} />
    </section>
  );
}

export function SandboxesPage() {
  return <WorkspacePage>{(workspace) => <SandboxList workspace={workspace} />}</WorkspacePage>;
}
