"""``fluxscore annotate serve|token|next|submit|skip``: the annotator service and its terminal client.

``serve`` runs the web page and JSON API; ``token`` creates a person's sign-in token; ``next``, ``submit``
and ``skip`` talk to a running service's JSON API (``FLUXSCORE_ANNOTATE_URL``) with the person's token
(``FLUXSCORE_ANNOTATE_TOKEN``), for people who prefer a terminal.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from scoring.exceptions import FluxscoreError
from streams.annotate.exceptions import ServiceUnavailableError
from streams.annotate.settings import AnnotateSettings

console = Console(stderr=True)
annotate_app = typer.Typer(name="annotate", help="Label the active-learning queue: the web page and its "
                                                 "terminal client.", no_args_is_help=True, add_completion=False)
ANNOTATOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# The demo's own data, beside the checkout: demo labels never land in a person's real label store.
DEMO_DIR = Path(".cache/fluxscore/annotate-demo")


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/] {exc}")
    return typer.Exit(code)


def _settings(**overrides: Any) -> AnnotateSettings:
    try:
        return AnnotateSettings.from_env(**overrides)
    except FluxscoreError as exc:
        raise _fail(exc, 2) from None


# -- the service ---------------------------------------------------------------------------------------

def _demo_setup(settings: AnnotateSettings) -> tuple[AnnotateSettings, Any]:
    """Embedded Redis and a demo label store unless configured; a demo token; the sample queue (no broker)."""
    from streams.annotate.queue import AnnotationQueue
    from streams.embedded import EmbeddedRedis
    from streams.settings import StreamSettings
    from training.labels import LabelStore

    redis = None
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    changes: dict[str, Any] = {}
    if not settings.redis_url:
        # Its append-only file lives beside the demo's labels, so a restarted demo keeps its queue.
        redis = EmbeddedRedis(directory=(DEMO_DIR / "redis").resolve())
        (DEMO_DIR / "redis").mkdir(exist_ok=True)
        redis.start()
        changes["redis_url"] = redis.url
    if "labels_db" not in settings.model_fields_set:  # not given: the demo keeps its labels beside its queue
        changes["labels_db"] = str((DEMO_DIR / "labels.db").resolve())
    settings = settings.replace(**changes) if changes else settings
    store = LabelStore(settings.labels_db)
    token = store.add_annotator("demo")
    if not StreamSettings.from_env().kafka_bootstrap:
        from streams.annotate.demo import demo_items

        console.print("no broker configured: scoring the bundled sample articles for a demo queue …")
        queue = AnnotationQueue.connect(settings.require_redis(), store, filters=settings.filters,
                                        prefix=settings.redis_prefix, overlap=settings.overlap)
        outcomes = [queue.add(item) for item in demo_items(settings.filters)]
        console.print(f"demo queue: {outcomes.count('added')} items added, {outcomes.count('present')} there "
                      f"already, {outcomes.count('labelled')} labelled")
        queue.close()
    store.close()
    console.print(f"sign in as [b]demo[/] with the token [b]{token}[/] (a new one each start)")
    return settings, redis


@annotate_app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default FLUXSCORE_ANNOTATE_HOST, 127.0.0.1)")]
    = None,
    port: Annotated[int | None, typer.Option(help="port (default FLUXSCORE_ANNOTATE_PORT)")] = None,
    demo: Annotated[bool, typer.Option(help="start a Redis and a demo queue from the sample articles when none "
                                            "is configured, and print a token for the annotator 'demo'")] = False,
) -> None:
    """Serve the annotator web page and JSON API; consume active-learning.<filter> into Redis when a broker is set."""
    import uvicorn

    from streams.annotate.app import build_app
    from streams.metrics import free_port

    settings = _settings(host=host, port=port)
    redis = None
    try:
        if demo:
            settings, redis = _demo_setup(settings)
        if settings.port == 0:
            settings = settings.replace(port=free_port(settings.host))
        app = build_app(settings)
        console.print(f"annotator page on [b]http://{settings.host}:{settings.port}/[/] "
                      f"(filters {', '.join(settings.filters)}; overlap {settings.overlap})")
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                    proxy_headers=False, server_header=False)
    except FluxscoreError as exc:
        raise _fail(exc) from None
    finally:
        if redis is not None:
            redis.stop()


@annotate_app.command("token")
def token(name: Annotated[str, typer.Argument(help="the annotator's name (letters, digits, . _ @ -)")]) -> None:
    """Create (or replace) NAME's sign-in token and print it once; only its hash is stored."""
    from training.labels import LabelStore

    if not ANNOTATOR_NAME.match(name):
        raise _fail(ValueError(f"{name!r}: use 1-64 letters, digits and . _ @ - (starting with a letter or "
                               "digit)"), 2)
    settings = _settings()
    try:
        store = LabelStore(settings.labels_db)
        value = store.add_annotator(name)
        store.close()
    except FluxscoreError as exc:
        raise _fail(exc) from None
    console.print(f"token for [b]{name}[/] (shown once; a new one replaces it) in {settings.labels_db}:")
    sys.stdout.write(value + "\n")


