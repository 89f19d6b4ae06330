"""Run the API in a background thread on 127.0.0.1 and a free port: for notebooks, tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def app_in_background(app, start_timeout: float = 30.0) -> Iterator[str]:
    """Run an ASGI app under uvicorn in a thread for the `with` block; yields the base URL. It stops however the
    block ends."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; loopback only
    # log_config=None: leave the host process's logging alone (uvicorn's default dictConfig closes every existing
    # handler, e.g. one writing to a notebook's or a test's stderr); its warnings reach the root logger
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {start_timeout:.0f} s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def serve_in_background(engine, tokenizer, model_name: str, *, api_key: str | None = None,
                        start_timeout: float = 30.0) -> Iterator[str]:
    """Start the engine and the API for the `with` block; yields the base URL. Both stop however the block ends."""
    from llmlab.serve.api import create_app

    app = create_app(engine, tokenizer, model_name, api_key=api_key)
    engine.start()
    try:
        with app_in_background(app, start_timeout) as url:
            yield url
    finally:
        engine.stop()
