import { type ReactNode, useEffect, useId, useRef, useState } from "react";
import type { ApiError } from "./api";
import { useNow } from "./hooks";

export function Loading({ label = "Loading…" }: { label?: string }) {
  return (
    <p className="muted" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" /> {label}
    </p>
  );
}

export function ErrorNote({ error, onRetry }: { error: ApiError | string | null | undefined; onRetry?: () => void }) {
  if (!error) return null;
  const text = typeof error === "string" ? error : error.message;
  return (
    <div className="error" role="alert">
      <span>{text}</span>
      {onRetry && <button type="button" className="link" onClick={onRetry}>Try again</button>}
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="empty">
      <p className="empty-title">{title}</p>
      {children}
    </div>
  );
}

/** A modal built on <dialog>: focus moves in, Escape closes, focus returns to the opener. */
export function Dialog({ title, open, onClose, children }: {
  title: string; open: boolean; onClose: () => void; children: ReactNode;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) dialog.showModal();
    if (!open && dialog.open) dialog.close();
  }, [open]);
  return (
    <dialog ref={ref} aria-labelledby={titleId} onClose={onClose} onCancel={onClose}>
      <div className="dialog-head">
        <h2 id={titleId}>{title}</h2>
        <button type="button" className="icon" aria-label="Close" onClick={onClose}>×</button>
      </div>
      {open && children}
    </dialog>
  );
}

export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [copied, setCopied] = useState(false);
  async function copy() {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard permission (plain http on another host): select-and-copy fallback.
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    setCopied(true);
    window.setTimeout(() => setCopied(false), 2000);
  }
  return (
    <button type="button" onClick={copy} aria-live="polite">
      {copied ? "Copied" : label}
    </button>
  );
}

const TRANSITIONAL = new Set(["creating", "pausing", "resuming", "deleting"]);
export const isTransitional = (status: string) => TRANSITIONAL.has(status);

export function StatusBadge({ status, reason }: { status: string; reason?: string | null }) {
  return (
    <span className={`badge status-${status}`} title={reason ?? undefined} data-status={status}>
      {isTransitional(status) && <span className="spinner small" aria-hidden="true" />}
      {status}
    </span>
  );
}

export function relativeTime(iso: string | null | undefined, now: number): string {
  if (!iso) return "never";
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  if (Number.isNaN(seconds)) return "unknown";
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

export function Ago({ iso }: { iso: string | null | undefined }) {
  const now = useNow(10_000);
  return <time dateTime={iso ?? undefined} title={iso ? new Date(iso).toLocaleString() : undefined}>{relativeTime(iso, now)}</time>;
}

export function Countdown({ until }: { until: string }) {
  const now = useNow(1000);
  const left = Math.max(0, Math.round((Date.parse(until) - now) / 1000));
  if (left === 0) return <span className="warning">expired</span>;
  const minutes = Math.floor(left / 60);
  const seconds = String(left % 60).padStart(2, "0");
  return <span aria-label={`expires in ${minutes} minutes ${seconds} seconds`}>expires in {minutes}:{seconds}</span>;
}

export function formatNumber(value: number | undefined): string {
  return (value ?? 0).toLocaleString("en-US");
}

/** A bar chart as plain SVG: one bar per day. A chart library would weigh more than the whole console. */
export function BarChart({ points, label }: { points: { label: string; value: number }[]; label: string }) {
  const max = Math.max(1, ...points.map((point) => point.value));
  const width = 640, height = 180, gap = 4, bottom = 22;
  const bar = points.length ? (width - gap * points.length) / points.length : width;
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label={label} preserveAspectRatio="none">
        {points.map((point, index) => {
          const barHeight = ((height - bottom - 10) * point.value) / max;
          const x = index * (bar + gap) + gap / 2;
          return (
            <g key={point.label}>
              <rect x={x} y={height - bottom - barHeight} width={bar} height={barHeight} rx="2">
                <title>{`${point.label}: ${formatNumber(point.value)} requests`}</title>
              </rect>
              {(points.length <= 14 || index % Math.ceil(points.length / 10) === 0) && (
                <text x={x + bar / 2} y={height - 6} textAnchor="middle">{point.label.slice(5)}</text>
              )}
            </g>
          );
        })}
      </svg>
      <figcaption className="muted">{label}</figcaption>
    </figure>
  );
}
