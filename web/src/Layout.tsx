import { type FormEvent, type ReactNode, useEffect, useState } from "react";
import { Link, NavLink, Navigate, Outlet, useNavigate, useParams } from "react-router";
import { api, clientConfig, type ClientConfig, type Invitation, type Page, type Workspace } from "./api";
import { Dialog, ErrorNote, Loading } from "./components";
import { useAction, useResource } from "./hooks";
import { useSession } from "./session";
import { DeletingNotice } from "./WorkspaceDeletion";

const LAST_WORKSPACE = "agentserver.workspace";

export function NewWorkspaceDialog({ open, onClose }: { open: boolean; onClose: () => void }) {
  const { reloadWorkspaces } = useSession();
  const navigate = useNavigate();
  const action = useAction();
  const [name, setName] = useState("");
  async function submit(event: FormEvent) {
    event.preventDefault();
    const created = await action.run(() => api.post<Workspace>("/api/workspaces", { name }));
    if (created) {
      await reloadWorkspaces();
      setName("");
      onClose();
      navigate(`/w/${created.id}`);
    }
  }
  return (
    <Dialog title="New workspace" open={open} onClose={() => { action.clear(); onClose(); }}>
      <form onSubmit={submit} className="stack">
        <label>Name <input name="workspace-name" required maxLength={100} value={name} onChange={(e) => setName(e.target.value)} /></label>
        <ErrorNote error={action.error} />
        <div className="actions">
          <button type="button" onClick={onClose}>Cancel</button>
          <button className="primary" type="submit" disabled={action.busy}>{action.busy ? "Creating…" : "Create workspace"}</button>
        </div>
      </form>
    </Dialog>
  );
}

function WorkspaceSwitcher({ current }: { current?: string }) {
  const { workspaces } = useSession();
  const navigate = useNavigate();
  const [creating, setCreating] = useState(false);
  if (!workspaces) return null;
  return (
    <div className="switcher">
      <label className="visually-hidden" htmlFor="workspace-switcher">Workspace</label>
      <select id="workspace-switcher" value={current ?? ""} onChange={(e) => {
        if (e.target.value === "__new__") setCreating(true);
        else navigate(`/w/${e.target.value}`);
      }}>
        {!current && <option value="">Choose a workspace</option>}
        {workspaces.map((workspace) => (
          <option key={workspace.id} value={workspace.id}>
            {workspace.name} ({workspace.status === "deleting" ? "deleting" : workspace.role})
          </option>
        ))}
        <option value="__new__">+ New workspace…</option>
      </select>
      <NewWorkspaceDialog open={creating} onClose={() => setCreating(false)} />
    </div>
  );
}

/** What /config.json of the local stack says about its cloud sandboxes (absent on AWS). */
type SandboxIsolation = "bubblewrap" | "trusted" | "unavailable";

/** A local stack whose sandboxes run unisolated (or cannot run) says so on every page. */
function SandboxIsolationBanner() {
  const [isolation, setIsolation] = useState<SandboxIsolation | undefined>();
  useEffect(() => {
    void clientConfig().then((config) =>
      setIsolation((config as (ClientConfig & { sandbox_isolation?: SandboxIsolation }) | null)?.sandbox_isolation));
  }, []);
  if (isolation === "trusted") {
    return (
      <p className="banner warning" role="alert">
        Cloud sandboxes on this server run <strong>without isolation</strong> (started with --trusted-sandboxes):
        code in any sandbox can read everything the server can, including its provider keys and other sandboxes.
      </p>
    );
  }
  if (isolation === "unavailable") {
    return (
      <p className="banner" role="status">
        Cloud sandboxes cannot start on this server: bubblewrap is not available to isolate them.
      </p>
    );
  }
  return null;
}

