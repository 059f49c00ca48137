import { createContext, type ReactNode, useCallback, useContext, useEffect, useState } from "react";
import { Navigate, useLocation } from "react-router";
import { api, ApiError, type User, whenSignedOut, type Workspace } from "./api";
import { ErrorNote, Loading } from "./components";

interface Session {
  user: User | null;
  setUser: (user: User | null) => void;
  signOut: () => Promise<void>;
  workspaces: Workspace[] | null;
  reloadWorkspaces: () => Promise<Workspace[]>;
}

const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error("useSession outside SessionProvider");
  return session;
}

/** Who is signed in (GET /api/auth/me) and their workspaces, for every page. */
export function SessionProvider({ children }: { children: ReactNode }) {
  const [user, setUser] = useState<User | null | undefined>(undefined);
  const [workspaces, setWorkspaces] = useState<Workspace[] | null>(null);
  const [error, setError] = useState<ApiError | null>(null);

  const loadMe = useCallback(async () => {
    setError(null);
    try {
      setUser(await api.get<User>("/api/auth/me"));
    } catch (caught) {
      if (caught instanceof ApiError && caught.status === 401) setUser(null);
      else setError(caught as ApiError);
    }
  }, []);

  useEffect(() => {
    void loadMe();
    whenSignedOut(() => setUser(null));
    return () => whenSignedOut(null);
  }, [loadMe]);

  const reloadWorkspaces = useCallback(async () => {
    const page = await api.get<{ items: Workspace[] }>("/api/workspaces");
    setWorkspaces(page.items);
    return page.items;
  }, []);

  useEffect(() => {
    setWorkspaces(null);
    if (user) reloadWorkspaces().catch((caught) => setError(caught as ApiError));
  }, [user, reloadWorkspaces]);

  const signOut = useCallback(async () => {
    try {
      await api.post("/api/auth/logout");
    } finally {
      setUser(null);
    }
  }, []);

  if (error && user === undefined) {
    return <main className="narrow"><ErrorNote error={error} onRetry={loadMe} /></main>;
  }
  if (user === undefined) return <main className="narrow"><Loading /></main>;
  return (
    <SessionContext.Provider value={{ user, setUser, signOut, workspaces, reloadWorkspaces }}>
      {children}
    </SessionContext.Provider>
  );
}

/** Pages behind sign-in: the signed-out visitor goes to /sign-in and comes back to the same address. */
export function RequireUser({ children }: { children: ReactNode }) {
  const { user } = useSession();
  const location = useLocation();
  if (!user) {
    const next = location.pathname + location.search;
    return <Navigate to={next === "/" ? "/sign-in" : `/sign-in?next=${encodeURIComponent(next)}`} replace />;
  }
  return <>{children}</>;
}

/** Only same-site paths are followed after sign-in (no open redirect through ?next=). */
export function safeNext(value: string | null): string {
  return value && value.startsWith("/") && !value.startsWith("//") ? value : "/";
}
