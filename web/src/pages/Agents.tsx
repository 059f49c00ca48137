import { useState } from "react";
import { Link } from "react-router";
import { api, atLeast, enc, type AgentCard, type Page, type Workspace } from "../api";
import { HARNESS_NAMES, SkillList, TagList } from "../agentCards";
import { Ago, Empty, ErrorNote, Loading, StatusBadge } from "../components";
import { useResource, useTitle } from "../hooks";
import { WorkspacePage } from "../Layout";

const STATUSES = ["running", "offline", "paused", "creating", "resuming", "pausing", "failed"];

interface Filters { q: string; skill: string; tag: string; status: string; kind: string; harness: string }
const NO_FILTERS: Filters = { q: "", skill: "", tag: "", status: "", kind: "", harness: "" };

function where(card: AgentCard): string {
  const place = card.kind === "local" ? "local agent" : "cloud sandbox";
  return [place, card.host, card.os].filter(Boolean).join(" · ");
}

/** The workspace's agents by their cards (api.md, "Agent cards"), found by skill, tag, status, kind, harness or words. */
function Directory({ workspace }: { workspace: Workspace }) {
  useTitle(`Agents · ${workspace.name}`);
  const [filters, setFilters] = useState<Filters>(NO_FILTERS);
  const query = new URLSearchParams(Object.entries(filters).filter(([, value]) => value.trim())).toString();
  const agents = useResource(
    () => api.get<Page<AgentCard>>(`/api/workspaces/${enc(workspace.id)}/agents?limit=200${query ? `&${query}` : ""}`),
    `${workspace.id}?${query}`, 10_000);
  const set = (field: keyof Filters) => (event: { target: { value: string } }) =>
    setFilters({ ...filters, [field]: event.target.value });
  const items = agents.data?.items ?? [];
  const filtered = query !== "";
  return (
    <section>
      <div className="page-head">
        <div>
          <h1>Agents</h1>
          <p className="muted">Every agent of {workspace.name}: what it is, where it runs and what it can do.</p>
        </div>
      </div>
      <form className="fields card agent-filters" role="search" aria-label="Find agents" onSubmit={(event) => event.preventDefault()}>
        <label>Search <input type="search" name="q" maxLength={200} value={filters.q} onChange={set("q")}
          placeholder="words on the card" /></label>
        <label>Skill <input name="skill" value={filters.skill} onChange={set("skill")} placeholder="id or name" /></label>
        <label>Tag <input name="tag" maxLength={40} value={filters.tag} onChange={set("tag")} /></label>
        <label>Status
          <select name="status" value={filters.status} onChange={set("status")}>
            <option value="">any</option>
            {STATUSES.map((status) => <option key={status} value={status}>{status}</option>)}
          </select>
        </label>
        <label>Kind
          <select name="kind" value={filters.kind} onChange={set("kind")}>
            <option value="">any</option><option value="cloud">cloud sandbox</option><option value="local">local agent</option>
          </select>
        </label>
        <label>Harness
          <select name="harness" value={filters.harness} onChange={set("harness")}>
            <option value="">any</option>
            {Object.entries(HARNESS_NAMES).map(([value, label]) => <option key={value} value={value}>{label}</option>)}
          </select>
        </label>
        {filtered && <button type="button" onClick={() => setFilters(NO_FILTERS)}>Clear filters</button>}
      </form>
      {agents.loading && <Loading label="Loading agents…" />}
      <ErrorNote error={agents.error} onRetry={agents.reload} />
      {agents.data && !items.length && (
        <Empty title={filtered ? "No agent matches these filters." : "No agents in this workspace yet."}>
          {!filtered && <p>Create a cloud sandbox or connect a local agent from the Sandboxes page.</p>}
        </Empty>
      )}
      <div className="agent-grid">
        {items.map((card) => (
          <article key={card.id} className="card agent-card" data-agent={card.id} aria-labelledby={`agent-${card.id}`}>
            <h2 id={`agent-${card.id}`}><Link to={`/w/${workspace.id}/sandboxes/${card.id}`}>{card.name}</Link></h2>
            <p><StatusBadge status={card.status} reason={card.status_reason} />{" "}
              <span className="small">{HARNESS_NAMES[card.harness] ?? card.harness}{card.harness_version ? ` ${card.harness_version}` : ""}</span></p>
            <p className="muted small">{where(card)}{card.last_heartbeat_at && <> · seen <Ago iso={card.last_heartbeat_at} /></>}</p>
            <p>{card.summary}</p>
            <TagList tags={card.tags} label={`Tags of ${card.name}`} />
            {card.skills.length > 0 && <SkillList skills={card.skills} />}
            {atLeast(workspace.role, "developer") && (
              <p><Link to={`/w/${workspace.id}/tasks?to=${encodeURIComponent(`agent:${card.id}`)}`}>Delegate a task</Link></p>
            )}
          </article>
        ))}
      </div>
    </section>
  );
}

export function AgentsPage() {
  return <WorkspacePage>{(workspace) => <Directory workspace={workspace} />}</WorkspacePage>;
}
