"""GitHub (OAuth 2.0) and a generic OpenID Connect provider, over HTTP.

authlib does the protocol work: authorization URLs with PKCE (S256) and nonce, the code exchange
with client authentication, and the ID token's claims (iss, aud, exp, iat, nonce, azp, at_hash).
joserfc, which authlib itself uses for this since 1.7, checks the ID token's signature against the
provider's published keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
from authlib.integrations.httpx_client import OAuth2Client, OAuthError
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, ConfigDict, TypeAdapter

from layers.shared.domain.provider_sign_in import (
    ExternalIdentity,
    IdentityProvider,
    PendingLogin,
    ProviderDenied,
    ProviderFailed,
)
from layers.shared.observability import logger
from layers.shared.settings import Settings

GITHUB_SCOPES = "read:user user:email"
GITHUB_API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
HTTP_TIMEOUT = httpx2.Timeout(10.0)  # well inside the HTTP API's 29 s, with room for three calls
ID_TOKEN_LEEWAY_SECONDS = 60  # clock skew between us and the provider
# Public-key signatures only: with HS256 the verification key would be our client secret, which
# the provider's key set does not hold, and "none" is no signature at all.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


# What we read of the providers' answers; anything else they send is ignored.

class GitHubUser(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int
    login: str
    name: str | None = None


class GitHubEmail(BaseModel):
    model_config = ConfigDict(extra="ignore")
    email: str
    primary: bool = False
    verified: bool = False


_GITHUB_EMAILS = TypeAdapter(list[GitHubEmail])


class ProviderMetadata(BaseModel):
    """The parts of an OpenID Provider's discovery document that a code flow needs."""

    model_config = ConfigDict(extra="ignore")
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    # The defaults are the ones OpenID Connect Discovery 1.0 gives when a field is absent.
    id_token_signing_alg_values_supported: list[str] = ["RS256"]
    token_endpoint_auth_methods_supported: list[str] = ["client_secret_basic"]


# Pure pieces -------------------------------------------------------------------------------------

def identity_from_github(user: GitHubUser, emails: list[GitHubEmail],
                         orgs: frozenset[str] = frozenset()) -> ExternalIdentity:
    """GitHub's numeric user id is the subject (logins can be renamed). Only the primary address
    counts, and only when GitHub has verified it. `orgs`: the organisations checked and found."""
    primary = next((entry for entry in emails if entry.primary), None)
    return ExternalIdentity(subject=str(user.id), email=primary.email if primary else None,
                            email_verified=primary is not None and primary.verified, name=user.name or user.login,
                            groups=orgs)


def identity_from_claims(claims: Mapping[str, Any], groups_claim: str = "groups") -> ExternalIdentity:
    email, name = claims.get("email"), claims.get("name")
    # Some providers send the boolean as a string.
    verified = claims.get("email_verified") in (True, "true")
    groups = claims.get(groups_claim)
    hosted_domain = claims.get("hd")
    return ExternalIdentity(subject=str(claims["sub"]), email=email if isinstance(email, str) else None,
                            email_verified=verified, name=name if isinstance(name, str) else None,
                            groups=frozenset(g for g in groups if isinstance(g, str)) if isinstance(groups, list)
                            else frozenset(),
                            hosted_domain=hosted_domain.lower() if isinstance(hosted_domain, str) else None)


def validate_id_token(id_token: str, *, keys: KeySet, algorithms: list[str], issuer: str, client_id: str,
                      nonce: str, access_token: str | None, now: int | None = None) -> CodeIDToken:
    """The ID token's claims, once its signature, issuer, audience, lifetime and nonce check out;
    joserfc errors otherwise (InvalidKeyIdError when no key of the set has the token's kid)."""
    token = jwt.decode(id_token, keys, algorithms=algorithms)
    claims = CodeIDToken(
        token.claims, token.header,
        options={"iss": {"essential": True, "value": issuer}, "aud": {"essential": True, "value": client_id}},
        params={"nonce": nonce, "client_id": client_id, "access_token": access_token},
    )
    claims.validate(now=now, leeway=ID_TOKEN_LEEWAY_SECONDS)
    return claims


def token_endpoint_auth_method(metadata: ProviderMetadata, client_secret: str | None) -> str:
    """How to authenticate at the token endpoint: a public client (PKCE alone) without a secret,
    else the first of the two secret-based methods the provider supports."""
    if not client_secret:
        return "none"
    supported = metadata.token_endpoint_auth_methods_supported
    return next((method for method in ("client_secret_basic", "client_secret_post") if method in supported),
                "client_secret_basic")


# Talking to providers ----------------------------------------------------------------------------

def _json(response: httpx2.Response) -> Any:
    response.raise_for_status()
    return response.json()


