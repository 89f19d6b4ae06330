"""`prepare`: documents -> quality rules -> exact dedup -> near dedup -> tokens -> train/val shards, with a report.

    report = prepare(["my_corpus/"], "data/shards", tokenizer)   # inputs=None: the fetched default corpus
    ds = ShardDataset("data/shards", "train", block_size=256, batch_size=8)
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmlab.data.clean import RULES, clean
from llmlab.data.corpus import fetched_files
from llmlab.data.dedup import exact_dedup, near_dedup
from llmlab.data.load import load_documents
from llmlab.data.shards import SHARD_TOKENS, write_shards
from llmlab.errors import LlmlabError


@dataclass
class PrepareReport:
    out_dir: str
    docs_in: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # documents removed, by the first rule they fail
    javascript_lines: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    docs_out: int = 0
    splits: dict = field(default_factory=dict)  # {split: {docs, tokens, sources: {name: {docs, tokens}}}}
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "splits"}

    def tables(self) -> list[Table]:
        stages = Table(title=f"llmlab data prepare -> {self.out_dir}  ({self.seconds:.1f} s)")
        stages.add_column("stage")
        stages.add_column("documents", justify="right")
        stages.add_row("read", f"{self.docs_in:,}")
        for rule, n in self.removed.items():
            stages.add_row(f"  - rule {rule}", f"{n:,}")
        stages.add_row("  - exact duplicates", f"{self.exact_duplicates:,}")
        stages.add_row("  - near duplicates (MinHash-LSH)", f"{self.near_duplicates:,}")
        stages.add_row("kept", f"{self.docs_out:,}", style="bold")
        shards = Table(title=f"shards (C4 JavaScript lines dropped: {self.javascript_lines:,})")
        for name in ("split", "source", "documents", "tokens"):
            shards.add_column(name, justify="left" if name in ("split", "source") else "right")
        for split, c in self.splits.items():
            for source, s in c["sources"].items():
                shards.add_row(split, source, f"{s['docs']:,}", f"{s['tokens']:,}")
            shards.add_row(split, "all", f"{c['docs']:,}", f"{c['tokens']:,}", style="bold")
        return [stages, shards]


def prepare(inputs: list[str | Path] | None, out_dir: Path | str, tokenizer=None, val_fraction: float = 0.05,
            seed: int = 0, text_field: str = "text", skip_rules: tuple[str, ...] = (), near_threshold: float = 0.8,
            num_perm: int = 128, workers: int | None = None, shard_tokens: int = SHARD_TOKENS,
            cache_dir: Path | str | None = None, progress: bool = True) -> PrepareReport:
    """Run every stage and write out_dir (shards + manifest.json with this report); returns the report.

    inputs=None reads the corpus fetched into cache_dir; tokenizer=None uses the byte tokenizer.
    """
    start = time.perf_counter()
    unknown = [r for r in skip_rules if r not in RULES]
    if unknown:
        raise LlmlabError(f"unknown rule {', '.join(unknown)}; rules: {', '.join(RULES)}")
    if tokenizer is None:
        from llmlab.tokenizer.bytes import ByteTokenizer

        tokenizer = ByteTokenizer()
    workers = workers or os.cpu_count() or 1
    inputs = list(inputs) if inputs else fetched_files(cache_dir)
    report = PrepareReport(out_dir=str(out_dir))
    columns = (SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("read", total=None)
        docs = []
        for doc in load_documents(inputs, text_field):
            docs.append(doc)
            bar.advance(task)
        report.docs_in = len(docs)
        if not docs:
            raise LlmlabError(f"no documents in {', '.join(map(str, inputs))}")

        bar.update(task, description="quality rules", completed=0, total=None)
        docs, stats = clean(docs, {name: rule for name, rule in RULES.items() if name not in skip_rules})
        report.removed, report.javascript_lines = stats.removed, stats.javascript_lines
        bar.update(task, description="exact dedup")
        docs, report.exact_duplicates = exact_dedup(docs)
        bar.update(task, description=f"near dedup ({workers} processes)")
        docs, dups = near_dedup(docs, near_threshold, num_perm, seed=seed, workers=workers)
        report.near_duplicates, report.docs_out = len(dups), len(docs)
        if not docs:
            raise LlmlabError("every document was removed by the quality rules or dedup; see --skip-rule")

        bar.update(task, description=f"tokenize ({workers} processes)", completed=0, total=len(docs))
        manifest = write_shards(docs, out_dir, tokenizer, val_fraction, seed, shard_tokens, workers,
                                extra={"prepare": {**report.to_dict(), "inputs": list(map(str, inputs))}},
                                on_progress=lambda n: bar.advance(task, n))
    report.splits = {s: {k: v for k, v in c.items() if k != "shards"} for s, c in manifest["splits"].items()}
    report.seconds = time.perf_counter() - start
    return report
