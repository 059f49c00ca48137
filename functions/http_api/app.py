"""The REST API as a FastAPI app; errors become api.md's error body here and nowhere else."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from functions.http_api.routers import (
    a2a,
    admin,
    agent_api,
    auth,
    cards,
    health,
    invitations,
    llm,
    mailboxes,
    oidc,
    sandboxes,
    session_viewers,
    sessions,
    tasks,
    tokens,
    workspaces,
)
from layers.shared.errors import AppError, NotFound, error_body, error_for_status
from layers.shared.observability import logger
from layers.shared.settings import VERSION

MAX_BODY_BYTES = 1024 * 1024  # the console API takes small JSON documents
# Our ids (workspace, sandbox, user, token, invitation...) are well under this. A longer path id names
# nothing, and passed on it would reach DynamoDB as an oversized key: a 500 instead of a 404.
MAX_PATH_ID_LENGTH = 64


def bounded_path_ids(request: Request) -> None:
    """Every route's path ids at once, so a route added later cannot forget the bound."""
    if any(len(value) > MAX_PATH_ID_LENGTH for value in request.path_params.values()):
        raise NotFound()


class BodySizeLimit:
    """413 for a declared body over the limit, before any route reads it. A plain ASGI middleware:
    Starlette's `BaseHTTPMiddleware` costs a task group per request."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                await JSONResponse(error_for_status(413), status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app() -> FastAPI:
    app = FastAPI(
        title="agentserver API",
        version=VERSION,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        dependencies=[Depends(bounded_path_ids)],
    )
    for module in (health, auth, oidc, tokens, workspaces, invitations, sandboxes, sessions, session_viewers, llm,
                   admin):
        app.include_router(module.router)
    app.include_router(cards.router)
    app.include_router(mailboxes.router)
    app.include_router(agent_api.router)
    app.include_router(tasks.router)
    app.include_router(a2a.router)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(AppError)
    async def app_error(_: Request, error: AppError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'] if part != 'body') or 'body'}: {issue['msg']}"
            for issue in error.errors()
        )
        return JSONResponse(error_body("validation_error", f"The request is not valid: {problems}."), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_for_status(error.status_code), error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error", extra={"error_type": type(error).__name__})
        return JSONResponse(error_for_status(500), status_code=500)


app = create_app()