@contextmanager
def _answers_from(provider_id: str) -> Iterator[None]:
    """Turns what can go wrong between us and a provider into the API's two errors. Logs the kind
    of failure only: the exceptions' text may hold personal data from the provider's answer."""
    try:
        yield
    except OAuthError as error:  # the token endpoint refused the code: expired, used, or not ours
        logger.info("identity provider refused the code", extra={"provider": provider_id, "oauth_error": error.error})
        raise ProviderDenied.because(error.error) from error
    except JoseError as error:
        # joserfc's messages name the failed check and claim, never a claim's value.
        logger.warning("ID token rejected", extra={"provider": provider_id, "reason": str(error)})
        raise ProviderFailed("The identity provider's ID token did not pass validation.") from error
    except httpx2.TransportError as error:
        logger.warning("identity provider unreachable", extra={"provider": provider_id,
                                                               "error_type": type(error).__name__})
        raise ProviderFailed("The identity provider could not be reached; try again later.") from error
    except (httpx2.HTTPStatusError, ValueError) as error:  # ValueError: not JSON, or not the expected shape
        logger.warning("identity provider answer unusable", extra={"provider": provider_id,
                                                                   "error_type": type(error).__name__})
        raise ProviderFailed() from error


@dataclass
class GitHubProvider:
    """Sign-in with GitHub: an OAuth 2.0 app (GitHub has no OIDC for users), so who signed in comes
    from the REST API's /user and /user/emails."""

    client_id: str
    client_secret: str | None
    oauth_url: str
    api_url: str
    required_org: str | None = None  # sign-up is limited to its members: membership is asked for
    provider_id: str = field(default="github", init=False)
    display_name: str = field(default="GitHub", init=False)
    # Reads the secret when it is needed (from Secrets Manager in AWS, cached there), in place of `client_secret`.
    secret_source: Callable[[], str] | None = field(default=None, repr=False)

    def _client(self, pending: PendingLogin) -> OAuth2Client:
        # GitHub reads the client credentials from the form body.
        secret = self.secret_source() if self.secret_source else self.client_secret
        scope = f"{GITHUB_SCOPES} read:org" if self.required_org else GITHUB_SCOPES
        return OAuth2Client(client_id=self.client_id, client_secret=secret, scope=scope,
                            redirect_uri=pending.redirect_uri, code_challenge_method="S256",
                            token_endpoint_auth_method="client_secret_post", timeout=HTTP_TIMEOUT)

    def authorization_url(self, pending: PendingLogin) -> str:
        with self._client(pending) as client:
            url, _ = client.create_authorization_url(f"{self.oauth_url.rstrip('/')}/login/oauth/authorize",
                                                     state=pending.state, code_verifier=pending.code_verifier)
        return str(url)

    def fetch_identity(self, code: str, pending: PendingLogin) -> ExternalIdentity:
        api = self.api_url.rstrip("/")
        with _answers_from(self.provider_id), self._client(pending) as client:
            # authlib asks for JSON (Accept: application/json); GitHub answers form-encoded otherwise.
            client.fetch_token(f"{self.oauth_url.rstrip('/')}/login/oauth/access_token", code=code,
                               code_verifier=pending.code_verifier)
            user = GitHubUser.model_validate(_json(client.get(f"{api}/user", headers=GITHUB_API_HEADERS)))
            emails = _GITHUB_EMAILS.validate_python(_json(client.get(f"{api}/user/emails",
                                                                     headers=GITHUB_API_HEADERS)))
            orgs = frozenset({self.required_org}) if self.required_org and self._active_member(client, api) \
                else frozenset()
        return identity_from_github(user, emails, orgs)

    def _active_member(self, client: OAuth2Client, api: str) -> bool:
        """GET /user/memberships/orgs/{org}: 200 with state "active" for a member (needs read:org);
        404 for anyone else, and "pending" for an invitation not yet accepted."""
        response = client.get(f"{api}/user/memberships/orgs/{self.required_org}", headers=GITHUB_API_HEADERS)
        if response.status_code in (403, 404):
            return False
        return isinstance(body := _json(response), dict) and body.get("state") == "active"


