import { useNavigate } from "react-router";
import { api, enc, type Invitation, type Page, type Role } from "../api";
import { Empty, ErrorNote, Loading } from "../components";
import { useAction, useResource, useTitle } from "../hooks";
import { useSession } from "../session";

/** The invitations to the signed-in person's address: accept (joining the workspace) or decline. */
export function InvitationsPage() {
  useTitle("Invitations");
  const { user, reloadWorkspaces } = useSession();
  const navigate = useNavigate();
  const invitations = useResource(() => api.get<Page<Invitation>>("/api/invitations"), `mine-${user?.email_verified}`);
  const action = useAction();
  const accept = (invitation: Invitation) => action.run(async () => {
    const joined = await api.post<{ workspace_id: string; role: Role }>(`/api/invitations/${enc(invitation.id)}/accept`);
    await reloadWorkspaces();
    navigate(`/w/${joined.workspace_id}`);
  });
  const decline = (invitation: Invitation) => action.run(async () => {
    await api.post(`/api/invitations/${enc(invitation.id)}/decline`);
    await invitations.reload();
  });
  return (
    <section>
      <div className="page-head"><div><h1>Invitations</h1><p className="muted">Workspaces that invited {user?.email}</p></div></div>
      {user && !user.email_verified && (
        <p>Invitations to your address show here once you have confirmed it (see the banner above).</p>
      )}
      {invitations.loading && <Loading />}
      <ErrorNote error={invitations.error} onRetry={invitations.reload} />
      {invitations.data && !invitations.data.items.length && user?.email_verified && (
        <Empty title="No pending invitations.">When a workspace maintainer invites your address, it shows here.</Empty>
      )}
      {invitations.data && invitations.data.items.length > 0 && (
        <table className="list">
          <thead><tr><th>Workspace</th><th>Role</th><th>Invited by</th><th><span className="visually-hidden">Actions</span></th></tr></thead>
          <tbody>
            {invitations.data.items.map((invitation) => (
              <tr key={invitation.id}>
                <td data-label="Workspace">{invitation.workspace_name}</td>
                <td data-label="Role">{invitation.role}</td>
                <td data-label="Invited by">{invitation.inviter_name}</td>
                <td>
                  <button type="button" className="primary" disabled={action.busy} aria-label={`Accept ${invitation.workspace_name}`}
                    onClick={() => void accept(invitation)}>Accept</button>{" "}
                  <button type="button" disabled={action.busy} aria-label={`Decline ${invitation.workspace_name}`}
                    onClick={() => void decline(invitation)}>Decline</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <ErrorNote error={action.error} />
    </section>
  );
}
