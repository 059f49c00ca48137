// Delegation in the console (docs/api.md, "Tasks" and "Interactions"): the workspace's tasks with their live state,
// one task with its result and its session's stream (the Chat view's viewer), the Delegate form (on an agent's
// page, and from the Agents directory), and the Activity view of the interaction record.
import { type FormEvent, useState } from "react";
import { Link, useParams, useSearchParams } from "react-router";
import {
  api, atLeast, enc, type Interaction, OPEN_TASK_STATES, type Page, type Sandbox, type Task, TASK_STATES,
  type Workspace,
} from "../api";
import { Ago, Countdown, Empty, ErrorNote, Loading, StatusBadge } from "../components";
import { useAction, usePaged, useResource, useTitle } from "../hooks";
import { WorkspacePage } from "../Layout";
import { useSession } from "../session";
import { Principal } from "../principals";
import { mayDrive, SessionPane } from "./Chat";

const TIMEOUTS = [{ seconds: 600, label: "10 minutes" }, { seconds: 3600, label: "1 hour" },
  { seconds: 4 * 3600, label: "4 hours" }, { seconds: 86400, label: "1 day" }];

export const tasksPath = (workspaceId: string, taskId?: string) =>
  taskId ? `/w/${workspaceId}/tasks/${encodeURIComponent(taskId)}` : `/w/${workspaceId}/tasks`;

const agentId = (principal: string) => principal.startsWith("agent:") ? principal.slice("agent:".length) : null;

/** A principal by name: an agent links to its page. */
function Who({ workspace, principal }: { workspace: Workspace; principal: string }) {
  return <Principal workspaceId={workspace.id} principal={principal} />;
}

/** Ask an agent for work: the task becomes a turn in the agent's session; its result comes to your inbox. */
export function DelegateForm({ workspace, assignee }: {
  workspace: Workspace; assignee?: { principal: string; name: string };
}) {
  const [to, setTo] = useState(assignee?.principal ?? "");
  const [text, setText] = useState("");
  const [context, setContext] = useState("");
  const [timeout, setTimeoutSeconds] = useState(3600);
  const [made, setMade] = useState<Task | null>(null);
  const action = useAction();
  if (!atLeast(workspace.role, "developer")) return null;
  async function submit(event: FormEvent) {
    event.preventDefault();
    const task = await action.run(() => api.post<Task>(`/api/workspaces/${enc(workspace.id)}/tasks`, {
      to, text, timeout_seconds: timeout, task_id: `console-${crypto.randomUUID()}`,
      ...(context.trim() ? { context_id: context.trim() } : {}),
    }));
    if (task) {
      setMade(task);
      setText("");
    }
  }
  return (
    <section className="card compose" aria-labelledby="delegate-heading">
      <h2 id="delegate-heading">Delegate</h2>
      <form className="stack" onSubmit={submit} aria-label="Delegate a task">
        {!assignee && (
          <label>To (agent)
            <input name="to" value={to} onChange={(e) => setTo(e.target.value)} required placeholder="agent:<id>"
              pattern="agent:[A-Za-z0-9_\-]+" maxLength={71} />
          </label>
        )}
        <label>Task{assignee ? ` for ${assignee.name}` : ""}
          <textarea name="task-text" value={text} onChange={(e) => setText(e.target.value)} rows={3} required
            maxLength={60000} />
        </label>
        <label>Thread (context id; empty: a new thread)
          <input name="context" value={context} onChange={(e) => setContext(e.target.value)} maxLength={128}
            pattern="[A-Za-z0-9._:\-]+" />
        </label>
        <label>Time limit
          <select name="timeout" value={timeout} onChange={(e) => setTimeoutSeconds(Number(e.target.value))}>
            {TIMEOUTS.map((choice) => <option key={choice.seconds} value={choice.seconds}>{choice.label}</option>)}
          </select>
        </label>
        <button type="submit" className="primary" disabled={action.busy || !text.trim() || !to}>
          {action.busy ? "Delegating…" : "Delegate"}</button>
      </form>
      <ErrorNote error={action.error} />
      {made && <p data-testid="delegated">Delegated: <Link to={tasksPath(workspace.id, made.task_id)}>
        follow the task</Link>; its result comes to your inbox.</p>}
    </section>
  );
}

