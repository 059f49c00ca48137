"""A fake GitHub on a loopback port, speaking GitHub's wire format for an OAuth app's sign-in.

- `GET /login/oauth/authorize`: the browser's stop at GitHub. It signs in the account named by
  GitHub's own `login` parameter (the first account when absent), as if the person had approved,
  and redirects to `redirect_uri` with `code` and `state`.
- `POST /login/oauth/access_token`: the code exchange, with the client credentials in the form,
  PKCE (S256) checked. Errors come as HTTP 200 with an `error` field, as GitHub does; the answer is
  JSON or form-encoded per `Accept`.
- `GET /user`, `GET /user/emails`: the REST API with `Authorization: Bearer|token <token>`.
- `GET /user/memberships/orgs/{org}`: the caller's membership (needs the `read:org` scope): 200
  with `state` "active" or "pending", 404 for a non-member.

It records what it saw, so tests can check where the client secret travelled and that the PKCE
verifier matched the challenge.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit


@dataclass
class GitHubAccount:
    id: int
    login: str
    name: str | None
    emails: list[dict[str, Any]]  # GitHub's /user/emails entries: email, primary, verified, visibility
    orgs: dict[str, str] = field(default_factory=dict)  # organisation login -> membership state

    def user_document(self, base_url: str) -> dict[str, Any]:
        public_email = next((e["email"] for e in self.emails if e["primary"] and e["visibility"] == "public"), None)
        return {"login": self.login, "id": self.id, "node_id": f"U_{self.id}", "type": "User", "site_admin": False,
                "avatar_url": f"{base_url}/avatars/u/{self.id}", "html_url": f"{base_url}/{self.login}",
                "name": self.name, "email": public_email}


@dataclass
class Grant:
    """An authorization code waiting for its exchange."""

    account: GitHubAccount
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None


@dataclass
class Exchange:
    """A code exchange as the fake saw it."""

    accept: str
    code_verifier: str
    verifier_matched_challenge: bool | None  # None when no challenge was sent at authorize
    error: str | None


@dataclass
class SeenRequest:
    method: str
    path: str
    carried_client_secret: bool


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class FakeGitHub:
    client_id: str = "Iv1.fake0client0id"
    client_secret: str = field(default_factory=lambda: secrets.token_hex(20))
    callback_urls: set[str] = field(default_factory=set)  # the OAuth app's registered callback URLs
    accounts: list[GitHubAccount] = field(default_factory=list)
    grants: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, tuple[GitHubAccount, str]] = field(default_factory=dict)  # token -> (account, scope)
    exchanges: list[Exchange] = field(default_factory=list)
    seen: list[SeenRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_account(self, account: GitHubAccount) -> GitHubAccount:
        self.accounts.append(account)
        return account

    def start(self) -> FakeGitHub:
        fake = self

        class Handler(_GitHubHandler):
            github = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-github", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def paths_that_saw_the_secret(self) -> set[str]:
        return {request.path for request in self.seen if request.carried_client_secret}


class _GitHubHandler(BaseHTTPRequestHandler):
    github: FakeGitHub
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small answers, sent at once rather than after a delayed ACK

    def log_message(self, format: str, *args: Any) -> None:  # quiet, like a real server's users see it
        pass

    # Plumbing -----------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self, path: str, body: bytes) -> None:
        secret = self.github.client_secret
        authorization = self.headers.get("authorization", "")
        basic = ""
        if authorization.lower().startswith("basic "):
            basic = base64.b64decode(authorization[6:]).decode(errors="replace")
        carried = secret in self.path or secret in body.decode(errors="replace") or secret in basic or any(
            secret in value for value in self.headers.values())
        with self.github._lock:
            self.github.seen.append(SeenRequest(self.command, path, carried))

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, document: Any) -> None:
        self._send(status, json.dumps(document).encode(), "application/json; charset=utf-8")

    def _api_error(self, status: int, message: str) -> None:
        self._send_json(status, {"message": message, "documentation_url": "https://docs.github.com/rest",
                                 "status": str(status)})

    # Routes -------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        parts = urlsplit(self.path)
        self._record(parts.path, b"")
        query = dict(parse_qsl(parts.query))
        if parts.path == "/login/oauth/authorize":
            self._authorize(query)
        elif parts.path == "/user":
            self._user()
        elif parts.path == "/user/emails":
            self._emails()
        elif parts.path.startswith("/user/memberships/orgs/"):
            self._membership(parts.path.removeprefix("/user/memberships/orgs/"))
        else:
            self._api_error(404, "Not Found")

    def do_POST(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        body = self._read_body()
        self._record(parts.path, body)
        if parts.path == "/login/oauth/access_token":
            form = dict(parse_qsl(parts.query))
            if self.headers.get("content-type", "").startswith("application/json"):
                form.update(json.loads(body or b"{}"))
            else:
                form.update(parse_qsl(body.decode()))
            self._access_token(form)
        else:
            self._api_error(404, "Not Found")

    def _authorize(self, query: dict[str, str]) -> None:
        github = self.github
        if query.get("client_id") != github.client_id:
            self._send(404, b"<html><body>Not Found</body></html>", "text/html; charset=utf-8")
            return
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in github.callback_urls:
            self._send(200, b"<html><body>The redirect_uri is not associated with this application.</body></html>",
                       "text/html; charset=utf-8")
            return
        account = next((a for a in github.accounts if a.login == query.get("login")), github.accounts[0])
        code = secrets.token_hex(10)
        with github._lock:
            github.grants[code] = Grant(account, redirect_uri, query.get("scope", ""), query.get("code_challenge"),
                                        query.get("code_challenge_method"))
        back = {"code": code, **({"state": query["state"]} if "state" in query else {})}
        self._send(302, b"", "text/html; charset=utf-8", {"Location": f"{redirect_uri}?{urlencode(back)}"})

    def _token_answer(self, document: dict[str, str]) -> None:
        accept = self.headers.get("accept", "")
        if "application/json" in accept:
            self._send_json(200, document)
        else:
            self._send(200, urlencode(document).encode(), "application/x-www-form-urlencoded; charset=utf-8")

    def _access_token(self, form: dict[str, str]) -> None:
        github = self.github
        accept = self.headers.get("accept", "")

        def refuse(error: str, description: str, matched: bool | None = None) -> None:
            with github._lock:
                github.exchanges.append(Exchange(accept, form.get("code_verifier", ""), matched, error))
            self._token_answer({"error": error, "error_description": description,
                                "error_uri": "https://docs.github.com/apps/troubleshooting"})

        if form.get("client_id") != github.client_id or form.get("client_secret") != github.client_secret:
            refuse("incorrect_client_credentials", "The client_id and/or client_secret passed are incorrect.")
            return
        with github._lock:
            grant = github.grants.pop(form.get("code", ""), None)  # a code works once
        if grant is None:
            refuse("bad_verification_code", "The code passed is incorrect or expired.")
            return
        if form.get("redirect_uri") not in (None, grant.redirect_uri):
            refuse("redirect_uri_mismatch", "The redirect_uri MUST match the registered callback URL for this "
                                            "application.")
            return
        matched: bool | None = None
        if grant.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            method = grant.code_challenge_method or "plain"
            matched = (s256(verifier) if method == "S256" else verifier) == grant.code_challenge
            if not matched:
                refuse("bad_verification_code", "The code_verifier does not match the code_challenge.", False)
                return
        token = f"gho_{secrets.token_hex(18)}"
        scope = ",".join(grant.scope.split())  # GitHub lists the granted scopes comma-separated
        with github._lock:
            github.tokens[token] = (grant.account, scope)
            github.exchanges.append(Exchange(accept, form.get("code_verifier", ""), matched, None))
        self._token_answer({"access_token": token, "token_type": "bearer", "scope": scope})

    def _caller(self) -> tuple[GitHubAccount, str] | None:
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        return self.github.tokens.get(token.strip())

    def _user(self) -> None:
        caller = self._caller()
        if caller is None:
            self._api_error(401, "Requires authentication")
            return
        self._send_json(200, caller[0].user_document(self.github.url))

    def _emails(self) -> None:
        caller = self._caller()
        if caller is None:
            self._api_error(401, "Requires authentication")
            return
        account, scope = caller
        if not {"user", "user:email"} & set(scope.split(",")):
            self._api_error(404, "Not Found")  # what GitHub answers without the user:email scope
            return
        self._send_json(200, account.emails)

    def _membership(self, org: str) -> None:
        caller = self._caller()
        if caller is None:
            self._api_error(401, "Requires authentication")
            return
        account, scope = caller
        if "read:org" not in scope.split(","):
            self._api_error(403, "You need at least read:org scope to view organization memberships.")
            return
        state = next((value for name, value in account.orgs.items() if name.lower() == org.lower()), None)
        if state is None:
            self._api_error(404, "Not Found")
            return
        self._send_json(200, {"url": f"{self.github.url}/orgs/{org}/memberships/{account.login}", "state": state,
                              "role": "member", "organization": {"login": org}, "user": {"login": account.login}})