# -- the terminal client -------------------------------------------------------------------------------

class Client:
    """The service's JSON API with one annotator's token."""

    def __init__(self, settings: AnnotateSettings, *, transport: httpx.BaseTransport | None = None) -> None:
        if settings.token is None:
            raise ServiceUnavailableError("set FLUXSCORE_ANNOTATE_TOKEN to your token (from `fluxscore annotate "
                                          "token NAME`)")
        self.url = settings.service_url
        self.http = httpx.Client(base_url=self.url, timeout=15.0, transport=transport,
                                 headers={"authorization": f"Bearer {settings.token.get_secret_value()}"})

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(f"cannot reach the annotator service at {self.url} ({exc}); is "
                                          "`fluxscore annotate serve` running? (FLUXSCORE_ANNOTATE_URL)") from None
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            data = {"error": response.text[:300]}
        if response.status_code >= 400:
            detail = data.get("error") or data.get("detail") or response.reason_phrase
            raise ServiceUnavailableError(f"{response.status_code}: {detail}")
        return data

    def default_filter(self) -> str:
        return str(self.call("GET", "/api/filters")["filters"][0])


def _client() -> Client:
    try:
        return Client(_settings())
    except FluxscoreError as exc:
        raise _fail(exc, 2) from None


def print_item(out: Console, data: dict[str, Any]) -> None:
    item = data["item"]
    oracle = data.get("oracle") or []
    title = item.get("title") or "(no title)"
    out.print(Panel(item["text"], title=f"[b]{title}[/]", subtitle=f"{item['filter']} · {item['article_id']}",
                    expand=True))
    table = Table(title=f"model: {item['tier']} ({item['weighted_average']:.2f}, {item['stage']}) · lease "
                        f"{data['lease_seconds_left']:.0f} s · {data['labels_needed']} label(s) needed")
    table.add_column("dimension")
    table.add_column("model", justify="right")
    for lb in oracle:
        table.add_column(f"oracle ({lb['annotator']})", justify="right")
    for dim, value in item["dimensions"].items():
        table.add_row(dim, f"{value:.1f}", *(f"{lb['scores'][dim]:.1f}" if dim in lb["scores"] else "–"
                                             for lb in oracle))
    out.print(table)
    dims = " ".join(f"--score {d}=N" for d in item["dimensions"])
    out.print(f"[dim]fluxscore annotate submit --filter {item['filter']} --id {item['article_id']} {dims} "
              f"[--note TEXT]   |   fluxscore annotate skip --filter {item['filter']} --id {item['article_id']}[/]")


@annotate_app.command("next")
def next_item(
    filter: Annotated[str | None, typer.Option("--filter", "-f", help="filter queue (default: the service's first)")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON instead")] = False,
) -> None:
    """Pull the next item (or the one you hold) and print the article with the model's and the oracle's scores."""
    client = _client()
    try:
        name = filter or client.default_filter()
        data = client.call("POST", "/api/next", {"filter": name})
    except FluxscoreError as exc:
        raise _fail(exc) from None
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(data).decode() + "\n")
        return
    if data.get("item") is None:
        console.print(f"nothing left to label in {name} for you right now")
        raise typer.Exit(0)
    print_item(Console(highlight=False), data)


def parse_scores(pairs: list[str]) -> dict[str, float]:
    """``dim=7`` pairs -> scores (the service checks names and ranges)."""
    scores: dict[str, float] = {}
    for pair in pairs:
        dim, sep, value = pair.partition("=")
        if not sep or not dim.strip():
            raise typer.BadParameter(f"{pair!r}: expected DIMENSION=SCORE", param_hint="--score")
        try:
            scores[dim.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"{pair!r}: {value!r} is not a number", param_hint="--score") from None
    return scores


@annotate_app.command("submit")
def submit(
    filter: Annotated[str, typer.Option("--filter", "-f", help="the item's filter")],
    article_id: Annotated[str, typer.Option("--id", help="the item's article id")],
    score: Annotated[list[str], typer.Option("--score", "-s", help="DIMENSION=SCORE (0-10), once per dimension")],
    note: Annotated[str | None, typer.Option(help="a note kept with the label")] = None,
) -> None:
    """Submit your label for an item you pulled: every dimension's score, and an optional note."""
    scores = parse_scores(score)
    client = _client()
    try:
        data = client.call("POST", "/api/submit", {"filter": filter, "article_id": article_id, "scores": scores,
                                                   "note": note})
    except FluxscoreError as exc:
        raise _fail(exc) from None
    left = "it has all its labels" if data.get("finished") else "it goes on to the next annotator"
    console.print(f"label stored for {article_id} ({left})")


@annotate_app.command("skip")
def skip(
    filter: Annotated[str, typer.Option("--filter", "-f", help="the item's filter")],
    article_id: Annotated[str, typer.Option("--id", help="the item's article id")],
) -> None:
    """Pass on an item: it goes back to the others and is not offered to you again."""
    client = _client()
    try:
        client.call("POST", "/api/skip", {"filter": filter, "article_id": article_id})
    except FluxscoreError as exc:
        raise _fail(exc) from None
    console.print(f"skipped {article_id}")
