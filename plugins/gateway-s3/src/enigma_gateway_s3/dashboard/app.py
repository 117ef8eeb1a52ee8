"""The dashboard's Starlette application: routes, the login gate, error pages.

Every route but the login form and the stylesheet needs a session; every route but the
login POST is GET-only, and none writes to the repository. Page handlers are plain
functions run on worker threads (SQLite, the Raft read barrier and provider probes
block); each calls ``read_barrier`` first so that, in a cluster, it shows every write
acknowledged anywhere, as the S3 side does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from enigma.errors import EnigmaError, NotFoundError, UnavailableError
from enigma_gateway_s3.config import GatewayOptions
from enigma_gateway_s3.dashboard import auth, formats, views
from enigma_gateway_s3.dashboard.download import download_response, nothing, open_pieces
from enigma_gateway_s3.dashboard.health import Prober
from enigma_gateway_s3.store import ObjectStore

log = logging.getLogger("enigma_gateway_s3")

HERE = Path(__file__).parent
#: The login form's body is two short fields and a token.
LOGIN_BODY_LIMIT = 8192
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; script-src 'self'; "
                                 b"img-src 'self'; connect-src 'self'; form-action 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]

Handler = Callable[[Request, str], Response]


class Dashboard:
    """The pages over one repository, behind ``options.credentials``."""

    def __init__(self, store: ObjectStore, options: GatewayOptions, repository: Any) -> None:
        self.store = store
        self.manifest = store.manifest
        self.repository = repository
        self.sessions = auth.Sessions(options.credentials, options.dashboard_session,
                                      secure=bool(options.tls_cert))
        self.prober = Prober()
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                 autoescape=True, undefined=jinja2.StrictUndefined)
        env.filters.update(formats.FILTERS)
        env.globals.update(dedup_formula=views.DEDUP_FORMULA,
                           compression_formula=views.COMPRESSION_FORMULA)
        self.templates = Jinja2Templates(env=env)

    # -- plumbing ----------------------------------------------------------------------

    def page(self, request: Request, name: str, status_code: int = 200,
             **context: Any) -> Response:
        response = self.templates.TemplateResponse(request, name, context,
                                                   status_code=status_code)
        response.headers["Cache-Control"] = "no-store"
        return response

    def gated(self, handler: Handler) -> Callable[[Request], Any]:
        """The route for ``handler(request, user)``: only with a valid session, on a worker
        thread, with enigma's errors as one-line error pages."""

        async def endpoint(request: Request) -> Response:
            user = self.sessions.user(request.cookies.get(auth.SESSION_COOKIE))
            if user is None:
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": "login required"}, status_code=401)
                wanted = request.url.path + (f"?{request.url.query}" if request.url.query
                                             else "")
                return RedirectResponse(f"/login?next={quote(wanted, safe='')}", 303)
            return await run_in_threadpool(self.guarded, handler, request, user)

        return endpoint

    def guarded(self, handler: Handler, request: Request, user: str) -> Response:
        try:
            self.manifest.read_barrier()
            return handler(request, user)
        except NotFoundError as exc:
            return self.error(request, user, 404, str(exc))
        except UnavailableError as exc:  # a cluster without quorum
            return self.error(request, user, 503, str(exc))
        except EnigmaError as exc:
            log.error("dashboard %s failed: %s", request.url.path, exc)
            return self.error(request, user, 500, str(exc))

    def error(self, request: Request, user: str, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return self.page(request, "error.html", status, user=user, status=status,
                         message=message)

    # -- login -------------------------------------------------------------------------

    def login_form(self, request: Request, status: int = 200, failed: bool = False,
                   next_url: str | None = None) -> Response:
        token = auth.new_login_token()
        response = self.page(request, "login.html", status, user=None, token=token,
                             failed=failed,
                             next_url=_local(next_url or request.query_params.get("next")))
        response.set_cookie(auth.LOGIN_COOKIE, token,
                            **self.sessions.cookie_options(auth.LOGIN_FORM_SECONDS))
        return response

    async def show_login(self, request: Request) -> Response:
        return self.login_form(request)

    async def login(self, request: Request) -> Response:
        body = b""
        async for piece in request.stream():
            body += piece
            if len(body) > LOGIN_BODY_LIMIT:
                return Response("login form too large", 413)
        fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                               keep_blank_values=True).items()}
        next_url = _local(fields.get("next"))
        if not auth.same_token(request.cookies.get(auth.LOGIN_COOKIE), fields.get("token")):
            # No matching form token: a cross-site post, or a form from before a restart.
            return self.login_form(request, 400, failed=False, next_url=next_url)
        user = self.sessions.check(fields.get("access_key", ""), fields.get("secret_key", ""))
        if user is None:
            log.warning("dashboard: failed login from %s",
                        request.client.host if request.client else "?")
            return self.login_form(request, 401, failed=True, next_url=next_url)
        response = RedirectResponse(next_url, 303)
        response.set_cookie(auth.SESSION_COOKIE, self.sessions.issue(user),
                            **self.sessions.cookie_options(self.sessions.lifetime))
        response.delete_cookie(auth.LOGIN_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=self.sessions.secure)
        return response

    async def logout(self, request: Request) -> Response:
        self.sessions.revoke(request.cookies.get(auth.SESSION_COOKIE))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True,
                               samesite="strict", secure=self.sessions.secure)
        return response

    # -- pages -------------------------------------------------------------------------

    def backups_page(self, request: Request, user: str) -> Response:
        return self.page(request, "backups.html", user=user,
                         backups=views.backups(self.manifest))

    def running_json(self, request: Request, user: str) -> Response:
        return JSONResponse(views.running(self.manifest),
                            headers={"Cache-Control": "no-store"})

    def backup_page(self, request: Request, user: str) -> Response:
        record = self.manifest.get_backup(request.path_params["backup_id"])
        path = views.clean_path(request.path_params.get("path", ""))
        summary = views.BackupSummary.of(record, time.time())
        folder = views.folder(self.manifest, record.id, path)
        log_lines, log_count = views.log_tail(self.manifest, record.id)
        return self.page(request, "backup.html", user=user, backup=summary,
                         stats=views.stats_rows(record.stats), folder=folder,
                         entries=self.manifest.file_count(record.id),
                         sources=views.source_paths(record), log=log_lines,
                         log_count=log_count)

    def download(self, request: Request, user: str) -> Response:
        record = self.manifest.get_backup(request.path_params["backup_id"])
        path = views.clean_path(request.path_params["path"])
        entry = views.file_entry(self.manifest, record.id, path) if path else None
        if entry is None:
            raise NotFoundError(f"no file {path!r} in backup {record.id}")
        if request.method == "HEAD":  # the headers only: no chunk is fetched
            return download_response(entry, nothing())
        return download_response(entry, open_pieces(self.store, entry))

    def providers_page(self, request: Request, user: str) -> Response:
        types = {p.name: p.type for p in self.repository.config.providers}
        rows = self.prober.check(self.repository.providers, types,
                                 self.manifest.chunk_stats())
        chunks, plain, stored = self.manifest.chunk_totals()
        return self.page(request, "providers.html", user=user, providers=rows,
                         totals={"chunks": chunks, "plain": plain, "stored": stored})

    def cluster_page(self, request: Request, user: str) -> Response:
        return self.page(request, "cluster.html", user=user,
                         cluster=views.cluster(self.manifest))

    def routes(self) -> list[Any]:
        gated = self.gated
        return [
            Route("/login", self.show_login, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["GET"]),
            Route("/", gated(self.backups_page), methods=["GET"]),
            Route("/api/running", gated(self.running_json), methods=["GET"]),
            Route("/backups/{backup_id}", gated(self.backup_page), methods=["GET"]),
            Route("/backups/{backup_id}/tree/{path:path}", gated(self.backup_page),
                  methods=["GET"]),
            Route("/backups/{backup_id}/file/{path:path}", gated(self.download),
                  methods=["GET"]),
            Route("/providers", gated(self.providers_page), methods=["GET"]),
            Route("/cluster", gated(self.cluster_page), methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]


def _local(url: str | None) -> str:
    """A post-login destination on this site only (no open redirect): a path, else "/"."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url \
            or any(ord(c) < 0x20 for c in url):
        return "/"
    return url


def with_security_headers(app: Any) -> Any:
    """Every response: a strict CSP (own styles and script only), no framing, no sniffing,
    no referrer (paths can hold file names)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                   *SECURITY_HEADERS]}
            await send(message)

        await app(scope, receive, sending)

    return wrapped


def create_app(store: ObjectStore, options: GatewayOptions, repository: Any) -> Any:
    """The dashboard as an ASGI app (``server.py`` serves it on ``dashboard_addr``)."""
    dashboard = Dashboard(store, options, repository)
    return with_security_headers(Starlette(routes=dashboard.routes()))
