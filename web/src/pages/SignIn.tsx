import { type FormEvent, useState } from "react";
import { Link, Navigate, useSearchParams } from "react-router";
import { api, type Providers, type User } from "../api";
import { ErrorNote, Loading } from "../components";
import { useAction, useResource, useTitle } from "../hooks";
import { safeNext, useSession } from "../session";

function ProviderButtons({ providers }: { providers: Providers }) {
  if (!providers.oidc.length) return null;
  return (
    <div className="stack">
      {providers.oidc.map((provider) => (
        // A full navigation: the server redirects to the identity provider and back to /.
        <a key={provider.id} className="button wide" href={`/api/auth/oidc/${encodeURIComponent(provider.id)}/login`}>
          Continue with {provider.name}
        </a>
      ))}
      {providers.password && <p className="divider"><span>or</span></p>}
    </div>
  );
}

export function AuthPage({ mode }: { mode: "sign-in" | "sign-up" }) {
  const signingUp = mode === "sign-up";
  useTitle(signingUp ? "Sign up" : "Sign in");
  const { user, setUser } = useSession();
  const [params] = useSearchParams();
  const next = safeNext(params.get("next"));
  const providers = useResource(() => api.get<Providers>("/api/auth/providers"), "providers");
  const action = useAction();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [name, setName] = useState("");
  const [setupToken, setSetupToken] = useState("");

  if (user) return <Navigate to={next} replace />;

  async function submit(event: FormEvent) {
    event.preventDefault();
    const signedIn = await action.run(() =>
      signingUp
        ? api.post<User>("/api/auth/register", { email, password, name: name || undefined, setup_token: setupToken || undefined })
        : api.post<User>("/api/auth/login", { email, password }),
    );
    if (signedIn) setUser(signedIn);
  }

  return (
    <main className="narrow auth">
      <h1>agentserver</h1>
      <section className="card">
        <h2>{signingUp ? "Create your account" : "Sign in"}</h2>
        {providers.loading && <Loading />}
        <ErrorNote error={providers.error} onRetry={providers.reload} />
        {params.get("error") && <ErrorNote error="Signing in with that provider did not work. Try again." />}
        {providers.data && <ProviderButtons providers={providers.data} />}
        {providers.data?.password && (
          <form onSubmit={submit} className="stack">
            {signingUp && (
              <label>Name <input name="name" autoComplete="name" value={name} onChange={(e) => setName(e.target.value)} /></label>
            )}
            <label>Email
              <input name="email" type="email" required autoComplete="email" value={email}
                onChange={(e) => setEmail(e.target.value)} />
            </label>
            <label>Password
              <input name="password" type="password" required autoComplete={signingUp ? "new-password" : "current-password"}
                value={password} onChange={(e) => setPassword(e.target.value)} />
            </label>
            {signingUp && providers.data.setup_pending && (
              <label>Setup token <span className="muted small">(only for the server's first admin: `agentserver up` printed it;
                in AWS it is the setup-token secret)</span>
                <input name="setup-token" autoComplete="off" value={setupToken} onChange={(e) => setSetupToken(e.target.value)} />
              </label>
            )}
            {signingUp && providers.data.invite_only && (
              <p className="muted small">Sign-up here is by invitation: use the address a workspace invited.</p>
            )}
            <ErrorNote error={action.error} />
            <button className="primary" type="submit" disabled={action.busy}>
              {action.busy ? "Please wait…" : signingUp ? "Sign up" : "Sign in"}
            </button>
          </form>
        )}
        {providers.data && !providers.data.password && !providers.data.oidc.length && (
          <p>No way to sign in is configured on this server. Ask its administrator.</p>
        )}
      </section>
      {providers.data?.password && (
        <p className="center">
          {signingUp
            ? <>Already have an account? <Link to={`/sign-in${params.toString() ? `?${params}` : ""}`}>Sign in</Link></>
            : <>New here? <Link to={`/sign-up${params.toString() ? `?${params}` : ""}`}>Create an account</Link></>}
        </p>
      )}
    </main>
  );
}
