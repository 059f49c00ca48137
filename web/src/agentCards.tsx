import { type FormEvent, useState } from "react";
import { api, atLeast, enc, type AgentCard, type AgentSkill, type Sandbox, type Workspace } from "./api";
import { Ago, Dialog, ErrorNote, Loading } from "./components";
import { useAction, useResource } from "./hooks";

export const HARNESS_NAMES: Record<string, string> = { opencode: "opencode", claudecode: "Claude Code", codex: "Codex" };

export function TagList({ tags, label }: { tags: string[]; label: string }) {
  if (!tags.length) return null;
  return <ul className="tag-list" aria-label={label}>{tags.map((tag) => <li key={tag}>{tag}</li>)}</ul>;
}

export function SkillList({ skills }: { skills: AgentSkill[] }) {
  return (
    <ul className="skill-list" aria-label="Skills">
      {skills.map((skill) => (
        <li key={skill.id} data-skill={skill.id}>
          <strong>{skill.name}</strong> <code className="muted small">{skill.id}</code>
          <div className="small">{skill.description}</div>
          <TagList tags={skill.tags} label={`Tags of ${skill.name}`} />
          {skill.examples.length > 0 && <div className="muted small">e.g. {skill.examples.map((e) => `“${e}”`).join(", ")}</div>}
        </li>
      ))}
    </ul>
  );
}

/** Who may write an agent's card (roles.md `card.edit`): developers; another member's local agent only when shared. */
export function mayEditCard(sandbox: Sandbox, workspace: Workspace, userId: string | undefined): boolean {
  return atLeast(workspace.role, "developer")
    && (sandbox.kind === "cloud" || sandbox.created_by === userId || sandbox.shared === true);
}

const words = (text: string) => text.split(",").map((item) => item.trim()).filter(Boolean);
const lines = (text: string) => text.split("\n").map((item) => item.trim()).filter(Boolean);

interface SkillDraft { id: string; name: string; description: string; tags: string; examples: string }
const draftOf = (skill: AgentSkill): SkillDraft =>
  ({ ...skill, tags: skill.tags.join(", "), examples: skill.examples.join("\n") });

/** The written part of a card as a form: the server checks every limit and says which one a value breaks. */
function CardDialog({ card, open, onClose, onSaved }: {
  card: AgentCard; open: boolean; onClose: () => void; onSaved: (card: AgentCard) => void;
}) {
  const action = useAction();
  const [description, setDescription] = useState(card.description);
  const [tags, setTags] = useState(card.tags.join(", "));
  const [skills, setSkills] = useState<SkillDraft[]>(card.skills.map(draftOf));
  const change = (index: number, field: keyof SkillDraft, value: string) =>
    setSkills(skills.map((skill, at) => (at === index ? { ...skill, [field]: value } : skill)));
  async function submit(event: FormEvent) {
    event.preventDefault();
    const saved = await action.run(() => api.put<AgentCard>(`/api/sandboxes/${enc(card.id)}/card`, {
      description, tags: words(tags),
      skills: skills.map((skill) => ({ ...skill, tags: words(skill.tags), examples: lines(skill.examples) })),
    }));
    if (saved) { onSaved(saved); onClose(); }
  }
  return (
    <Dialog title="Edit the agent's card" open={open} onClose={() => { action.clear(); onClose(); }}>
      <form onSubmit={submit} className="stack card-form">
        <label>Description
          <textarea name="description" rows={3} maxLength={2000} value={description}
            onChange={(e) => setDescription(e.target.value)} />
        </label>
        <label>Tags <span className="muted small">(comma-separated)</span>
          <input name="tags" value={tags} onChange={(e) => setTags(e.target.value)} />
        </label>
        <fieldset className="stack">
          <legend>Skills</legend>
          {skills.map((skill, index) => (
            <div key={index} className="skill-edit stack" role="group" aria-label={`Skill ${index + 1}`}>
              <div className="grid-2">
                <label>Id <input name="skill-id" required pattern="[a-z0-9][a-z0-9\-]{0,63}" value={skill.id}
                  title="lower-case letters, digits and hyphens" onChange={(e) => change(index, "id", e.target.value)} /></label>
                <label>Name <input name="skill-name" required maxLength={100} value={skill.name}
                  onChange={(e) => change(index, "name", e.target.value)} /></label>
              </div>
              <label>What it does <textarea name="skill-description" required rows={2} maxLength={1000}
                value={skill.description} onChange={(e) => change(index, "description", e.target.value)} /></label>
              <label>Skill tags <input name="skill-tags" value={skill.tags}
                onChange={(e) => change(index, "tags", e.target.value)} /></label>
              <label>Examples <span className="muted small">(one a line)</span>
                <textarea name="skill-examples" rows={2} value={skill.examples}
                  onChange={(e) => change(index, "examples", e.target.value)} /></label>
              <div className="actions">
                <button type="button" onClick={() => setSkills(skills.filter((_, at) => at !== index))}>Remove skill</button>
              </div>
            </div>
          ))}
          {skills.length < 20 && (
            <button type="button" onClick={() => setSkills([...skills, { id: "", name: "", description: "", tags: "", examples: "" }])}>
              Add a skill
            </button>
          )}
        </fieldset>
        <ErrorNote error={action.error} />
        <div className="actions">
          <button type="button" onClick={onClose}>Cancel</button>
          <button className="primary" type="submit" disabled={action.busy}>{action.busy ? "Saving…" : "Save card"}</button>
        </div>
      </form>
    </Dialog>
  );
}

/** The agent's card on its page: what it reports and what developers wrote, with the editor for those who may. */
export function CardSection({ sandbox, workspace, userId }: { sandbox: Sandbox; workspace: Workspace; userId: string | undefined }) {
  const card = useResource(() => api.get<AgentCard>(`/api/sandboxes/${enc(sandbox.id)}/card`),
    `${sandbox.id}:${sandbox.status}:${JSON.stringify(sandbox.agent_info)}`);
  const [editing, setEditing] = useState(false);
  const item = card.data;
  return (
    <section className="card" aria-labelledby="agent-card-title">
      <div className="page-head">
        <h2 id="agent-card-title">Card</h2>
        {item && mayEditCard(sandbox, workspace, userId) && (
          <button type="button" onClick={() => setEditing(true)}>Edit card</button>
        )}
      </div>
      {card.loading && <Loading label="Loading the card…" />}
      <ErrorNote error={card.error} onRetry={card.reload} />
      {item && (
        <>
          <p data-testid="card-summary">{item.summary}</p>
          <TagList tags={item.tags} label="Card tags" />
          {item.skills.length ? <SkillList skills={item.skills} />
            : <p className="muted small">No skills written yet: they tell members and other agents what to ask it.</p>}
          <p className="muted small">
            {item.updated_at ? <>Written <Ago iso={item.updated_at} />. </> : null}
            <a href={`/api/sandboxes/${enc(sandbox.id)}/agent-card.json`} target="_blank" rel="noreferrer">A2A card (JSON)</a>
          </p>
          {editing && <CardDialog card={item} open={editing} onClose={() => setEditing(false)}
            onSaved={() => void card.reload()} />}
        </>
      )}
    </section>
  );
}
