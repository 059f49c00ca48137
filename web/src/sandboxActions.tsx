import { type FormEvent, useState } from "react";
import { api, atLeast, enc, type Role, type Sandbox } from "./api";
import { Dialog, ErrorNote } from "./components";
import { useAction } from "./hooks";

/** What the caller's role allows on one sandbox (docs/roles.md), and what its state allows. */
export function allowedActions(sandbox: Sandbox, role: Role, userId: string | undefined) {
  const developer = atLeast(role, "developer");
  const cloud = sandbox.kind === "cloud";
  const live = !["deleting", "deleted", "failed"].includes(sandbox.status);
  return {
    open: developer && ["running", "paused"].includes(sandbox.status)
      && (cloud || sandbox.shared === true || sandbox.created_by === userId), // someone's laptop: theirs, or shared
    pause: developer && cloud && sandbox.status === "running",
    resume: developer && cloud && sandbox.status === "paused",
    rename: developer && live,
    remove: live && (atLeast(role, "maintainer") || (developer && sandbox.created_by === userId)),
  };
}

/**
 * Opens the sandbox on its own origin in a new tab. The tab is opened during the click (so no popup
 * blocker steps in) and cut off from this window before it navigates: what a sandbox serves is untrusted
 * and must not reach the console through window.opener. A paused sandbox is resumed first: the tab says so
 * while the console waits for it to run, then asks for a fresh ticket.
 */
export async function openSandbox(sandbox: Sandbox, onProgress: () => void = () => {}): Promise<void> {
  const tab = window.open("about:blank", "_blank");
  if (tab) {
    tab.opener = null;
    tab.document.title = `${sandbox.name} · agentserver`;
    tab.document.body.textContent = `Opening ${sandbox.name}…`;
  }
  try {
    let opened = await api.post<{ url: string; status?: string }>(`/api/sandboxes/${enc(sandbox.id)}/open`);
    if (opened.status && opened.status !== "running") {
      onProgress();
      if (tab) tab.document.body.textContent = `Resuming ${sandbox.name}… this tab opens it once it runs.`;
      await waitUntilRunning(sandbox.id);
      opened = await api.post<{ url: string; status?: string }>(`/api/sandboxes/${enc(sandbox.id)}/open`);
    }
    if (tab) tab.location.href = opened.url;
    else window.location.href = opened.url;
  } catch (error) {
    tab?.close();
    throw error;
  }
}

const RESUME_WAIT_MS = 5 * 60 * 1000;

async function waitUntilRunning(sandboxId: string): Promise<void> {
  const deadline = Date.now() + RESUME_WAIT_MS;
  while (Date.now() < deadline) {
    await new Promise((resolve) => window.setTimeout(resolve, 1500));
    const current = await api.get<Sandbox>(`/api/sandboxes/${enc(sandboxId)}`);
    if (current.status === "running") return;
    if (!["resuming", "paused", "creating"].includes(current.status)) {
      throw new Error(`The sandbox did not start: it is ${current.status}${current.status_reason ? ` (${current.status_reason})` : ""}.`);
    }
  }
  throw new Error("The sandbox is taking too long to start. Look at its lifecycle events, then try again.");
}

export function RenameDialog({ sandbox, onClose, onDone }: { sandbox: Sandbox | null; onClose: () => void; onDone: () => void }) {
  const action = useAction();
  const [name, setName] = useState("");
  const [shownFor, setShownFor] = useState<string | null>(null);
  if (sandbox && shownFor !== sandbox.id) {
    setShownFor(sandbox.id);
    setName(sandbox.name);
  }
  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!sandbox) return;
    const renamed = await action.run(() => api.patch<Sandbox>(`/api/sandboxes/${enc(sandbox.id)}`, { name }));
    if (renamed) { onDone(); onClose(); }
  }
  return (
    <Dialog title="Rename sandbox" open={sandbox !== null} onClose={() => { action.clear(); setShownFor(null); onClose(); }}>
      <form onSubmit={submit} className="stack">
        <label>Name <input name="sandbox-name" required maxLength={64} value={name} onChange={(e) => setName(e.target.value)} /></label>
        <ErrorNote error={action.error} />
        <div className="actions">
          <button type="button" onClick={onClose}>Cancel</button>
          <button className="primary" type="submit" disabled={action.busy}>Rename</button>
        </div>
      </form>
    </Dialog>
  );
}

export function DeleteDialog({ sandbox, onClose, onDone }: { sandbox: Sandbox | null; onClose: () => void; onDone: () => void }) {
  const action = useAction();
  async function confirm() {
    if (!sandbox) return;
    const deleted = await action.run(() => api.del<Sandbox>(`/api/sandboxes/${enc(sandbox.id)}`));
    if (deleted) { onDone(); onClose(); }
  }
  return (
    <Dialog title="Delete sandbox" open={sandbox !== null} onClose={() => { action.clear(); onClose(); }}>
      <p>
        Delete <strong>{sandbox?.name}</strong>?{" "}
        {sandbox?.kind === "local"
          ? "The local agent loses its registration and has to be connected again with a new code."
          : "The sandbox and its working files are removed."}
      </p>
      <ErrorNote error={action.error} />
      <div className="actions">
        <button type="button" onClick={onClose}>Cancel</button>
        <button className="danger" type="button" onClick={confirm} disabled={action.busy}>Delete</button>
      </div>
    </Dialog>
  );
}

/** The row of buttons for one sandbox; absent buttons are actions the role or the state rules out. */
export function SandboxButtons({ sandbox, role, userId, onChanged, onRename, onDelete }: {
  sandbox: Sandbox; role: Role; userId: string | undefined; onChanged: () => void;
  onRename: (sandbox: Sandbox) => void; onDelete: (sandbox: Sandbox) => void;
}) {
  const allowed = allowedActions(sandbox, role, userId);
  const action = useAction();
  const lifecycle = (verb: "pause" | "resume") =>
    action.run(async () => {
      await api.post(`/api/sandboxes/${enc(sandbox.id)}/${verb}`);
      onChanged();
    });
  const label = (verb: string) => `${verb} ${sandbox.name}`;
  return (
    <div className="row-actions">
      {allowed.open && <button type="button" className="primary" aria-label={label("Open")} disabled={action.busy}
        onClick={() => void action.run(() => openSandbox(sandbox, onChanged))}>Open</button>}
      {allowed.pause && <button type="button" aria-label={label("Pause")} disabled={action.busy}
        onClick={() => void lifecycle("pause")}>Pause</button>}
      {allowed.resume && <button type="button" aria-label={label("Resume")} disabled={action.busy}
        onClick={() => void lifecycle("resume")}>Resume</button>}
      {allowed.rename && <button type="button" aria-label={label("Rename")} onClick={() => onRename(sandbox)}>Rename</button>}
      {allowed.remove && <button type="button" className="danger" aria-label={label("Delete")}
        onClick={() => onDelete(sandbox)}>Delete</button>}
      <ErrorNote error={action.error} />
    </div>
  );
}
