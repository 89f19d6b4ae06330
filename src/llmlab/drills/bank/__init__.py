"""The drill bank: each module here (not starting with `_`) defines one `DRILL`."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from llmlab.drills.grader import Drill
from llmlab.errors import LlmlabError

AREAS = ("basics", "attention", "positions", "sampling", "inference", "training", "tokenizer", "efficiency",
         "posttrain", "eval", "serve", "apps")


@cache
def all_drills() -> dict[str, Drill]:
    """name -> Drill, ordered by area then difficulty."""
    drills = []
    for m in pkgutil.iter_modules(__path__):
        if not m.name.startswith("_"):
            drills.append(importlib.import_module(f"{__name__}.{m.name}").DRILL)
    drills.sort(key=lambda d: (AREAS.index(d.area) if d.area in AREAS else len(AREAS), d.difficulty, d.name))
    return {d.name: d for d in drills}


def get_drill(name: str) -> Drill:
    drills = all_drills()
    if name not in drills:
        raise LlmlabError(f"no drill named {name!r}; `llmlab drill list` shows them: {', '.join(drills)}")
    return drills[name]
