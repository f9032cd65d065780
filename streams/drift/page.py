"""``fluxscore drift serve``: a small page listing each filter's last window and its reports.

Starlette and Jinja templates (below, in this module: no build step, no CDN, nothing fetched by the
browser but this server's pages and the reports). It reads the report directory the monitor writes
(:mod:`streams.drift.store`) and serves nothing else.

Access needs the token (``FLUXSCORE_MONITOR_PAGE_TOKEN``), typed into a sign-in form; it is compared in
constant time, and the browser then keeps, in an HttpOnly, SameSite=Strict cookie, an HMAC of the token —
not the token itself. The server binds to 127.0.0.1 unless told otherwise. Evidently's reports carry
their own scripts; they are served with a ``sandbox`` content security policy, so they run in an origin
of their own and cannot act on this page with the visitor's cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from jinja2 import DictLoader, Environment, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from streams.drift.store import latest_summary, list_filters, list_reports, report_file

COOKIE = "fluxscore_drift"
_SESSION_CONTEXT = b"fluxscore drift page session v1"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
# A report runs its own (inline) scripts, in a sandbox: an opaque origin, no access to this site.
REPORT_HEADERS = {"Content-Security-Policy": "sandbox allow-scripts allow-popups", "Referrer-Policy": "no-referrer",
                  "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

TEMPLATES = {
    "base.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}fluxscore drift{% endblock %}</title>
<style>
 body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
 h1 { font-size: 1.4rem; } h1 a { color: inherit; text-decoration: none; }
 table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .4rem .6rem; }
 tr { border-bottom: 1px solid #ddd; } th { background: #f4f4f4; }
 .status { font-weight: 600; padding: .1rem .5rem; border-radius: .3rem; }
 .ok { background: #e3f5e1; color: #1d6b1a; } .alert { background: #fff0c2; color: #7a5600; }
 .critical { background: #fde0e0; color: #9b1c1c; } .none { background: #eee; color: #555; }
 .muted { color: #666; font-size: .9em; } .error { color: #9b1c1c; }
 form.inline { display: inline; } header { display: flex; justify-content: space-between; align-items: center; }
</style></head><body>
<header><h1><a href="/">fluxscore drift</a></h1>
{% if signed_in %}<form class="inline" method="post" action="/logout"><button>Sign out</button></form>{% endif %}
</header>
{% block body %}{% endblock %}
</body></html>""",
    "login.html": """{% extends "base.html" %}{% block title %}Sign in — fluxscore drift{% endblock %}
{% block body %}
<form method="post" action="/login">
 <p><label for="token">Token</label><br><input id="token" name="token" type="password" autocomplete="current-password"
   autofocus required size="40"></p>
 <input type="hidden" name="next" value="{{ next }}">
 {% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
 <p><button type="submit">Sign in</button></p>
</form>
{% endblock %}""",
    "index.html": """{% extends "base.html" %}
{% block body %}
<p class="muted">Reports in {{ directory }}. Each row is a filter's last window.</p>
{% if not rows %}<p id="empty">No reports yet.</p>{% else %}
<table id="filters"><thead><tr><th>filter</th><th>version</th><th>status</th><th>window</th><th>reference</th>
<th>drifted columns</th><th>embedding drift</th><th>alerts</th><th>evaluated</th><th>report</th></tr></thead><tbody>
{% for r in rows %}<tr data-filter="{{ r.name }}">
 <td><a href="/filters/{{ r.name }}">{{ r.name }}</a></td><td>{{ r.version }}</td>
 <td><span class="status {{ r.status }}">{{ r.status }}</span></td><td>{{ r.window }}</td><td>{{ r.reference }}</td>
 <td>{{ r.drifted }}</td><td>{{ r.embedding }}</td><td>{{ r.alerts }}</td><td class="muted">{{ r.evaluated }}</td>
 <td>{% if r.html %}<a class="report" href="{{ r.html }}">open</a>{% else %}—{% endif %}</td></tr>
{% endfor %}</tbody></table>{% endif %}
{% endblock %}""",
    "filter.html": """{% extends "base.html" %}{% block title %}{{ name }} — fluxscore drift{% endblock %}
{% block body %}
<h2>{{ name }}</h2>
{% if not entries %}<p>No reports for this filter.</p>{% else %}
<table id="reports"><thead><tr><th>written (UTC)</th><th>version</th><th>window</th><th>status</th><th>alerts</th>
<th>files</th></tr></thead><tbody>
{% for e in entries %}<tr>
 <td>{{ e.stamp }}</td><td>{{ e.version }}</td><td>#{{ e.seq }}</td>
 <td><span class="status {{ e.status }}">{{ e.status }}</span></td><td>{{ e.alerts }}</td>
 <td>{% if e.html %}<a class="report" href="{{ e.html }}">report</a> · {% endif %}
  {% if e.snapshot %}<a href="{{ e.snapshot }}">snapshot</a> · {% endif %}<a href="{{ e.summary }}">summary</a></td>
</tr>{% endfor %}</tbody></table>{% endif %}
{% endblock %}""",
}
_env = Environment(loader=DictLoader(TEMPLATES), autoescape=select_autoescape(default=True, default_for_string=True))