class OidcProvider:
    """Any OpenID Connect provider, configured by its issuer URL (discovery does the rest)."""

    provider_id = "oidc"

    def __init__(self, *, issuer: str, client_id: str, client_secret: str | None, scopes: str,
                 display_name: str, secret_source: Callable[[], str] | None = None,
                 groups_claim: str = "groups") -> None:
        self.issuer = issuer.rstrip("/")
        self.groups_claim = groups_claim
        self.client_id, self.client_secret, self.display_name = client_id, client_secret, display_name
        self._secret_source = secret_source  # read when needed (Secrets Manager in AWS), in place of client_secret
        # Without "openid" there is no ID token, and so no verified identity.
        requested = scopes.split()
        self.scopes = " ".join(requested if "openid" in requested else ["openid", *requested])
        self._metadata: ProviderMetadata | None = None
        self._keys: KeySet | None = None

    def metadata(self) -> ProviderMetadata:
        """The discovery document, fetched once per process: a provider's endpoints do not move."""
        if self._metadata is None:
            with _answers_from(self.provider_id), httpx2.Client(timeout=HTTP_TIMEOUT) as http:
                metadata = ProviderMetadata.model_validate(
                    _json(http.get(f"{self.issuer}/.well-known/openid-configuration")))
            # OIDC Discovery 1.0 section 4.3: the document must be the issuer's own.
            if metadata.issuer.rstrip("/") != self.issuer:
                logger.warning("discovery names another issuer", extra={"provider": self.provider_id})
                raise ProviderFailed("The identity provider's discovery document names another issuer.")
            self._metadata = metadata
        return self._metadata

    def key_set(self, *, refresh: bool = False) -> KeySet:
        """The provider's signing keys, fetched again only when a token names a key we lack (rotation)."""
        if self._keys is None or refresh:
            with _answers_from(self.provider_id), httpx2.Client(timeout=HTTP_TIMEOUT) as http:
                self._keys = KeySet.import_key_set(_json(http.get(self.metadata().jwks_uri)))
        return self._keys

    def _client(self, pending: PendingLogin, metadata: ProviderMetadata) -> OAuth2Client:
        secret = self._secret_source() if self._secret_source else self.client_secret
        return OAuth2Client(client_id=self.client_id, client_secret=secret, scope=self.scopes,
                            redirect_uri=pending.redirect_uri, code_challenge_method="S256",
                            token_endpoint_auth_method=token_endpoint_auth_method(metadata, secret),
                            timeout=HTTP_TIMEOUT)

    def authorization_url(self, pending: PendingLogin) -> str:
        metadata = self.metadata()
        with self._client(pending, metadata) as client:
            url, _ = client.create_authorization_url(metadata.authorization_endpoint, state=pending.state,
                                                     code_verifier=pending.code_verifier, nonce=pending.nonce)
        return str(url)

    def fetch_identity(self, code: str, pending: PendingLogin) -> ExternalIdentity:
        metadata = self.metadata()
        with _answers_from(self.provider_id), self._client(pending, metadata) as client:
            token = client.fetch_token(metadata.token_endpoint, code=code, code_verifier=pending.code_verifier)
            if not isinstance(token.get("id_token"), str):
                raise ProviderFailed("The identity provider sent no ID token.")
            claims: Mapping[str, Any] = self._validated_claims(token["id_token"], token.get("access_token"),
                                                               pending, metadata)
            if "email" not in claims and metadata.userinfo_endpoint:
                # Providers may leave the email out of the ID token and answer it at userinfo.
                userinfo = _json(client.get(metadata.userinfo_endpoint))
                if not isinstance(userinfo, dict) or userinfo.get("sub") != claims["sub"]:
                    # OIDC Core 5.3.2: a userinfo answer about someone else must not be used.
                    raise ProviderFailed("The identity provider's userinfo is about another subject.")
                claims = {**userinfo, "sub": claims["sub"]}
        return identity_from_claims(claims, self.groups_claim)

    def _validated_claims(self, id_token: str, access_token: str | None, pending: PendingLogin,
                          metadata: ProviderMetadata) -> CodeIDToken:
        algorithms = [alg for alg in metadata.id_token_signing_alg_values_supported if alg in ASYMMETRIC_ALGORITHMS]
        if not algorithms:
            raise ProviderFailed("The identity provider signs ID tokens with no algorithm we accept.")

        def validated_with(keys: KeySet) -> CodeIDToken:
            return validate_id_token(id_token, keys=keys, algorithms=algorithms, issuer=metadata.issuer,
                                     client_id=self.client_id, nonce=pending.nonce, access_token=access_token)

        try:
            return validated_with(self.key_set())
        except InvalidKeyIdError:
            return validated_with(self.key_set(refresh=True))


def providers_from_settings(settings: Settings,
                            read_secret: Callable[[str], str] | None = None) -> dict[str, IdentityProvider]:
    """The providers switched on by the settings, by id: each needs its client id (OIDC its issuer too).

    A client secret named by id (`*_CLIENT_SECRET_ID`, as the CDK stack sets it) is read with `read_secret`
    each time it is needed, so it never sits in the function's environment; a value given directly (the
    embedded stack, tests) is used as is.
    """

    def source(secret_id: str | None) -> Callable[[], str] | None:
        if not secret_id:
            return None
        if read_secret is None:
            raise ValueError("a client secret named by id needs a secret reader")
        return lambda: read_secret(secret_id)

    providers: dict[str, IdentityProvider] = {}
    if settings.github_client_id:
        providers["github"] = GitHubProvider(client_id=settings.github_client_id,
                                             client_secret=settings.github_client_secret,
                                             oauth_url=settings.github_oauth_url, api_url=settings.github_api_url,
                                             secret_source=source(settings.github_client_secret_id),
                                             required_org=settings.signup_github_org or None)
    if settings.oidc_issuer_url and settings.oidc_client_id:
        providers["oidc"] = OidcProvider(issuer=settings.oidc_issuer_url, client_id=settings.oidc_client_id,
                                         client_secret=settings.oidc_client_secret, scopes=settings.oidc_scopes,
                                         display_name=settings.oidc_provider_name,
                                         secret_source=source(settings.oidc_client_secret_id),
                                         groups_claim=settings.oidc_groups_claim)
    return providers
