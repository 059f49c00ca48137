import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError } from "./api";

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
