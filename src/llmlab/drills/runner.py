"""Run a learner's function on every case in one child process, with a time limit and a memory limit.

The child is this file run as a script: it imports only torch, loads the learner's file, calls the function on
each case (inputs cloned; gradients by one backward pass with a fixed upstream gradient) and saves each result as
`<i>.pt` the moment it has it, so a hang or a crash in case i still leaves the results of cases 0..i-1.
`run_case` is shared with the grader, which calls llmlab's reference through it in float64.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def clone_inputs(inputs: dict[str, Any], grad: tuple[str, ...] = ()) -> dict[str, Any]:
    """Fresh copies, so a function that writes into its inputs cannot change the next call's."""
    out = {}
    for name, x in inputs.items():
        if isinstance(x, torch.Tensor):
            x = x.detach().clone()
            if name in grad:
                x.requires_grad_(True)
        out[name] = x
    return out


def upstream_grad(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The dL/d(output) both sides backpropagate: fixed normal noise, float64 then rounded to dtype."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def run_case(fn: Callable, inputs: dict[str, Any], grad: tuple[str, ...] = ()) -> dict[str, Any]:
    """{"out": output, "grads": {name: grad}, "seconds": s} or {"error": traceback text}."""
    args = clone_inputs(inputs, grad)
    t0 = time.perf_counter()
    try:
        with torch.enable_grad() if grad else torch.no_grad():
            out = fn(**args)
            grads = {}
            if grad and isinstance(out, torch.Tensor) and out.requires_grad:
                out.backward(upstream_grad(out.shape, out.dtype))
                grads = {n: None if args[n].grad is None else args[n].grad.detach() for n in grad}
        out = out.detach() if isinstance(out, torch.Tensor) else _detach(out)
        return {"out": out, "grads": grads, "seconds": time.perf_counter() - t0}
    except MemoryError:
        return {"error": "MemoryError: the memory limit was hit"}
    except Exception:  # the learner's bug, reported with its traceback
        return {"error": traceback.format_exc(limit=-3)}


def _detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    return x


@dataclass
class RunResult:
    """Per-case results (None: never reached); `failure` says why the process stopped early, if it did."""

    results: list[dict[str, Any] | None]
    failure: str | None = None
    stopped_at: int | None = None  # the case running when the process was stopped
    seconds: float = 0.0
    log: str = field(default="", repr=False)


def load_function(path: Path, func: str) -> Callable:
    spec = importlib.util.spec_from_file_location(f"_drill_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise AttributeError(f"{path.name} defines no function {func}()")
    return fn


def run_isolated(path: Path, func: str, cases: list[dict[str, Any]], grad: tuple[str, ...], *,
                 timeout_s: float = 30.0, memory_mb: int = 3072) -> RunResult:
    """Run `func` from the file at `path` on every case in one child process; never raises for the learner's bugs."""
    with tempfile.TemporaryDirectory(prefix="llmlab-drill-") as tmp:
        tmp = Path(tmp)
        torch.save(cases, tmp / "cases.pt")

        def limits() -> None:  # in the child, before exec
            mem = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            cpu = int(timeout_s) + 5  # a backstop; the wall-clock timeout below is the real limit
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))

        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [sys.executable, __file__, str(tmp), str(Path(path).resolve()), func, ",".join(grad)]
        t0 = time.perf_counter()
        failure, log = None, ""
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, preexec_fn=limits, env=env)
            log = proc.stdout + proc.stderr
            if (tmp / "import_error.txt").exists():
                failure = "your file does not load:\n" + (tmp / "import_error.txt").read_text()
            elif proc.returncode != 0:
                why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
                failure = f"the process crashed ({why}); memory limit {memory_mb} MiB\n{log[-1500:]}"
        except subprocess.TimeoutExpired:
            failure = f"timed out after {timeout_s:.0f} s (an infinite loop?)"
        seconds = time.perf_counter() - t0
        results: list[dict[str, Any] | None] = []
        for i in range(len(cases)):
            f = tmp / f"{i}.pt"
            results.append(torch.load(f, weights_only=True) if f.exists() else None)
        stopped = next((i for i, r in enumerate(results) if r is None), None) if failure else None
        return RunResult(results, failure, stopped, seconds, log)


def _child(tmp: str, path: str, func: str, grad: str) -> int:
    tmp_dir = Path(tmp)
    cases = torch.load(tmp_dir / "cases.pt", weights_only=False)  # written by the parent just now
    try:
        fn = load_function(Path(path), func)
    except BaseException:
        (tmp_dir / "import_error.txt").write_text(traceback.format_exc(limit=-3))
        return 3
    names = tuple(n for n in grad.split(",") if n)
    for i, inputs in enumerate(cases):
        result = run_case(fn, inputs, names)
        try:
            torch.save(result, tmp_dir / f"{i}.pt")
        except Exception:
            torch.save({"error": f"the result cannot be saved: {type(result.get('out')).__name__}"},
                       tmp_dir / f"{i}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:5]))
