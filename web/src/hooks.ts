import { useCallback, useEffect, useRef, useState } from "react";
import { api, ApiError, enc, type Page } from "./api";

export interface Resource<T> {
  data: T | undefined;
  error: ApiError | null;
  loading: boolean;
  reload: () => Promise<void>;
}

/** Loads `load()` when `key` changes, optionally again every `intervalMs` (live status) while the tab is visible. */
export function useResource<T>(load: () => Promise<T>, key: string, intervalMs?: number): Resource<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<ApiError | null>(null);
  const [loading, setLoading] = useState(true);
  const loader = useRef(load);
  loader.current = load;
  const current = useRef(key);

  const reload = useCallback(async () => {
    const asked = current.current;
    try {
      const value = await loader.current();
      if (current.current !== asked) return;
      setData(value);
      setError(null);
    } catch (caught) {
      if (current.current !== asked) return;
      setError(caught instanceof ApiError ? caught : new ApiError(0, "client", String(caught)));
    } finally {
      if (current.current === asked) setLoading(false);
    }
  }, []);

  useEffect(() => {
    current.current = key;
    setData(undefined);
    setError(null);
    setLoading(true);
    void reload();
  }, [key, reload]);

  useEffect(() => {
    if (!intervalMs) return;
    const timer = window.setInterval(() => {
      if (document.visibilityState === "visible") void reload();
    }, intervalMs);
    return () => window.clearInterval(timer);
  }, [intervalMs, reload, key]);

  return { data, error, loading, reload };
}

/** Runs one action at a time, keeping its error as a sentence to show. */
export function useAction(): {
  busy: boolean;
  error: string | null;
  run: <T>(action: () => Promise<T>) => Promise<T | undefined>;
  clear: () => void;
} {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const run = useCallback(async <T,>(action: () => Promise<T>) => {
    setBusy(true);
    setError(null);
    try {
      return await action();
    } catch (caught) {
      setError(caught instanceof Error ? caught.message : String(caught));
      return undefined;
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, run, clear: () => setError(null) };
}

/** Re-renders every `ms` (countdowns, "2 minutes ago"). */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), ms);
    return () => window.clearInterval(timer);
  }, [ms]);
  return now;
}

export function useTitle(title: string): void {
  useEffect(() => {
    document.title = title ? `${title} · agentserver` : "agentserver";
  }, [title]);
}

/** A list read page by page (next_cursor), newest first, that grows with "More". A reload reads the first page
 * again and keeps everything shown after it: what the new first page pushed out comes right after it. */
export function usePaged<T extends { id: string }>(path: string) {
  const [extra, setExtra] = useState<T[]>([]); // what is shown after the first page, in order
  const [cursor, setCursor] = useState<string | null | undefined>(undefined);
  const extended = useRef(false); // a later page is loaded: its cursor, not the first page's, reads on
  const head = useRef<T[]>([]);
  const first = useResource(async () => {
    const page = await api.get<Page<T>>(path);
    if (extended.current) setExtra((items) => uniqueById([...head.current, ...items]));
    else setCursor(page.next_cursor);
    return page.items;
  }, path);
  head.current = first.data ?? [];
  useEffect(() => {
    extended.current = false;
    setExtra([]);
    setCursor(undefined);
  }, [path]);
  const more = useAction();
  const loadMore = () => more.run(async () => {
    const page = await api.get<Page<T>>(`${path}${path.includes("?") ? "&" : "?"}cursor=${enc(cursor ?? "")}`);
    extended.current = true;
    setExtra((items) => uniqueById([...items, ...page.items]));
    setCursor(page.next_cursor);
  });
  const shown = new Set(head.current.map((item) => item.id));
  return { first, items: [...head.current, ...extra.filter((item) => !shown.has(item.id))], hasMore: Boolean(cursor),
    loadMore, more };
}

function uniqueById<T extends { id: string }>(items: T[]): T[] {
  const seen = new Set<string>();
  return items.filter((item) => !seen.has(item.id) && Boolean(seen.add(item.id)));
}