function TaskRows({ workspace, tasks }: { workspace: Workspace; tasks: Task[] }) {
  return (
    <table className="table">
      <thead><tr><th>Task</th><th>State</th><th>From</th><th>To</th><th>Depth</th><th>Updated</th></tr></thead>
      <tbody>
        {tasks.map((task) => (
          <tr key={task.task_id} data-task-id={task.task_id}>
            <td><Link to={tasksPath(workspace.id, task.task_id)}>{task.text.slice(0, 80) || task.task_id}</Link></td>
            <td><StatusBadge status={task.state} reason={task.reason} /></td>
            <td><Who workspace={workspace} principal={task.requester} /></td>
            <td><Who workspace={workspace} principal={task.assignee} /></td>
            <td>{task.depth}</td>
            <td><Ago iso={task.updated_at} /></td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function TaskList({ workspace }: { workspace: Workspace }) {
  useTitle(`Tasks · ${workspace.name}`);
  const [params, setParams] = useSearchParams();
  const state = params.get("state") ?? "";
  const to = params.get("to") ?? "";
  const query = state ? `&state=${enc(state)}` : "";
  // Live: the list is read again every few seconds, so states move as the agents work
  const tasks = useResource(() => api.get<Page<Task>>(`/api/workspaces/${enc(workspace.id)}/tasks?limit=100${query}`),
    `${workspace.id}${query}`, 3000);
  const items = tasks.data?.items ?? [];
  return (
    <section>
      <div className="page-head">
        <div>
          <h1>Tasks</h1>
          <p className="muted">Work delegated to the agents of {workspace.name}, by members and by agents.</p>
        </div>
        <label>State
          <select name="state" value={state} onChange={(e) => setParams(e.target.value ? { state: e.target.value } : {})}>
            <option value="">any</option>
            {TASK_STATES.map((value) => <option key={value} value={value}>{value}</option>)}
          </select>
        </label>
      </div>
      {to && <DelegateForm key={to} workspace={workspace} assignee={{ principal: to, name: to }} />}
      {tasks.loading && <Loading label="Loading tasks…" />}
      <ErrorNote error={tasks.error} onRetry={tasks.reload} />
      {tasks.data && !items.length && (
        <Empty title={state ? `No ${state} tasks.` : "No tasks yet."}>
          <p className="muted">Delegate from an agent's page, or from the Agents directory.</p>
        </Empty>
      )}
      {items.length > 0 && <TaskRows workspace={workspace} tasks={items} />}
    </section>
  );
}

export function TasksPage() {
  return <WorkspacePage>{(workspace) => <TaskList workspace={workspace} />}</WorkspacePage>;
}

function TaskDetail({ workspace }: { workspace: Workspace }) {
  const { tid = "" } = useParams();
  const url = `/api/workspaces/${enc(workspace.id)}/tasks/${enc(tid)}`;
  const task = useResource(() => api.get<Task>(url), url, 2000);
  const item = task.data;
  const assigneeId = item ? agentId(item.assignee) : null;
  const assignee = useResource(async () => assigneeId ? api.get<Sandbox>(`/api/sandboxes/${enc(assigneeId)}`) : null,
    assigneeId ?? "");
  const cancel = useAction();
  const { user } = useSession();
  useTitle(item ? `Task ${item.task_id}` : "Task");
  const open = item ? OPEN_TASK_STATES.includes(item.state) : false;
  return (
    <section>
      <p><Link to={tasksPath(workspace.id)}>← Tasks</Link></p>
      {task.loading && <Loading />}
      <ErrorNote error={task.error} onRetry={task.reload} />
      {item && (
        <>
          <div className="page-head">
            <div>
              <h1>Task <code>{item.task_id}</code></h1>
              <p><StatusBadge status={item.state} reason={item.reason} />{" "}
                {item.reason && <span className="muted">{item.reason}</span>}</p>
            </div>
            {open && atLeast(workspace.role, "developer") && (
              <button type="button" className="danger" disabled={cancel.busy}
                onClick={() => void cancel.run(async () => { await api.post(`${url}/cancel`); await task.reload(); })}>
                {cancel.busy ? "Cancelling…" : "Cancel task"}</button>
            )}
          </div>
          <ErrorNote error={cancel.error} />
          <div className="columns">
            <section className="card">
              <h2>Asked</h2>
              <p className="pre-wrap">{item.text}</p>
              <dl className="facts">
                <dt>From</dt><dd><Who workspace={workspace} principal={item.requester} /></dd>
                <dt>To</dt><dd><Who workspace={workspace} principal={item.assignee} /></dd>
                <dt>Thread</dt><dd><code>{item.context_id}</code></dd>
                <dt>Created</dt><dd><Ago iso={item.created_at} /></dd>
                <dt>Deadline</dt><dd>{open ? <Countdown until={item.deadline} />
                  : new Date(item.deadline).toLocaleString()}</dd>
                <dt>Chain</dt><dd>{item.chain.map((id, index) => (
                  <span key={id}>{index > 0 && " → "}
                    {id === item.task_id ? <code>{id}</code> : <Link to={tasksPath(workspace.id, id)}><code>{id}</code></Link>}
                  </span>))} (depth {item.depth})</dd>
              </dl>
            </section>
            <section className="card" aria-labelledby="result-heading">
              <h2 id="result-heading">Result</h2>
              {item.result ? <p className="pre-wrap" data-testid="task-result">{item.result.text || "(no text)"}</p>
                : <p className="muted">{open ? "Not finished yet." : `No result: ${item.reason ?? item.state}.`}</p>}
              {item.result_message_id && <p className="muted small">Sent to the requester's mailbox.</p>}
            </section>
          </div>
          {item.session_id && assignee.data && (
            <SessionPane sessionId={item.session_id} sandbox={assignee.data} who={(id) => id}
              canDrive={mayDrive(workspace.role, assignee.data, user?.id)}
              onActivity={() => void task.reload()} />
          )}
          {item.session_id && !assignee.data && !assignee.loading && (
            <p className="muted">The assignee's session is not readable any more.</p>
          )}
        </>
      )}
    </section>
  );
}

export function TaskDetailPage() {
  return <WorkspacePage>{(workspace) => <TaskDetail workspace={workspace} />}</WorkspacePage>;
}

function Activity({ workspace }: { workspace: Workspace }) {
  useTitle(`Activity · ${workspace.name}`);
  const paged = usePaged<Interaction>(`/api/workspaces/${enc(workspace.id)}/interactions?order=desc&limit=100`);
  const first = paged.first;
  return (
    <section>
      <div className="page-head">
        <div>
          <h1>Activity</h1>
          <p className="muted">Who asked whom for what in {workspace.name}: messages, delegations and their states,
            newest first.</p>
        </div>
        <button type="button" onClick={() => void first.reload()}>Refresh</button>
      </div>
      {first.loading && <Loading label="Loading activity…" />}
      <ErrorNote error={first.error} onRetry={first.reload} />
      {first.data && !paged.items.length && <Empty title="Nothing has happened here yet." />}
      {paged.items.length > 0 && (
        <table className="table">
          <thead><tr><th>When</th><th>What</th><th>By</th><th>From → to</th><th>State</th><th>Task</th></tr></thead>
          <tbody>
            {paged.items.map((item) => (
              <tr key={item.id} data-kind={item.kind}>
                <td><Ago iso={item.at} /></td>
                <td>{item.kind}{item.detail && <span className="muted small"> · {item.detail}</span>}</td>
                <td><code>{item.actor}</code></td>
                <td><Who workspace={workspace} principal={item.from} /> → <Who workspace={workspace} principal={item.to} /></td>
                <td>{item.state && <StatusBadge status={item.state} />}</td>
                <td>{item.task_id && <Link to={tasksPath(workspace.id, item.task_id)}><code>{item.task_id}</code></Link>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {paged.hasMore && <button type="button" onClick={() => void paged.loadMore()} disabled={paged.more.busy}>
        {paged.more.busy ? "Loading…" : "Older"}</button>}
      <ErrorNote error={paged.more.error} />
    </section>
  );
}

export function ActivityPage() {
  return <WorkspacePage>{(workspace) => <Activity workspace={workspace} />}</WorkspacePage>;
}
