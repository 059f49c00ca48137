import { type FormEvent, useEffect, useState } from "react";
import { useNavigate } from "react-router";
import { api, atLeast, enc, type Invitation, type Member, type Page, type Role, ROLES, type Workspace } from "../api";
import { Ago, ErrorNote, Loading } from "../components";
import { useAction, useResource, useTitle } from "../hooks";
import { WorkspacePage } from "../Layout";
import { useSession } from "../session";
import { DeleteWorkspaceCard } from "../WorkspaceDeletion";

/** The roles a role may hand out (docs/roles.md): an owner any, a maintainer developer or guest. */
function assignable(role: Role): Role[] {
  if (role === "owner") return ROLES;
  if (role === "maintainer") return ["guest", "developer"];
  return [];
}

function InviteForm({ workspace, onAdded }: { workspace: Workspace; onAdded: () => void }) {
  const roles = assignable(workspace.role);
  const action = useAction();
  const [email, setEmail] = useState("");
  const [role, setRole] = useState<Role>("developer");
  async function submit(event: FormEvent) {
    event.preventDefault();
    const added = await action.run(() => api.post<Invitation>(`/api/workspaces/${enc(workspace.id)}/members`, { email, role }));
    if (added) { setEmail(""); onAdded(); }
  }
  return (
    <form className="card inline-form" onSubmit={submit} aria-label="Invite a member">
      <h2>Invite a member</h2>
      <p className="muted small">We mail them an invitation. They join once they accept it, signed in with this address
        confirmed; it expires after 7 days.</p>
      <div className="fields">
        <label>Email <input name="invite-email" type="email" required value={email} onChange={(e) => setEmail(e.target.value)} /></label>
        <label>Role
          <select name="invite-role" value={role} onChange={(e) => setRole(e.target.value as Role)}>
            {roles.map((item) => <option key={item} value={item}>{item}</option>)}
          </select>
        </label>
        <button className="primary" type="submit" disabled={action.busy}>Invite</button>
      </div>
      <ErrorNote error={action.error} />
    </form>
  );
}

function MemberRow({ member, workspace, self, onChanged }: {
  member: Member; workspace: Workspace; self: boolean; onChanged: () => void;
}) {
  const action = useAction();
  const { reloadWorkspaces } = useSession();
  const navigate = useNavigate();
  const owner = workspace.role === "owner";
  // The picker shows the chosen role while it is saved, not the old one until the list reloads.
  const [pending, setPending] = useState<Role | null>(null);
  useEffect(() => setPending(null), [member.role]);
  const changeRole = async (role: Role) => {
    setPending(role);
    const saved = await action.run(async () => {
      await api.put(`/api/workspaces/${enc(workspace.id)}/members/${enc(member.user_id)}`, { role });
      onChanged();
      return true;
    });
    if (!saved) setPending(null);  // refused: back to the role the member has
  };
  const remove = () => action.run(async () => {
    await api.del(`/api/workspaces/${enc(workspace.id)}/members/${enc(member.user_id)}`);
    if (self) {
      await reloadWorkspaces();
      navigate("/");
    } else onChanged();
  });
  return (
    <tr>
      <td data-label="Name">{member.name || member.email}{self && <span className="muted"> (you)</span>}
        <div className="muted small">{member.email}</div></td>
      <td data-label="Role">
        {owner ? (
          <select aria-label={`Role of ${member.email}`} value={pending ?? member.role} disabled={action.busy}
            onChange={(e) => void changeRole(e.target.value as Role)}>
            {ROLES.map((role) => <option key={role} value={role}>{role}</option>)}
          </select>
        ) : member.role}
      </td>
      <td data-label="Joined"><Ago iso={member.joined_at} /></td>
      <td>
        {(owner || self) && (
          <button type="button" className="danger" disabled={action.busy} aria-label={self ? "Leave this workspace" : `Remove ${member.email}`}
            onClick={() => void remove()}>{self ? "Leave" : "Remove"}</button>
        )}
        <ErrorNote error={action.error} />
      </td>
    </tr>
  );
}

function PendingInvitations({ workspace, version }: { workspace: Workspace; version: number }) {
  const pending = useResource(() => api.get<Page<Invitation>>(`/api/workspaces/${enc(workspace.id)}/invitations`),
    `${workspace.id}-${version}`);
  const action = useAction();
  const mayRevoke = assignable(workspace.role);
  const revoke = (invitation: Invitation) => action.run(async () => {
    await api.del(`/api/workspaces/${enc(workspace.id)}/invitations/${enc(invitation.id)}`);
    await pending.reload();
  });
  if (!pending.data?.items.length) return <ErrorNote error={pending.error} onRetry={pending.reload} />;
  return (
    <section className="card" aria-label="Pending invitations">
      <h2>Pending invitations</h2>
      <table className="list">
        <thead><tr><th>Email</th><th>Role</th><th>Expires</th><th><span className="visually-hidden">Actions</span></th></tr></thead>
        <tbody>
          {pending.data.items.map((invitation) => (
            <tr key={invitation.id}>
              <td data-label="Email">{invitation.email}<div className="muted small">invited by {invitation.inviter_name}</div></td>
              <td data-label="Role">{invitation.role}</td>
              <td data-label="Expires">{new Date(invitation.expires_at).toLocaleDateString()}</td>
              <td>{mayRevoke.includes(invitation.role) && (
                <button type="button" className="danger" disabled={action.busy} aria-label={`Revoke the invitation of ${invitation.email}`}
                  onClick={() => void revoke(invitation)}>Revoke</button>
              )}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <ErrorNote error={action.error} />
    </section>
  );
}

function Members({ workspace }: { workspace: Workspace }) {
  useTitle(`Members · ${workspace.name}`);
  const { user } = useSession();
  const [invited, setInvited] = useState(0);
  const members = useResource(() => api.get<Page<Member>>(`/api/workspaces/${enc(workspace.id)}/members`), workspace.id);
  return (
    <section>
      <div className="page-head"><div><h1>Members</h1><p className="muted">{workspace.name}</p></div></div>
      {atLeast(workspace.role, "maintainer") && <InviteForm workspace={workspace} onAdded={() => setInvited((n) => n + 1)} />}
      {atLeast(workspace.role, "maintainer") && <PendingInvitations workspace={workspace} version={invited} />}
      {members.loading && <Loading label="Loading members…" />}
      <ErrorNote error={members.error} onRetry={members.reload} />
      {members.data && (
        <table className="list">
          <thead><tr><th>Member</th><th>Role</th><th>Joined</th><th><span className="visually-hidden">Actions</span></th></tr></thead>
          <tbody>
            {members.data.items.map((member) => (
              <MemberRow key={member.user_id} member={member} workspace={workspace} self={member.user_id === user?.id}
                onChanged={() => void members.reload()} />
            ))}
          </tbody>
        </table>
      )}
      <DeleteWorkspaceCard workspace={workspace} />
    </section>
  );
}

export function MembersPage() {
  return <WorkspacePage>{(workspace) => <Members workspace={workspace} />}</WorkspacePage>;
}
