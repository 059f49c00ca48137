import { useEffect, useState } from "react";
import { useNavigate } from "react-router";
import { api, enc, type Workspace } from "./api";
import { Dialog, ErrorNote } from "./components";
import { useAction } from "./hooks";
import { useSession } from "./session";

/** A workspace being deleted says so on its pages until the server has stopped its sandboxes and removed it. */
export function DeletingNotice({ workspace }: { workspace: Workspace }) {
  const { reloadWorkspaces } = useSession();
  const deleting = workspace.status === "deleting";
  // Poll until the server has removed it (then the workspace list no longer has it).
  useEffect(() => {
    if (!deleting) return undefined;
    const timer = window.setInterval(() => void reloadWorkspaces().catch(() => undefined), 3000);
    return () => window.clearInterval(timer);
  }, [deleting, reloadWorkspaces]);
  if (!deleting) return null;
  return (
    <p className="notice" role="status" data-testid="workspace-deleting">
      This workspace is being deleted: its sandboxes are stopping, and it disappears once they are gone.
      Nothing new can be created in it.
    </p>
  );
}

/** The owner's way to delete the workspace (DELETE /api/workspaces/{wid}: 202, then the server stops everything). */
export function DeleteWorkspaceCard({ workspace }: { workspace: Workspace }) {
  const { reloadWorkspaces } = useSession();
  const navigate = useNavigate();
  const action = useAction();
  const [confirming, setConfirming] = useState(false);
  if (workspace.role !== "owner" || workspace.status === "deleting") return null;
  const remove = async () => {
    const done = await action.run(() => api.del(`/api/workspaces/${enc(workspace.id)}`));
    if (done !== undefined) {
      setConfirming(false);
      const left = await reloadWorkspaces();
      // An empty workspace is gone at once; one with sandboxes stays, marked deleting, until they are.
      if (!left.some((item) => item.id === workspace.id)) navigate("/");
    }
  };
  return (
    <section className="card">
      <h2>Delete this workspace</h2>
      <p className="muted small">Stops and deletes every sandbox and local agent registration in it, then the workspace.</p>
      <button type="button" className="danger" onClick={() => setConfirming(true)}>Delete workspace…</button>
      <Dialog title={`Delete ${workspace.name}?`} open={confirming} onClose={() => { action.clear(); setConfirming(false); }}>
        <p>All its sandboxes stop and are deleted, with their files; its local agents are disconnected. This cannot be undone.</p>
        <ErrorNote error={action.error} />
        <div className="actions">
          <button type="button" onClick={() => setConfirming(false)}>Cancel</button>
          <button type="button" className="danger" disabled={action.busy} onClick={() => void remove()}>
            {action.busy ? "Deleting…" : "Delete workspace"}
          </button>
        </div>
      </Dialog>
    </section>
  );
}
