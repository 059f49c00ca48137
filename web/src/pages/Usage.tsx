import { type FormEvent, useState } from "react";
import { api, atLeast, enc, type LlmQuota, type UsageReport, type UsageRow, type Workspace } from "../api";
import { BarChart, Empty, ErrorNote, formatNumber, Loading } from "../components";
import { useAction, useResource, useTitle } from "../hooks";
import { WorkspacePage } from "../Layout";

const DAYS = 14;

function isoDay(date: Date): string {
  return date.toISOString().slice(0, 10);
}


/** The last DAYS days, oldest first, with days without requests as zero. */
function dailyPoints(rows: UsageRow[], today: Date) {
  const byDay = new Map(rows.map((row) => [row.key, row.requests]));
  return Array.from({ length: DAYS }, (_, index) => {
    const day = new Date(today);
    day.setUTCDate(day.getUTCDate() - (DAYS - 1 - index));
    const label = isoDay(day);
    return { label, value: byDay.get(label) ?? 0 };
  });
}

function QuotaCard({ workspace }: { workspace: Workspace }) {
  const quota = useResource(() => api.get<LlmQuota>(`/api/workspaces/${enc(workspace.id)}/llm-quota`), workspace.id, 15000);
  const action = useAction();
  const [limit, setLimit] = useState<string>("");
  const maintainer = atLeast(workspace.role, "maintainer");
  async function submit(event: FormEvent) {
    event.preventDefault();
    const saved = await action.run(() => api.put<LlmQuota>(`/api/workspaces/${enc(workspace.id)}/llm-quota`, { max_rpd: Number(limit) }));
    if (saved) { setLimit(""); void quota.reload(); }
  }
  const data = quota.data;
  const share = data && data.max_rpd > 0 ? Math.min(1, data.used_today / data.max_rpd) : 0;
  return (
    <section className="card">
      <h2>Quota</h2>
      {quota.loading && <Loading label="Loading the quota…" />}
      <ErrorNote error={quota.error} onRetry={quota.reload} />
      {data && (
        <>
          <p data-testid="quota">
            <strong>{formatNumber(data.used_today)}</strong> requests today of{" "}
            {data.max_rpd > 0 ? <strong>{formatNumber(data.max_rpd)}</strong> : "no limit"}
            {data.resets_at && <span className="muted"> · resets {new Date(data.resets_at).toLocaleString()}</span>}
          </p>
          {data.max_rpd > 0 && (
            <meter min={0} max={1} value={share} high={0.8} optimum={0} aria-label="Share of today's quota used" />
          )}
        </>
      )}
      {data && (
        <p className="muted" data-testid="quota-ceiling">
          {data.may_set_unlimited
            ? "As an admin you may set any limit, or 0 for none."
            : data.max_settable == null
              ? "Any positive limit; only an admin may lift it (0)."
              : `At most ${formatNumber(data.max_settable)} requests a day (the server's default); only an admin may set more or lift the limit.`}
        </p>
      )}
      {maintainer && (
        <form className="inline-form fields" onSubmit={submit}>
          {/* No max attribute: above the ceiling the server refuses, and its message says why. */}
          <label>{data?.may_set_unlimited ? "Requests per day (0 = no limit)" : "Requests per day"}
            <input name="max_rpd" type="number" min={0} required value={limit} onChange={(e) => setLimit(e.target.value)} />
          </label>
          <button type="submit" disabled={action.busy}>Set quota</button>
        </form>
      )}
      <ErrorNote error={action.error} />
    </section>
  );
}

function Usage({ workspace }: { workspace: Workspace }) {
  useTitle(`LLM usage · ${workspace.name}`);
  const today = new Date();
  const from = new Date(today);
  from.setUTCDate(from.getUTCDate() - (DAYS - 1));
  const range = `from=${isoDay(from)}&to=${isoDay(today)}`;
  const base = `/api/workspaces/${enc(workspace.id)}/usage?${range}`;
  const daily = useResource(() => api.get<UsageReport>(`${base}&group_by=day`), `${workspace.id}:day`);
  const models = useResource(() => api.get<UsageReport>(`${base}&group_by=model`), `${workspace.id}:model`);
  const points = daily.data ? dailyPoints(daily.data.items, today) : [];
  const total = points.reduce((sum, point) => sum + point.value, 0);
  return (
    <section>
      <div className="page-head"><div><h1>LLM usage</h1><p className="muted">{workspace.name} · last {DAYS} days</p></div></div>
      <div className="columns">
        <QuotaCard workspace={workspace} />
        <section className="card wide-card">
          <h2>Requests per day</h2>
          {daily.loading && <Loading label="Loading usage…" />}
          <ErrorNote error={daily.error} onRetry={daily.reload} />
          {daily.data && (total === 0
            ? <Empty title="No LLM requests in the last two weeks.">
                <p>Agents in this workspace call models through the server's LLM proxy; their requests show up here.</p>
              </Empty>
            : <BarChart points={points} label={`${formatNumber(total)} requests in the last ${DAYS} days`} />)}
        </section>
        <section className="card wide-card">
          <h2>By model</h2>
          {models.loading && <Loading />}
          <ErrorNote error={models.error} onRetry={models.reload} />
          {models.data && models.data.items.length > 0 && (
            <table className="list">
              <thead><tr><th>Model</th><th>Requests</th><th>Input tokens</th><th>Output tokens</th></tr></thead>
              <tbody>
                {models.data.items.map((row) => (
                  <tr key={row.key}>
                    <td data-label="Model">{row.key}</td>
                    <td data-label="Requests">{formatNumber(row.requests)}</td>
                    <td data-label="Input tokens">{formatNumber(row.input_tokens)}</td>
                    <td data-label="Output tokens">{formatNumber(row.output_tokens)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          {models.data && !models.data.items.length && <p className="muted">No requests yet.</p>}
        </section>
      </div>
    </section>
  );
}

export function UsagePage() {
  return <WorkspacePage>{(workspace) => <Usage workspace={workspace} />}</WorkspacePage>;
}
