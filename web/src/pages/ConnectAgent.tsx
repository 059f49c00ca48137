import { useCallback, useEffect, useRef, useState } from "react";
import { Link } from "react-router";
import { api, atLeast, type AgentCode, enc, type Page, type Sandbox, type Workspace } from "../api";
import { CopyButton, ErrorNote, Loading, StatusBadge, Countdown } from "../components";
import { useAction, useNow, useTitle } from "../hooks";
import { WorkspacePage } from "../Layout";

/** Quotes a value for a POSIX shell unless it is plainly safe. */
function shellWord(value: string): string {
  return /^[A-Za-z0-9._-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}

function Connect({ workspace }: { workspace: Workspace }) {
  useTitle(`Connect a local agent · ${workspace.name}`);
  const action = useAction();
  const [code, setCode] = useState<AgentCode | null>(null);
  const [name, setName] = useState("my-laptop");
  const [known, setKnown] = useState<Set<string> | null>(null);
  const [arrived, setArrived] = useState<Sandbox | null>(null);
  const now = useNow(1000);
  const asked = useRef(false);

  const newCode = useCallback(async () => {
    setArrived(null);
    const before = await action.run(() => api.get<Page<Sandbox>>(`/api/workspaces/${enc(workspace.id)}/sandboxes`));
    if (!before) return;
    setKnown(new Set(before.items.map((sandbox) => sandbox.id)));
    const created = await action.run(() => api.post<AgentCode>(`/api/workspaces/${enc(workspace.id)}/agent-codes`));
    if (created) setCode(created);
  }, [action, workspace.id]);

  useEffect(() => {
    if (asked.current || !atLeast(workspace.role, "developer")) return;
    asked.current = true;
    void newCode();
  }, [newCode, workspace.role]);

  // Watch the registry until an agent that was not there before shows up.
  useEffect(() => {
    if (!code || !known || (arrived && arrived.status === "running")) return;
    const timer = window.setInterval(async () => {
      try {
        const page = await api.get<Page<Sandbox>>(`/api/workspaces/${enc(workspace.id)}/sandboxes`);
        const fresh = page.items.find((sandbox) => sandbox.kind === "local" && !known.has(sandbox.id));
        if (fresh) setArrived(fresh);
      } catch {
        // A failed poll is retried on the next tick.
      }
    }, 1500);
    return () => window.clearInterval(timer);
  }, [code, known, arrived, workspace.id]);

  if (!atLeast(workspace.role, "developer")) {
    return <ErrorNote error={`A ${workspace.role} may not connect agents to this workspace; it needs the developer role.`} />;
  }
  const expired = code ? Date.parse(code.expires_at) <= now : false;
  const command = code ? code.command.replace("<name>", shellWord(name || "my-laptop")) : "";

  return (
    <section className="narrow-section">
      <h1>Connect a local agent</h1>
      <p>
        Drive an agent that runs on your own machine from here. Run the command below on that machine, where
        the <code>agentserver</code> command of this project is installed. It registers the machine
        in <strong>{workspace.name}</strong> and keeps a tunnel open to this server: the machine needs no inbound port.
      </p>
      {!code && action.busy && <Loading label="Creating a registration code…" />}
      <ErrorNote error={action.error} onRetry={() => void newCode()} />
      {code && (
        <div className="card stack">
          <label>Name for this agent
            <input name="agent-name" value={name} maxLength={64} onChange={(e) => setName(e.target.value)} />
          </label>
          <div>
            <div className="label-row">
              <span>Registration code <strong className="code" data-testid="agent-code">{code.code}</strong></span>
              <span className={expired ? "warning" : "muted"}><Countdown until={code.expires_at} /></span>
            </div>
            <p className="muted small">The code works once, for ten minutes.</p>
          </div>
          <div className="command">
            <pre><code data-testid="connect-command">{command}</code></pre>
            <CopyButton text={command} label="Copy command" />
          </div>
          <p className="muted small">
            Add <code>--auto-start</code> to start opencode for you, or <code>--opencode-url URL</code> to use one
            that is already running.
          </p>
          {expired && <button type="button" className="primary" onClick={() => void newCode()}>Get a new code</button>}
          {!arrived && !expired && (
            <p className="muted" role="status"><span className="spinner small" aria-hidden="true" /> Waiting for the agent to connect…</p>
          )}
          {arrived && (
            <p role="status" className="success">
              <strong>{arrived.name}</strong> has connected: <StatusBadge status={arrived.status} />{" "}
              <Link to={`/w/${workspace.id}/sandboxes/${arrived.id}`}>See it</Link> or go back to the{" "}
              <Link to={`/w/${workspace.id}`}>sandboxes</Link>.
            </p>
          )}
        </div>
      )}
    </section>
  );
}

export function ConnectAgentPage() {
  return <WorkspacePage>{(workspace) => <Connect workspace={workspace} />}</WorkspacePage>;
}
