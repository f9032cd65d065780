"""The annotator's web page and JSON API (FastAPI, server-rendered Jinja templates, no JavaScript).

Two ways in, each with its own authentication:

* the web page: a person signs in once with their token; the session is a signed cookie (HttpOnly,
  SameSite=Strict) holding their name and a per-session CSRF token, which every form carries in a hidden
  field and every POST checks;
* the JSON API under ``/api/`` (what ``fluxscore annotate next|submit|skip`` call): the token in an
  ``Authorization: Bearer`` header on every request. The API never reads the cookie, so a page
  elsewhere cannot make a signed-in browser call it.

Tokens are checked against the label store, which keeps only their hashes. Queue and leases live in
Redis and labels in the database, so restarting the service loses nothing: a person signed out by a
restart (when ``FLUXSCORE_ANNOTATE_SESSION_SECRET`` is unset) signs in again and gets their item back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

import jinja2
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from scoring.exceptions import FluxscoreError
from streams.annotate.consumer import QueueConsumer
from streams.annotate.exceptions import AnnotateError, InvalidLabelError
from streams.annotate.queue import MAX_ARTICLE_ID, AnnotationQueue, Leased
from streams.annotate.settings import AnnotateSettings
from streams.dedupe import REDIS_UNAVAILABLE
from streams.settings import StreamSettings
from training.labels import LabelStore

log = logging.getLogger("fluxscore.streams.annotate")
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "fluxscore_annotate"
MAX_BODY_BYTES = 256 * 1024  # a label is a few numbers and a note; anything larger is refused unread
MAX_TOKEN_CHARS = 256
# No script runs on these pages, and nothing is loaded from anywhere but this service.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
T = TypeVar("T")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: str = Field(min_length=1, max_length=128)


class NextBody(_Body):
    pass


class ItemBody(_Body):
    article_id: str = Field(min_length=1, max_length=MAX_ARTICLE_ID)


class SubmitBody(ItemBody):
    scores: dict[str, float | int | str] = Field(max_length=64)
    note: str | None = Field(None, max_length=20_000)


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["score"] = lambda v: "–" if v is None else f"{float(v):.1f}"
    return Jinja2Templates(env=env)


def _safe_link(url: str | None) -> str | None:
    # Only web links become clickable: a `javascript:` URL in an article would run on click.
    return url if url and url.lower().startswith(("http://", "https://")) else None


def _leased_json(queue: AnnotationQueue, leased: Leased) -> dict[str, Any]:
    item = leased.item
    oracle = queue.labels_for(item.filter, item.article_id, source="oracle")
    return {"item": item.model_dump(mode="json"), "lease_seconds_left": round(leased.expires_in, 1),
            "labels_needed": leased.labels_needed,
            "oracle": [{"annotator": lb.annotator, "scores": lb.scores} for lb in oracle]}


def create_app(settings: AnnotateSettings, queue: AnnotationQueue, store: LabelStore, *,
               consumer: QueueConsumer | None = None, close: Callable[[], None] | None = None) -> FastAPI:
    """The service over ``queue`` and ``store``; ``consumer`` (if given) runs while the app does."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()

        async def consume(running: QueueConsumer) -> None:
            # The page stays up whatever the consumer meets; what stopped it is in the log.
            try:
                await running.run(stop)
            except Exception:
                log.exception("queue consumer stopped")

        task = asyncio.create_task(consume(consumer), name="annotate-consumer") if consumer else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                try:
                    await asyncio.wait_for(task, timeout=15)
                except (TimeoutError, asyncio.CancelledError):
                    task.cancel()
            if close is not None:
                close()

    app = FastAPI(title="fluxscore annotator", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SessionMiddleware, secret_key=settings.signing_key(), session_cookie=SESSION_COOKIE,
                       max_age=int(settings.session_hours * 3600), same_site="strict",
                       https_only=settings.secure_cookie)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = _templates()
    filters = queue.filters

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"error": "request body too large"}, status_code=413)
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = request.session
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(24)
        context.setdefault("message", None)
        context.setdefault("problem", None)
        return templates.TemplateResponse(request, name, {
            "annotator": session.get("annotator"), "csrf": session["csrf"], "filters": filters, **context},
            status_code=status)

    @app.exception_handler(AnnotateError)
    async def annotate_error(request: Request, exc: AnnotateError) -> Response:
        if is_api(request):
            return JSONResponse({"error": exc.message, "type": type(exc).__name__}, status_code=exc.status)
        return page(request, "error.html", exc.status, error=exc.message)

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.warning("annotator backend unavailable", extra={"error_type": type(exc).__name__,
                                                            "error": str(exc)[:300]})
        message = "the queue or the label store is unavailable; try again in a moment"
        if is_api(request):
            return JSONResponse({"error": message}, status_code=503)
        return page(request, "error.html", 503, error=message)

    for kind in (*REDIS_UNAVAILABLE, FluxscoreError):
        app.add_exception_handler(kind, unavailable)

    async def call(fn: Callable[..., T], *args: Any) -> T:
        # Redis and the label store are synchronous clients: off the event loop.
        return await run_in_threadpool(fn, *args)

    # -- sign-in ---------------------------------------------------------------------------------------

    def annotator_of(token: str) -> str | None:
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        return store.annotator_for(token)

    async def checked_form(request: Request) -> FormData:
        form = await request.form(max_files=0, max_fields=128)
        sent = form.get("csrf")
        expected = request.session.get("csrf")
        if not isinstance(sent, str) or not expected or not hmac.compare_digest(sent, expected):
            raise HTTPException(403, "the form is stale or came from another site; reload the page")
        return form

    def signed_in(request: Request) -> str | None:
        name = request.session.get("annotator")
        return name if isinstance(name, str) else None

    def to_login() -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    def field(form: FormData, name: str) -> str:
        value = form.get(name)
        return value if isinstance(value, str) else ""

    # Starlette's, not only FastAPI's subclass: unknown paths and wrong methods get the same pages.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if is_api(request):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return page(request, "error.html", exc.status_code, error=str(exc.detail))

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        return RedirectResponse("/queue" if signed_in(request) else "/login", status_code=303)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login")
    async def login_page(request: Request) -> Response:
        return page(request, "login.html")

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await checked_form(request)
        name = await call(annotator_of, field(form, "token").strip())
        if name is None:
            return page(request, "login.html", 401, problem="That token is not known. Ask for one "
                                                            "(`fluxscore annotate token NAME`).")
        # A fresh session (and CSRF token) at sign-in, so nothing set before it carries over.
        request.session.clear()
        request.session.update({"annotator": name, "csrf": secrets.token_urlsafe(24)})
        return RedirectResponse("/queue", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await checked_form(request)
        request.session.clear()
        return to_login()

    # -- the queue -------------------------------------------------------------------------------------

    def overview(annotator: str) -> list[dict[str, Any]]:
        rows = []
        for f in filters:
            queued, leased = queue.counts(f)
            rows.append({"name": f, "queued": queued, "leased": leased, "held": queue.held_by(f, annotator)})
        return rows

    @app.get("/queue")
    async def queue_page(request: Request, filter: str | None = None, done: str | None = None) -> Response:
        annotator = signed_in(request)
        if annotator is None:
            return to_login()
        messages = {"submitted": "Label stored.", "skipped": "Skipped.", "empty": "Nothing left to label in "
                    "this queue for you right now."}
        rows = await call(overview, annotator)
        return page(request, "queue.html", rows=rows, selected=filter if filter in filters else filters[0],
                    message=messages.get(done or ""))

    @app.post("/next")
    async def next_item(request: Request) -> Response:
        annotator = signed_in(request)
        if annotator is None:
            return to_login()
        form = await checked_form(request)
        f = queue.check_filter(field(form, "filter"))
        leased = await call(queue.next, f, annotator)
        if leased is None:
            return RedirectResponse("/queue?" + urlencode({"filter": f, "done": "empty"}), status_code=303)
        return RedirectResponse("/item?" + urlencode({"filter": f, "id": leased.item.article_id}), status_code=303)

    def item_context(f: str, article_id: str, annotator: str) -> dict[str, Any]:
        item = queue.item(f, article_id)
        holder = queue.holder(f, article_id)
        leased = queue.held_by(f, annotator)
        oracle = queue.labels_for(f, article_id, source="oracle")
        return {"item": item, "mine": holder == annotator, "holder_known": holder is not None,
                "expires_in": int(leased.expires_in) if leased and leased.item.article_id == article_id else None,
                "labels_needed": leased.labels_needed if leased and leased.item.article_id == article_id else None,
                "oracle": oracle, "link": _safe_link(item.url), "note_max": queue.note_max,
                "overlap": queue.overlap}

    @app.get("/item")
    async def item_page(request: Request, filter: str = "", id: str = "") -> Response:
        annotator = signed_in(request)
        if annotator is None:
            return to_login()
        f = queue.check_filter(filter)
        context = await call(item_context, f, id, annotator)
        values = {d: round(v, 1) for d, v in context["item"].dimensions.items()}
        return page(request, "item.html", values=values, note="", **context)

    @app.post("/submit")
    async def submit(request: Request) -> Response:
        annotator = signed_in(request)
        if annotator is None:
            return to_login()
        form = await checked_form(request)
        f = queue.check_filter(field(form, "filter"))
        article_id = field(form, "article_id")
        scores = {key.removeprefix("score."): value for key, value in form.multi_items()
                  if key.startswith("score.")}
        note = field(form, "note")
        try:
            await call(queue.submit, f, annotator, article_id, scores, note)
        except InvalidLabelError as exc:
            # The page again with what the person typed, so a typo costs nothing.
            context = await call(item_context, f, article_id, annotator)
            return page(request, "item.html", 422, values=scores, note=note, problem=exc.message, **context)
        return RedirectResponse("/queue?" + urlencode({"filter": f, "done": "submitted"}), status_code=303)

    @app.post("/skip")
    async def skip(request: Request) -> Response:
        annotator = signed_in(request)
        if annotator is None:
            return to_login()
        form = await checked_form(request)
        f = queue.check_filter(field(form, "filter"))
        await call(queue.skip, f, annotator, field(form, "article_id"))
        return RedirectResponse("/queue?" + urlencode({"filter": f, "done": "skipped"}), status_code=303)

    @app.get("/stats")
    async def stats_page(request: Request) -> Response:
        if signed_in(request) is None:
            return to_login()
        stats = [await call(queue.stats, f) for f in filters]
        return page(request, "stats.html", stats=stats, overlap=queue.overlap)

    # -- the JSON API (bearer token) -------------------------------------------------------------------

    def bearer(authorization: Annotated[str | None, Header()] = None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        name = annotator_of(token.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            raise HTTPException(401, "missing or unknown token (Authorization: Bearer TOKEN)",
                                headers={"www-authenticate": "Bearer"})
        return name

    # A plain default, not an Annotated alias: with postponed annotations FastAPI resolves names in the
    # module's globals, where an alias local to this function is not found.
    signed = Depends(bearer)

    @app.get("/api/filters")
    def api_filters(annotator: str = signed) -> dict[str, Any]:
        return {"annotator": annotator, "filters": list(filters), "overlap": queue.overlap,
                "lease_seconds": queue.lease_ms / 1000, "note_max": queue.note_max}

    @app.post("/api/next")
    def api_next(body: NextBody, annotator: str = signed) -> dict[str, Any]:
        leased = queue.next(queue.check_filter(body.filter), annotator)
        if leased is None:
            return {"item": None}
        return _leased_json(queue, leased)

    @app.post("/api/submit")
    def api_submit(body: SubmitBody, annotator: str = signed) -> dict[str, Any]:
        done = queue.submit(queue.check_filter(body.filter), annotator, body.article_id, body.scores, body.note)
        return {"stored": True, "finished": done.finished, "label": done.label.model_dump(mode="json")}

    @app.post("/api/skip")
    def api_skip(body: ItemBody, annotator: str = signed) -> dict[str, Any]:
        queue.skip(queue.check_filter(body.filter), annotator, body.article_id)
        return {"skipped": True}

    @app.get("/api/stats")
    def api_stats(filter: str | None = None, annotator: str = signed) -> dict[str, Any]:
        wanted = [queue.check_filter(filter)] if filter else list(filters)
        return {"stats": [queue.stats(f).as_json() for f in wanted]}

    return app


def build_app(settings: AnnotateSettings, *, stream: StreamSettings | None = None) -> FastAPI:
    """The service from settings: the label store, the Redis queue and (with a broker) the consumer."""
    store = LabelStore(settings.labels_db)
    queue = AnnotationQueue.connect(settings.require_redis(), store, filters=settings.filters,
                                    prefix=settings.redis_prefix, overlap=settings.overlap,
                                    lease_seconds=settings.lease_seconds, note_max=settings.note_max)
    stream = stream or StreamSettings.from_env()
    consumer = QueueConsumer(queue, stream, group=settings.group) if stream.kafka_bootstrap else None
    if consumer is None:
        log.warning("no FLUXSCORE_KAFKA_BOOTSTRAP: serving the Redis queue as it is, without consuming "
                    "active-learning topics")

    def close() -> None:
        queue.close()
        store.close()

    return create_app(settings, queue, store, consumer=consumer, close=close)
