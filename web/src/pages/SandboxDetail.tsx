import { Fragment, useEffect, useState } from "react";
import { Link, NavLink, useNavigate, useParams } from "react-router";
import { CardSection } from "../agentCards";
import { api, atLeast, enc, type Page, type Sandbox, type SandboxEvent, type UsageReport, type Workspace } from "../api";
import { Ago, Empty, ErrorNote, formatNumber, isTransitional, Loading, StatusBadge } from "../components";
import { useAction, useResource, useTitle } from "../hooks";
import { WorkspacePage } from "../Layout";
import { DeleteDialog, RenameDialog, SandboxButtons } from "../sandboxActions";
import { useSession } from "../session";
import { chatPath, ChatView, mayDrive } from "./Chat";
import { AgentInboxView } from "./Inbox";
import { DelegateForm } from "./Tasks";

type AgentView = "details" | "chat" | "inbox";

function Events({ sandbox }: { sandbox: Sandbox }) {
  const events = useResource(() => api.get<Page<SandboxEvent>>(`/api/sandboxes/${enc(sandbox.id)}/events`),
    `${sandbox.id}:${sandbox.status}`);
  return (
    <section className="card">
      <h2>Lifecycle</h2>
      {events.loading && <Loading label="Loading events…" />}
      <ErrorNote error={events.error} onRetry={events.reload} />
      {events.data && !events.data.items.length && <Empty title="No lifecycle events yet." />}
      {events.data && events.data.items.length > 0 && (
        <ol className="timeline">
          {events.data.items.map((event, index) => (
            <li key={index}>
              <StatusBadge status={event.phase} />
              {event.reason && <span> {event.reason}</span>}
              <span className="muted small"> · <Ago iso={event.at} /></span>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}

function Usage({ sandbox }: { sandbox: Sandbox }) {
  const usage = useResource(() => api.get<UsageReport>(`/api/sandboxes/${enc(sandbox.id)}/usage`), sandbox.id);
  const sum = usage.data?.totals;
  return (
    <section className="card">
      <h2>LLM usage</h2>
      {usage.loading && <Loading label="Loading usage…" />}
      <ErrorNote error={usage.error} onRetry={usage.reload} />
      {sum && (
        <dl className="stats">
          <div><dt>Requests</dt><dd data-testid="sandbox-requests">{formatNumber(sum.requests)}</dd></div>
          <div><dt>Input tokens</dt><dd>{formatNumber(sum.input_tokens)}</dd></div>
          <div><dt>Output tokens</dt><dd>{formatNumber(sum.output_tokens)}</dd></div>
          <div><dt>Cache tokens</dt><dd>{formatNumber(sum.cache_read_tokens + sum.cache_write_tokens)}</dd></div>
        </dl>
      )}
    </section>
  );
}

/** A local agent runs on its owner's machine: only they open it, unless they share it with the workspace. */
function Sharing({ sandbox, workspace, userId, onChanged }: {
  sandbox: Sandbox; workspace: Workspace; userId: string | undefined; onChanged: () => void;
}) {
  const action = useAction();
  const own = sandbox.created_by === userId;
  // Only its owner shares it (others could then run commands on their machine); maintainers may stop sharing.
  const mayChange = (own && atLeast(workspace.role, "developer"))
    || (sandbox.shared === true && atLeast(workspace.role, "maintainer"));
  // The box shows the choice at once, while it is saved (and the old state again if refused).
  const [wanted, setWanted] = useState<boolean | null>(null);
  const shared = wanted ?? sandbox.shared === true;
  useEffect(() => { if (wanted !== null && sandbox.shared === wanted) setWanted(null); }, [sandbox.shared, wanted]);
  return (
    <>
      <dt>Sharing</dt>
      <dd>
        <label>
          <input type="checkbox" checked={shared} disabled={!mayChange || action.busy}
            onChange={(event) => {
              const choice = event.target.checked;
              setWanted(choice);
              void action.run(async () => {
                await api.patch(`/api/sandboxes/${enc(sandbox.id)}`, { shared: choice });
                onChanged();
                return true;
              }).then((saved) => { if (!saved) setWanted(null); });
            }} />{" "}
          Other developers of the workspace may open it
        </label>
        <div className="muted small">
          {shared ? "Shared: developers and above can open it, and run commands on this machine."
            : own ? "Only you can open it." : "Only the member who connected it can open it."}
        </div>
        <ErrorNote error={action.error} />
      </dd>
    </>
  );
}

/** The agent's page: its details, or its Chat view (`view`), under the same head. */
function Detail({ workspace, view }: { workspace: Workspace; view: AgentView }) {
  const { sid = "" } = useParams();
  const { user } = useSession();
  const navigate = useNavigate();
  const [renaming, setRenaming] = useState<Sandbox | null>(null);
  const [deleting, setDeleting] = useState<Sandbox | null>(null);
  const [fast, setFast] = useState(false);
  const sandbox = useResource(async () => {
    const found = await api.get<Sandbox>(`/api/sandboxes/${enc(sid)}`);
    setFast(isTransitional(found.status));
    return found;
  }, sid, fast ? 1500 : 5000);
  useTitle(sandbox.data?.name ?? "Sandbox");
  const item = sandbox.data;
  const info = item?.agent_info ?? {};
  return (
    <section>
      <p><Link to={`/w/${workspace.id}`}>← Sandboxes</Link></p>
      {sandbox.loading && <Loading />}
      <ErrorNote error={sandbox.error} onRetry={sandbox.reload} />
      {item && (
        <>
          <div className="page-head">
            <div>
              <h1>{item.name}</h1>
              <p><StatusBadge status={item.status} reason={item.status_reason} />{" "}
                {item.status_reason && <span className="muted">{item.status_reason}</span>}</p>
              {isTransitional(item.status) && <progress aria-label={`${item.status}…`} />}
            </div>
            <SandboxButtons sandbox={item} role={workspace.role} userId={user?.id}
              onChanged={() => void sandbox.reload()} onRename={setRenaming} onDelete={setDeleting} />
          </div>
          <nav className="tabs" aria-label="Agent views">
            <NavLink to={`/w/${workspace.id}/sandboxes/${item.id}`} end>Details</NavLink>
            <NavLink to={chatPath(workspace.id, item.id)}>Chat</NavLink>
            <NavLink to={`/w/${workspace.id}/sandboxes/${item.id}/inbox`}>Inbox</NavLink>
          </nav>
          {view === "inbox" ? <AgentInboxView workspace={workspace} sandbox={item} />
            : view === "chat" ? <ChatView workspace={workspace} sandbox={item} onSandboxChanged={() => void sandbox.reload()} />
            : <div className="columns">
            <section className="card">
              <h2>Details</h2>
              <dl className="facts">
                <dt>Kind</dt><dd>{item.kind === "local" ? "local agent" : "cloud sandbox"}</dd>
                {item.kind === "local" && <Sharing sandbox={item} workspace={workspace} userId={user?.id}
                  onChanged={() => void sandbox.reload()} />}
                <dt>Agent</dt><dd>{item.type}</dd>
                {info.hostname && <><dt>Host</dt><dd>{info.hostname}</dd></>}
                {info.os && <><dt>System</dt><dd>{info.os}</dd></>}
                {info.working_directory && <><dt>Folder</dt><dd><code>{info.working_directory}</code></dd></>}
                {Object.entries(info.versions ?? {}).map(([name, version]) => (
                  <Fragment key={name}><dt>{name}</dt><dd>{version}</dd></Fragment>
                ))}
                <dt>Created</dt><dd><Ago iso={item.created_at} /></dd>
                <dt>Last activity</dt><dd><Ago iso={item.last_activity_at} /></dd>
                <dt>Last heartbeat</dt><dd><Ago iso={item.last_heartbeat_at} /></dd>
                <dt>Id</dt><dd><code>{item.id}</code></dd>
              </dl>
            </section>
            <CardSection sandbox={item} workspace={workspace} userId={user?.id} />
            {mayDrive(workspace.role, item, user?.id) && (
              <DelegateForm workspace={workspace} assignee={{ principal: `agent:${item.id}`, name: item.name }} />
            )}
            <Events sandbox={item} />
            <Usage sandbox={item} />
          </div>}
        </>
      )}
      <RenameDialog sandbox={renaming} onClose={() => setRenaming(null)} onDone={() => void sandbox.reload()} />
      <DeleteDialog sandbox={deleting} onClose={() => setDeleting(null)} onDone={() => navigate(`/w/${workspace.id}`)} />
    </section>
  );
}

export function SandboxDetailPage({ view = "details" }: { view?: AgentView }) {
  return <WorkspacePage>{(workspace) => <Detail workspace={workspace} view={view} />}</WorkspacePage>;
}
