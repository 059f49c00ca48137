import { useEffect, useRef, useState } from "react";
import { Link } from "react-router";
import { api, ApiError, type User } from "../api";
import { ErrorNote, Loading } from "../components";
import { useTitle } from "../hooks";
import { useSession } from "../session";

/** `/verify#token=…`: the mailed link. The token rides in the fragment, which browsers never send to a server. */
export function VerifyPage() {
  useTitle("Confirm your email address");
  const { user, setUser } = useSession();
  const [state, setState] = useState<{ done?: User; error?: ApiError | string }>({});
  const started = useRef(false);
  useEffect(() => {
    if (started.current) return;  // once, even under StrictMode's double effects: the token is single use
    started.current = true;
    const token = new URLSearchParams(window.location.hash.slice(1)).get("token");
    window.history.replaceState(null, "", "/verify");  // keep the used token out of the history
    if (!token) {
      setState({ error: "This link has no token. Open the whole link from the mail." });
      return;
    }
    api.post<User>("/api/auth/verify", { token })
      .then((confirmed) => setState({ done: confirmed }))
      .catch((caught: unknown) => setState({ error: caught instanceof ApiError ? caught : "That did not work." }));
  }, []);
  useEffect(() => {  // the signed-in session (once loaded) drops its banner
    if (state.done && user && user.id === state.done.id && !user.email_verified) setUser(state.done);
  }, [state.done, user, setUser]);
  return (
    <main className="narrow auth">
      <h1>agentserver</h1>
      <section className="card">
        <h2>Confirm your email address</h2>
        {!state.done && !state.error && <Loading label="Confirming…" />}
        {state.done && <p role="status">Thank you: <strong>{state.done.email}</strong> is confirmed.</p>}
        <ErrorNote error={state.error} />
        <p><Link to={state.done ? "/invitations" : "/"}>{state.done ? "See your invitations" : "Go to the console"}</Link></p>
      </section>
    </main>
  );
}
