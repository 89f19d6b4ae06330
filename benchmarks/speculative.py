"""Speculative decoding vs plain decoding on the same model, prompt and sampling settings, in one run.

Three decoders of `new_tokens` tokens at batch 1:
    plain:         `infer.generate.generate` (one target forward per token, KV cache)
    self-spec:     `speculative_generate` with a draft made of the target's first `draft_layers` blocks plus its
                   final norm and head (`layer_skip_draft`: self-speculative decoding, Zhang et al. 2023,
                   "Draft & Verify")
    prompt lookup: `prompt_lookup_generate` (drafts copied from the context after the last n-gram; Saxena 2023)
Reported: tokens/s (median of `repeats` timed runs after a warm-up, the decoders interleaved so noise from a shared
machine hits all of them), speed-up over plain, acceptance rate, new tokens per target forward pass, and whether the
tokens equal plain decoding's (greedy only: sampled runs draw different random numbers).

The prompt is a passage given twice (what prompt lookup feeds on: quoting, editing, summarising): the sonnets
sample through the model's tokenizer when `--model` has one (DIR/tokenizer or DIR/tokenizer.json), else random
token ids. Random weights (the default, a `small` preset) say little about the layer-skip draft: its layers do not
predict the full model's, so acceptance is near zero; pass a trained run (`--model runs/NAME/model`) for that row.
Timed on `threads` CPU threads, 1 by default: batch-1 decoding is a chain of small matmuls, and on a shared machine
two OpenMP threads waiting on each other at every op made timings swing tenfold.
Run: `llmlab bench speculative` (options: --model, --preset, --new-tokens, -k, --draft-layers, --ngram,
--temperature, --repeats, --threads, --save).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

VOCAB = 4096  # random-weights target: a BPE-sized vocabulary, so the head costs what it would
PASSAGE = 32  # prompt tokens before the repeat


def build_target(model: Path | None, preset_name: str, seed: int):
    import torch

    from llmlab import Transformer, load_model
    from llmlab.model.presets import preset

    if model is not None:
        return load_model(model)
    torch.manual_seed(seed)
    return Transformer(preset(preset_name, vocab_size=VOCAB)).eval()


def build_prompt(model: Path | None, vocab_size: int, seed: int):
    """(1, 2 x PASSAGE): a passage of the sonnets (through the model's tokenizer) or random ids, twice."""
    import torch

    tok_dir = next((d for d in ([model / "tokenizer", model] if model else []) if (d / "tokenizer.json").is_file()),
                   None)
    if tok_dir is not None:
        from llmlab import load_tokenizer
        from llmlab.data.samples import sample_text

        passage = load_tokenizer(tok_dir).encode(sample_text("sonnets")[:2000])[:PASSAGE]
        passage = torch.tensor([passage])
    else:
        passage = torch.randint(0, vocab_size, (1, PASSAGE), generator=torch.Generator().manual_seed(seed))
    return passage.repeat(1, 2)


def main(model: Path | None = None, preset: str = "small", new_tokens: int = 128, k: int = 4,
         draft_layers: int | None = None, ngram: int = 3, temperature: float = 0.0, repeats: int = 3,
         seed: int = 0, threads: int = 1, save: Path | None = None) -> dict:
    import torch
    from rich.console import Console
    from rich.table import Table

    from llmlab.infer.generate import generate
    from llmlab.infer.speculative import layer_skip_draft, prompt_lookup_generate, speculative_generate

    torch.set_num_threads(threads)
    model = Path(model) if model is not None else None
    console = Console()
    target = build_target(model, preset, seed)
    cfg = target.cfg
    draft_layers = draft_layers or max(1, cfg.n_layers // 2)
    draft = layer_skip_draft(target, draft_layers)
    ids = build_prompt(model, cfg.vocab_size, seed)

    def gen(kind: str):
        g = torch.Generator().manual_seed(seed)
        if kind == "plain":
            return generate(target, ids, new_tokens, temperature=temperature, generator=g), None
        if kind == "self-spec":
            return speculative_generate(target, draft, ids, new_tokens, k=k, temperature=temperature, generator=g)
        return prompt_lookup_generate(target, ids, new_tokens, ngram=ngram, k=k, temperature=temperature, generator=g)

    kinds = ("plain", "self-spec", "prompt lookup")
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    outputs = {kind: gen(kind) for kind in kinds}  # warm-up; also the tokens and stats reported
    with console.status("timing"):
        for r in range(repeats):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                t0 = time.perf_counter()
                gen(kind)
                times[kind].append(time.perf_counter() - t0)

    plain_tokens = outputs["plain"][0]
    rows = []
    for kind in kinds:
        tokens, stats = outputs[kind]
        seconds = statistics.median(times[kind])
        row = {"decoder": kind, "tokens_per_s": new_tokens / seconds, "ms": 1000 * seconds,
               "same_tokens": bool(torch.equal(tokens, plain_tokens)) if temperature == 0 else None}
        if stats is not None:
            row.update(stats.to_dict())
        rows.append(row)
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base

    source = str(model) if model else f"random {preset} (vocab {VOCAB})"
    table = Table(title=f"speculative decoding, batch 1: {source}, {cfg.n_layers} layers, {new_tokens} new tokens, "
                        f"k={k}, draft {draft_layers} layers, ngram {ngram}, temperature {temperature}, "
                        f"{threads} thread(s)")
    for col in ("decoder", "tok/s", "speed-up", "acceptance", "tok/target pass", "same tokens"):
        table.add_column(col, justify="right")
    for row in rows:
        same = {None: "-", True: "yes", False: "NO"}[row["same_tokens"]]
        table.add_row(row["decoder"], f"{row['tokens_per_s']:.1f}", f"{row['speedup']:.2f}x",
                      f"{row['acceptance_rate']:.2f}" if "acceptance_rate" in row else "-",
                      f"{row['tokens_per_pass']:.2f}" if "tokens_per_pass" in row else "1.00", same)
    console.print(table)
    console.print("speed-up = tok/s over plain; acceptance = accepted / proposed drafts; prompt: a "
                  f"{PASSAGE}-token passage given twice")
    result = {"config": dict(model=source, n_layers=cfg.n_layers, new_tokens=new_tokens, k=k,
                             draft_layers=draft_layers, ngram=ngram, temperature=temperature, repeats=repeats,
                             seed=seed, threads=threads, machine=platform.machine()),
              "rows": rows}
    if save is not None:
        save = Path(save)
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"saved {save}")
    return result


if __name__ == "__main__":
    main()
