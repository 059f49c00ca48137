// Principals (`agent:<id>`, `member:<id>`) shown by name: the workspace's agents (its directory) and members, read
// once per workspace and shared by every row that names one (tasks, activity, inboxes).
import { useEffect, useState } from "react";
import { Link } from "react-router";
import { api, type AgentCard, enc, type Member, type Page } from "./api";

type Names = Map<string, string>;
const loaded = new Map<string, Promise<Names>>();

function namesOf(workspaceId: string): Promise<Names> {
  let names = loaded.get(workspaceId);
  if (!names) {
    names = Promise.all([
      api.get<Page<AgentCard>>(`/api/workspaces/${enc(workspaceId)}/agents?limit=200`).catch(() => ({ items: [] })),
      api.get<Page<Member>>(`/api/workspaces/${enc(workspaceId)}/members`).catch(() => ({ items: [] })),
    ]).then(([agents, members]) => new Map([
      ...agents.items.map((agent): [string, string] => [`agent:${agent.id}`, agent.name]),
      ...members.items.map((member): [string, string] => [`member:${member.user_id}`, member.name || member.email]),
    ]));
    loaded.set(workspaceId, names);
    // Agents come and go: a later page reads them again
    window.setTimeout(() => loaded.delete(workspaceId), 60_000);
  }
  return names;
}

export function usePrincipalNames(workspaceId: string): Names {
  const [names, setNames] = useState<Names>(new Map());
  useEffect(() => {
    let current = true;
    void namesOf(workspaceId).then((found) => { if (current) setNames(found); });
    return () => { current = false; };
  }, [workspaceId]);
  return names;
}

/** A principal by name (its id on hover); an agent links to its page. */
export function Principal({ workspaceId, principal }: { workspaceId: string; principal: string }) {
  const names = usePrincipalNames(workspaceId);
  const name = names.get(principal) ?? principal;
  const agent = principal.startsWith("agent:") ? principal.slice("agent:".length) : null;
  return agent ? <Link to={`/w/${workspaceId}/sandboxes/${agent}`} title={principal}>{name}</Link>
    : <span title={principal}>{name}</span>;
}
