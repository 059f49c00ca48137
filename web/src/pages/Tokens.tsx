import { type FormEvent, useState } from "react";
import { api, type CreatedToken, enc, type Page, type Token } from "../api";
import { Ago, CopyButton, Empty, ErrorNote, Loading } from "../components";
import { useAction, useResource, useTitle } from "../hooks";

function TokenRow({ token, onRevoked }: { token: Token; onRevoked: () => void }) {
  const action = useAction();
  return (
    <tr>
      <td data-label="Name">{token.name}</td>
      <td data-label="Created"><Ago iso={token.created_at} /></td>
      <td data-label="Expires">{token.expires_at ? new Date(token.expires_at).toLocaleDateString() : "never"}</td>
      <td data-label="Last used"><Ago iso={token.last_used_at} /></td>
      <td>
        <button type="button" className="danger" aria-label={`Revoke ${token.name}`} disabled={action.busy}
          onClick={() => void action.run(async () => { await api.del(`/api/tokens/${enc(token.id)}`); onRevoked(); })}>
          Revoke
        </button>
        <ErrorNote error={action.error} />
      </td>
    </tr>
  );
}

export function TokensPage() {
  useTitle("Personal tokens");
  const tokens = useResource(() => api.get<Page<Token>>("/api/tokens"), "tokens");
  const action = useAction();
  const [name, setName] = useState("");
  const [days, setDays] = useState(90);
  const [created, setCreated] = useState<CreatedToken | null>(null);
  async function submit(event: FormEvent) {
    event.preventDefault();
    const token = await action.run(() => api.post<CreatedToken>("/api/tokens", { name, expires_in_days: days }));
    if (token) { setCreated(token); setName(""); void tokens.reload(); }
  }
  return (
    <section>
      <div className="page-head"><div><h1>Personal tokens</h1>
        <p className="muted">For scripts and the API: send <code>Authorization: Bearer &lt;token&gt;</code>.</p></div></div>
      <form className="card inline-form" onSubmit={submit}>
        <h2>New token</h2>
        <div className="fields">
          <label>Name <input name="token-name" required maxLength={100} value={name} onChange={(e) => setName(e.target.value)} /></label>
          <label>Valid for (days)
            <input name="token-days" type="number" min={1} max={365} required value={days} onChange={(e) => setDays(Number(e.target.value))} />
          </label>
          <button className="primary" type="submit" disabled={action.busy}>Create token</button>
        </div>
        <ErrorNote error={action.error} />
      </form>
      {created && (
        <div className="card success" role="status">
          <p><strong>{created.name}</strong> is ready. Copy it now: it is shown only once.</p>
          <div className="command"><pre><code data-testid="new-token">{created.token}</code></pre><CopyButton text={created.token} /></div>
          <button type="button" className="link" onClick={() => setCreated(null)}>I have copied it</button>
        </div>
      )}
      {tokens.loading && <Loading label="Loading tokens…" />}
      <ErrorNote error={tokens.error} onRetry={tokens.reload} />
      {tokens.data && !tokens.data.items.length && <Empty title="You have no personal tokens." />}
      {tokens.data && tokens.data.items.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>Created</th><th>Expires</th><th>Last used</th><th><span className="visually-hidden">Actions</span></th></tr></thead>
          <tbody>{tokens.data.items.map((token) => <TokenRow key={token.id} token={token} onRevoked={() => void tokens.reload()} />)}</tbody>
        </table>
      )}
    </section>
  );
}
