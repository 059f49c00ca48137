"""The pure pieces of provider sign-in: ID token validation, reading GitHub's answers, choices made
from the settings and the discovery document. Keys and tokens are made here with joserfc."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, InvalidClaimError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet, OctKey, RSAKey

from layers.shared.domain.provider_sign_in import PendingLogin
from layers.shared.integrations.oidc import (
    GitHubEmail,
    GitHubProvider,
    GitHubUser,
    OidcProvider,
    ProviderMetadata,
    identity_from_claims,
    identity_from_github,
    providers_from_settings,
    token_endpoint_auth_method,
    validate_id_token,
)
from layers.shared.settings import Settings

ISSUER, CLIENT_ID, NONCE = "https://idp.example", "agentserver", "n-0S6_WzA2Mj"
SIGNING_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
PUBLISHED = KeySet.import_key_set({"keys": [SIGNING_KEY.as_dict(private=False)]})


def id_token(key: Any = SIGNING_KEY, alg: str = "RS256", **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "248289761001", "aud": CLIENT_ID, "iat": now, "exp": now + 300,
              "nonce": NONCE, "email": "jane@example.org", "email_verified": True, **overrides}
    header = {"alg": alg, **({"kid": key.kid} if key.kid else {})}
    return jwt.encode(header, {k: v for k, v in claims.items() if v is not None}, key)


def validate(token: str, keys: KeySet = PUBLISHED) -> dict[str, Any]:
    return dict(validate_id_token(token, keys=keys, algorithms=["RS256"], issuer=ISSUER, client_id=CLIENT_ID,
                                  nonce=NONCE, access_token=None))


def test_a_good_id_token_gives_its_claims() -> None:
    claims = validate(id_token())
    assert claims["sub"] == "248289761001" and claims["email"] == "jane@example.org"


@pytest.mark.parametrize("overrides", [{"aud": "someone-else"}, {"aud": ["someone-else", "another"]},
                                       {"iss": "https://evil.example"}, {"nonce": "replayed"}, {"nonce": None},
                                       {"sub": None}, {"azp": "someone-else"}],
                         ids=["audience", "audience-list", "issuer", "nonce", "no-nonce", "no-subject", "azp"])
def test_an_id_token_for_another_client_issuer_or_sign_in_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(JoseError):
        validate(id_token(**overrides))


def test_an_expired_id_token_is_refused_beyond_the_leeway() -> None:
    long_ago = int(time.time()) - 3600
    with pytest.raises(ExpiredTokenError):
        validate(id_token(iat=long_ago - 300, exp=long_ago))
    # a minute of clock skew is tolerated
    validate(id_token(exp=int(time.time()) - 30))


def test_an_audience_list_that_includes_us_needs_azp_to_be_us() -> None:
    validate(id_token(aud=[CLIENT_ID, "api"], azp=CLIENT_ID))
    with pytest.raises(JoseError):
        validate(id_token(aud=[CLIENT_ID, "api"]))


def test_signatures_by_other_keys_and_symmetric_algorithms_are_refused() -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same kid, different key
    with pytest.raises(BadSignatureError):
        validate(id_token(key=impostor))
    with pytest.raises(InvalidKeyIdError):  # the caller refetches the key set on this one (rotation)
        validate(id_token(key=RSAKey.generate_key(2048, parameters={"kid": "k2"})))
    # HS256 "signed" with something public must not pass as a signature
    secret = OctKey.import_key("agentserver-client-secret-32-bytes!!")
    with pytest.raises(JoseError):
        validate(id_token(key=secret, alg="HS256"))


def test_claims_give_the_external_identity() -> None:
    identity = identity_from_claims({"sub": 42, "email": "a@b.example", "email_verified": "true", "name": "A"})
    assert (identity.subject, identity.email, identity.email_verified, identity.name) == ("42", "a@b.example",
                                                                                          True, "A")
    unverified = identity_from_claims({"sub": "s", "email": "a@b.example", "email_verified": "yes"})
    assert unverified.email_verified is False
    assert identity_from_claims({"sub": "s", "email": ["a@b.example"]}).email is None


def test_groups_and_hosted_domain_claims_feed_the_sign_up_limits() -> None:
    claims = {"sub": "s", "groups": ["eng", 7, "ops"], "hd": "Corp.Example", "roles": ["admins"]}
    found = identity_from_claims(claims)
    assert (found.groups, found.hosted_domain) == (frozenset({"eng", "ops"}), "corp.example")
    assert identity_from_claims(claims, "roles").groups == frozenset({"admins"})
    assert identity_from_claims({"sub": "s", "groups": "eng"}).groups == frozenset()  # not a list: ignored


def test_github_counts_only_the_primary_email_and_only_when_verified() -> None:
    user = GitHubUser(id=583231, login="octocat", name=None)
    emails = [GitHubEmail(email="work@example.org", primary=False, verified=True),
              GitHubEmail(email="home@example.org", primary=True, verified=False)]
    identity = identity_from_github(user, emails)
    assert (identity.subject, identity.email, identity.email_verified, identity.name) == (
        "583231", "home@example.org", False, "octocat")
    verified = identity_from_github(user, [GitHubEmail(email="home@example.org", primary=True, verified=True)])
    assert verified.email_verified is True
    assert identity_from_github(user, []).email is None


def metadata(**overrides: Any) -> ProviderMetadata:
    return ProviderMetadata.model_validate({"issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/authorize",
                                            "token_endpoint": f"{ISSUER}/token", "jwks_uri": f"{ISSUER}/jwks",
                                            **overrides})


def test_token_endpoint_authentication_follows_the_secret_and_the_discovery_document() -> None:
    assert token_endpoint_auth_method(metadata(), None) == "none"  # a public client: PKCE alone
    assert token_endpoint_auth_method(metadata(), "s") == "client_secret_basic"  # the spec's default
    only_post = metadata(token_endpoint_auth_methods_supported=["client_secret_post", "private_key_jwt"])
    assert token_endpoint_auth_method(only_post, "s") == "client_secret_post"


def test_settings_switch_providers_on() -> None:
    assert providers_from_settings(Settings()) == {}
    both = providers_from_settings(Settings(GITHUB_CLIENT_ID="gh", OIDC_ISSUER_URL=f"{ISSUER}/",
                                            OIDC_CLIENT_ID="c", OIDC_SCOPES="email profile"))
    assert isinstance(both["github"], GitHubProvider) and isinstance(both["oidc"], OidcProvider)
    oidc = both["oidc"]
    assert isinstance(oidc, OidcProvider)
    assert oidc.issuer == ISSUER and oidc.scopes == "openid email profile"  # openid is never left out
    # an issuer without a client id is not a provider
    assert providers_from_settings(Settings(OIDC_ISSUER_URL=ISSUER)) == {}


def test_client_secrets_named_by_id_are_read_when_needed_never_held() -> None:
    # Given settings that name the client secrets (as the CDK stack sets them) and a reader that counts its calls
    reads: list[str] = []

    def read_secret(secret_id: str) -> str:
        reads.append(secret_id)
        return f"value-of-{secret_id}"

    settings = Settings(GITHUB_CLIENT_ID="gh", GITHUB_CLIENT_SECRET_ID="team/github", OIDC_ISSUER_URL=ISSUER,
                        OIDC_CLIENT_ID="c", OIDC_CLIENT_SECRET_ID="team/oidc")
    providers = providers_from_settings(settings, read_secret=read_secret)
    # When the providers are built / Then nothing is read yet, and no provider holds a value
    assert reads == [] and "value-of" not in repr(providers)
    # When a sign-in needs the OAuth client / Then the secret is read then, by its id
    github, oidc = providers["github"], providers["oidc"]
    assert isinstance(github, GitHubProvider) and isinstance(oidc, OidcProvider)
    pending = PendingLogin(state="s", provider="github", nonce="n", code_verifier="v" * 43,
                           redirect_uri="https://console.example/cb", expires_at=datetime.now(UTC))
    with github._client(pending) as github_client, oidc._client(pending, metadata()) as oidc_client:
        assert github_client.client_secret == "value-of-team/github"
        assert oidc_client.client_secret == "value-of-team/oidc"
    assert reads == ["team/github", "team/oidc"]
    # And naming a secret without a way to read it is a configuration error, not a silent public client
    with pytest.raises(ValueError, match="secret reader"):
        providers_from_settings(settings)


def test_invalid_claim_errors_name_the_claim_not_its_value() -> None:
    # The stack logs these messages (docs/auth.md): they must not carry personal data.
    with pytest.raises(InvalidClaimError) as raised:
        validate(id_token(aud="jane@example.org"))
    assert "jane@example.org" not in str(raised.value)