def session_value(token: str) -> str:
    """What the cookie holds: an HMAC of the token (a stolen cookie does not give the token away)."""
    return hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    # Digests first: compare_digest is constant-time only for inputs of equal length.
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(token.encode()).digest())


def _render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(template).render(**context), status_code=status_code, headers=PAGE_HEADERS)


def _safe_next(value: str) -> str:
    # Only paths of this site: "//host" or "http://…" would send the visitor elsewhere after signing in.
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"


def _row(directory: Path, name: str) -> dict[str, Any]:
    summary = latest_summary(directory, name) or {}
    files = summary.get("files") or {}
    embedding = summary.get("embeddings") or {}
    alerts = summary.get("alerts") or []
    return {"name": name, "version": summary.get("version", "—"), "status": summary.get("status", "none"),
            "window": f"#{summary['window']['seq']} ({summary['window']['rows']} rows)" if "window" in summary else "—",
            "reference": (summary.get("reference") or {}).get("label", "—"),
            "drifted": f"{summary['drifted_share']:.0%}" if "drifted_share" in summary else "—",
            "embedding": f"{embedding['score']:.2f}" if embedding.get("available") else "—",
            "alerts": ", ".join(a.get("rule", "?") for a in alerts) or "none",
            "evaluated": str(summary.get("evaluated_at", "—"))[:19].replace("T", " "),
            "html": f"/reports/{name}/{quote(files['html'])}" if files.get("html") else None}


def create_app(directory: Path, token: str) -> Starlette:
    """The page over ``directory`` (a monitor's or ``fluxscore drift report``'s output), behind ``token``."""
    if not token:
        raise ValueError("the drift page needs a non-empty token")
    expected = session_value(token)

    def signed_in(request: Request) -> bool:
        return hmac.compare_digest(request.cookies.get(COOKIE, ""), expected)

    def sign_in_first(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    async def index(request: Request) -> Response:
        if not signed_in(request):
            return sign_in_first(request)
        rows = [_row(directory, name) for name in list_filters(directory)]
        return _render("index.html", rows=rows, directory=str(directory), signed_in=True)

    async def login_form(request: Request) -> Response:
        return _render("login.html", next=_safe_next(request.query_params.get("next", "/")), error=None,
                       signed_in=False)

    async def login(request: Request) -> Response:
        form = await request.form()
        given, target = str(form.get("token", "")), _safe_next(str(form.get("next", "/")))
        if not token_matches(given, token):
            return _render("login.html", status_code=401, next=target, error="That token is not right.",
                           signed_in=False)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, expected, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def filter_page(request: Request) -> Response:
        if not signed_in(request):
            return sign_in_first(request)
        name = request.path_params["name"]
        if name not in list_filters(directory):
            return _render("filter.html", status_code=404, name=name, entries=[], signed_in=True)
        entries = []
        for entry in list_reports(directory, name):
            summary_path = report_file(directory, name, f"{entry.stem}.json")
            try:
                summary = orjson.loads(summary_path.read_bytes()) if summary_path else {}
            except (OSError, orjson.JSONDecodeError):
                summary = {}
            base = f"/reports/{name}/{quote(entry.stem)}"
            entries.append({"stamp": entry.stamp.strftime("%Y-%m-%d %H:%M:%S"), "version": entry.version,
                            "seq": entry.seq, "status": summary.get("status", "none"),
                            "alerts": ", ".join(a.get("rule", "?") for a in summary.get("alerts") or []) or "none",
                            "html": f"{base}.html" if entry.has_html else None,
                            "snapshot": f"{base}.snapshot.json" if entry.has_snapshot else None,
                            "summary": f"{base}.json"})
        return _render("filter.html", name=name, entries=entries, signed_in=True)

    async def report(request: Request) -> Response:
        if not signed_in(request):
            return sign_in_first(request)
        path = report_file(directory, request.path_params["name"], request.path_params["filename"])
        if path is None:
            return Response("no such report", status_code=404, media_type="text/plain", headers=PAGE_HEADERS)
        media = "text/html; charset=utf-8" if path.suffix == ".html" else "application/json"
        return FileResponse(path, media_type=media, headers=REPORT_HEADERS)

    return Starlette(routes=[
        Route("/", index), Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/filters/{name}", filter_page),
        Route("/reports/{name}/{filename}", report)])