/** The frame of every signed-in page: brand, workspace switcher, navigation, account links. */
export function Layout() {
  const { user, signOut } = useSession();
  const { wid } = useParams();
  const [menuOpen, setMenuOpen] = useState(false);
  useEffect(() => {
    if (wid) localStorage.setItem(LAST_WORKSPACE, wid);
  }, [wid]);
  return (
    <>
      <a className="skip" href="#main">Skip to content</a>
      <header className="top">
        <Link to="/" className="brand">agentserver</Link>
        <WorkspaceSwitcher current={wid} />
        <button type="button" className="menu-toggle" aria-expanded={menuOpen} aria-controls="site-nav"
          onClick={() => setMenuOpen(!menuOpen)}>Menu</button>
        <nav id="site-nav" aria-label="Main" className={menuOpen ? "open" : ""} onClick={() => setMenuOpen(false)}>
          {wid && <>
            <NavLink to={`/w/${wid}`} end>Sandboxes</NavLink>
            <NavLink to={`/w/${wid}/agents`}>Agents</NavLink>
            <NavLink to={`/w/${wid}/members`}>Members</NavLink>
            <NavLink to={`/w/${wid}/usage`}>LLM usage</NavLink>
            <NavLink to={`/w/${wid}/inbox`}>Inbox</NavLink>
            <NavLink to={`/w/${wid}/tasks`}>Tasks</NavLink>
            <NavLink to={`/w/${wid}/activity`}>Activity</NavLink>
          </>}
          <NavLink to="/invitations">Invitations<InvitationCount /></NavLink>
          <NavLink to="/tokens">Tokens</NavLink>
          {user?.role === "admin" && <NavLink to="/admin">Admin</NavLink>}
          <span className="who" title={user?.email}>{user?.name || user?.email}</span>
          <button type="button" className="link" onClick={() => void signOut()}>Sign out</button>
        </nav>
      </header>
      <SandboxIsolationBanner />
      <main id="main" tabIndex={-1}>
        {user && !user.email_verified && <VerifyBanner email={user.email} />}
        <Outlet />
      </main>
    </>
  );
}

/** Until the address is confirmed, invitations cannot be accepted (nor accounts linked): say so, with a resend. */
function VerifyBanner({ email }: { email: string }) {
  const action = useAction();
  const [sent, setSent] = useState(false);
  const resend = async () => {
    if (await action.run(() => api.post("/api/auth/verify/resend"))) setSent(true);
  };
  return (
    <div className="banner" role="status" aria-label="Address not confirmed">
      <span>Confirm your email address <strong>{email}</strong> with the link we mailed you; until then you cannot
        accept invitations to workspaces.</span>{" "}
      {sent ? <span>A new link is on its way.</span>
        : <button type="button" className="link" disabled={action.busy} onClick={() => void resend()}>Send the link again</button>}
      <ErrorNote error={action.error} />
    </div>
  );
}

/** How many invitations wait for the caller, next to the navigation link. */
function InvitationCount() {
  const { user } = useSession();
  const pending = useResource(() => api.get<Page<Invitation>>("/api/invitations"), `invitations-${user?.email_verified}`);
  const count = pending.data?.items.length ?? 0;
  return count ? <span className="count" aria-label={`${count} pending`}> {count}</span> : null;
}

/** `/`: the workspace used last, else the first one. */
export function Home() {
  const { workspaces } = useSession();
  const [creating, setCreating] = useState(false);
  if (!workspaces) return <Loading />;
  const last = localStorage.getItem(LAST_WORKSPACE);
  const target = workspaces.find((workspace) => workspace.id === last) ?? workspaces[0];
  if (target) return <Navigate to={`/w/${target.id}`} replace />;
  return (
    <section className="empty">
      <p className="empty-title">You are not in any workspace yet.</p>
      <p>Create one, or ask someone to invite you to theirs.</p>
      <button className="primary" type="button" onClick={() => setCreating(true)}>New workspace</button>
      <NewWorkspaceDialog open={creating} onClose={() => setCreating(false)} />
    </section>
  );
}

/** The current workspace with the caller's role, for pages under /w/:wid. */
export function useWorkspace(): { workspace: Workspace | undefined; missing: boolean } {
  const { wid } = useParams();
  const { workspaces } = useSession();
  const workspace = workspaces?.find((item) => item.id === wid);
  return { workspace, missing: workspaces !== null && !workspace };
}

export function WorkspacePage({ children }: { children: (workspace: Workspace) => ReactNode }) {
  const { workspace, missing } = useWorkspace();
  if (missing) {
    return <ErrorNote error="That workspace was not found, or you are not a member of it." />;
  }
  if (!workspace) return <Loading />;
  return <><DeletingNotice workspace={workspace} />{children(workspace)}</>;
}
