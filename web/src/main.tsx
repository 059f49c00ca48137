import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { BrowserRouter, Link, Route, Routes } from "react-router";
import { Home, Layout } from "./Layout";
import { AdminPage } from "./pages/Admin";
import { AgentsPage } from "./pages/Agents";
import { ConnectAgentPage } from "./pages/ConnectAgent";
import { MembersPage } from "./pages/Members";
import { SandboxDetailPage } from "./pages/SandboxDetail";
import { SandboxesPage } from "./pages/Sandboxes";
import { InvitationsPage } from "./pages/Invitations";
import { InboxPage } from "./pages/Inbox";
import { AuthPage } from "./pages/SignIn";
import { VerifyPage } from "./pages/Verify";
import { TokensPage } from "./pages/Tokens";
import { UsagePage } from "./pages/Usage";
import { ActivityPage, TaskDetailPage, TasksPage } from "./pages/Tasks";
import { RequireUser, SessionProvider } from "./session";
import "./styles.css";

function NotFound() {
  return (
    <section className="empty">
      <p className="empty-title">There is no page at this address.</p>
      <Link to="/">Go to your workspace</Link>
    </section>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <BrowserRouter>
      <SessionProvider>
        <Routes>
          <Route path="/sign-in" element={<AuthPage mode="sign-in" />} />
          <Route path="/sign-up" element={<AuthPage mode="sign-up" />} />
          <Route path="/verify" element={<VerifyPage />} />
          <Route element={<RequireUser><Layout /></RequireUser>}>
            <Route index element={<Home />} />
            <Route path="w/:wid" element={<SandboxesPage />} />
            <Route path="w/:wid/connect" element={<ConnectAgentPage />} />
            <Route path="w/:wid/sandboxes/:sid" element={<SandboxDetailPage />} />
            <Route path="w/:wid/sandboxes/:sid/chat/:sessionId?" element={<SandboxDetailPage view="chat" />} />
            <Route path="w/:wid/sandboxes/:sid/inbox" element={<SandboxDetailPage view="inbox" />} />
            <Route path="w/:wid/inbox" element={<InboxPage />} />
            <Route path="w/:wid/members" element={<MembersPage />} />
            <Route path="w/:wid/agents" element={<AgentsPage />} />
            <Route path="w/:wid/tasks" element={<TasksPage />} />
            <Route path="w/:wid/tasks/:tid" element={<TaskDetailPage />} />
            <Route path="w/:wid/activity" element={<ActivityPage />} />
            <Route path="w/:wid/usage" element={<UsagePage />} />
            <Route path="tokens" element={<TokensPage />} />
            <Route path="invitations" element={<InvitationsPage />} />
            <Route path="admin" element={<AdminPage />} />
            <Route path="*" element={<NotFound />} />
          </Route>
        </Routes>
      </SessionProvider>
    </BrowserRouter>
  </StrictMode>,
);
