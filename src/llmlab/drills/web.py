"""`llmlab drill web`: the drills as a local page. Pick a drill, edit its file in the browser, Check grades it exactly
as `llmlab drill check` does: the file is saved in the workspace, run in the sandboxed child process, and the attempt
recorded in the same progress.sqlite, so the page and the command line share one workspace.

Checking runs the code it is sent, so the page is for this machine only: the server binds 127.0.0.1, answers only
requests addressed to an allowed host name (a DNS-rebinding page cannot reach it), and every POST must carry the
X-Llmlab-Drill header, which a cross-site form or fetch cannot set without a CORS preflight that this server never
grants.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from llmlab.drills import workspace as ws
from llmlab.drills.bank import all_drills
from llmlab.drills.grader import Drill
from llmlab.errors import LlmlabError

WEB_DIR = Path(__file__).parent / "web"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
CSRF_HEADER = "x-llmlab-drill"
MAX_SOURCE_BYTES = 1_000_000


class Source(BaseModel):
    source: str


def _summary(d: Drill, workspace: Path) -> dict:
    prog = ws.progress(workspace)
    try:
        st = prog.status(d.name)
    finally:
        prog.close()
    return dict(name=d.name, area=d.area, difficulty=d.difficulty, minutes=d.minutes, statement=d.statement,
                tags=list(d.tags), status=st.status, best_seconds=st.best_seconds, attempts=st.attempts)


def _drill(name: str) -> Drill:
    d = all_drills().get(name)
    if d is None:
        raise HTTPException(404, f"no drill named {name!r}")
    return d


def create_app(workspace: Path, allowed_hosts: Sequence[str] = LOCAL_HOSTS) -> FastAPI:
    """The page's app over `workspace` (NAME.py files and progress.sqlite, as `llmlab drill --dir`)."""
    workspace = Path(workspace)
    app = FastAPI(title="llmlab drills", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    grading = threading.Lock()  # one check at a time: each one runs a child process with a time limit

    @app.middleware("http")
    async def require_header(request: Request, call_next):
        if request.method == "POST" and request.headers.get(CSRF_HEADER) != "1":
            return JSONResponse({"detail": f"POST needs the header {CSRF_HEADER}: 1 (the page sends it)"}, 403)
        return await call_next(request)

    @app.get("/api/drills")
    def list_drills() -> list[dict]:
        return [_summary(d, workspace) for d in all_drills().values()]

    @app.get("/api/drills/{name}")
    def open_drill(name: str) -> dict:
        """The drill and the workspace's file; opening a drill with no file starts it (starter written, timer on)."""
        d = _drill(name)
        path = ws.drill_file(workspace, name)
        prog = ws.progress(workspace)
        try:
            if not path.exists():
                ws.write_starter(workspace, name)
                prog.start(name)
            level = prog.hint_level(name)
        finally:
            prog.close()
        return dict(_summary(d, workspace), func=d.func, source=path.read_text(), file=str(path),
                    hints=list(d.hints[:level]), n_hints=len(d.hints))

    @app.post("/api/drills/{name}/check")
    def check(name: str, body: Source) -> dict:
        d = _drill(name)
        if len(body.source.encode()) > MAX_SOURCE_BYTES:
            raise HTTPException(413, f"the file is over {MAX_SOURCE_BYTES} bytes")
        path = ws.drill_file(workspace, name)
        with grading:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body.source)
            result = ws.check(workspace, name)
        r = result.report
        return dict(passed=r.passed, n_passed=r.n_passed, n_cases=r.n_cases, lines=result.lines,
                    seconds=result.seconds, estimate_minutes=d.minutes, summary=_summary(d, workspace))

    @app.post("/api/drills/{name}/hint")
    def hint(name: str) -> dict:
        d = _drill(name)
        prog = ws.progress(workspace)
        try:
            level = prog.reveal_hint(name, len(d.hints))
        finally:
            prog.close()
        return dict(hints=list(d.hints[:level]), n_hints=len(d.hints))

    @app.post("/api/drills/{name}/reset")
    def reset(name: str) -> dict:
        """Start over: the starter replaces the file (the old one is kept as NAME.py.bak) and the timer restarts."""
        _drill(name)
        path = ws.write_starter(workspace, name, force=True)
        prog = ws.progress(workspace)
        try:
            prog.start(name)
        finally:
            prog.close()
        return dict(source=path.read_text())

    @app.get("/api/drills/{name}/solution")
    def solution(name: str) -> dict:
        return dict(source=_drill(name).solution_source())

    @app.exception_handler(LlmlabError)
    async def llmlab_error(request: Request, e: LlmlabError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, 400)

    app.get("/", include_in_schema=False)(lambda: FileResponse(WEB_DIR / "index.html"))
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    return app
