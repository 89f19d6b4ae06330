"""Batch-1 greedy decoding head to head: `llmlab.infer.generate` vs HF `generate` on the same weights, in one run.

Both models have the same family, shape and weights (ours from a preset with random weights, exported with
`save_hf_model` and loaded with `AutoModelForCausalLM.from_pretrained(..., attn_implementation="sdpa")`); a short
greedy generation is checked token for token before timing. One run, timed end to end on a (1, prompt_len) prompt:
    ours: `infer.generate.stream` (what `generate` collects): prefill into a KVCache once, then one token per step
    HF:   `model.generate(do_sample=False, use_cache=True)` with a streamer, no eos (exactly new_tokens tokens)
Both report the moment each new token exists (our iterator yields it, HF's streamer gets it), so
    TTFT = start -> first new token (prefill + first token);  decode tok/s = (new_tokens - 1) / (first -> last token).
Ours and HF alternate run by run (ours, HF, HF, ours, ...), so noise from a shared machine hits both; the figures are
medians over `repeats` runs each after one warm-up run each, on `threads` CPU threads for both.

KV cache: `bytes_per_token(cfg, dtype)` (2 x layers x kv heads x head_dim x bytes), and the caches the runs held at
the end: ours preallocates prompt + new tokens (`KVCache.memory_bytes`); HF's DynamicCache grows by concatenation.
Speculative: `prompt_lookup_generate` vs plain `generate` on a repetitive prompt (a passage of prompt_len / 2 random
tokens given twice), interleaved and timed the same way; acceptance = accepted / proposed drafts. With random weights
the model does not copy the passage, so the figure says how often its own (often looping) greedy text repeats.
compile=True adds a third contender, ours with `generate(compile=True)` (each decode step one torch.compile'd
graph), timed in the same alternation; its first run (the compilation) is reported as compile_s, and its greedy
tokens are checked equal to eager ours.
Run: `llmlab bench generate` (options: --preset, --prompt-len, --new-tokens, --repeats, --threads, --device, --dtype,
--save).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

VOCAB = 4096  # a BPE-sized vocabulary, so the head costs what it would
CHECK_TOKENS = 16  # greedy tokens compared between ours and HF before timing


class TokenClock:
    """An HF streamer that only notes when each put() arrives: the first put is the prompt, then one per token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        int(value.reshape(-1)[-1])  # wait for the token (a GPU sync), as our loop's int(step.tokens[0]) does
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def build(preset_name: str, vocab_size: int, device: str, dtype, seed: int):
    """(ours, hf): our random-weights model and the same weights loaded by transformers, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmlab import Transformer
    from llmlab.model.hf import save_hf_model
    from llmlab.model.presets import preset

    torch.manual_seed(seed)
    ours = Transformer(preset(preset_name, vocab_size=vocab_size)).eval()
    with tempfile.TemporaryDirectory() as d:
        save_hf_model(ours, d)
        hf = AutoModelForCausalLM.from_pretrained(d, attn_implementation="sdpa").eval()
    return ours.to(device, dtype), hf.to(device, dtype)


def hf_config(new_tokens: int, **more):
    """Greedy, KV cache on, no eos and no min_new_tokens processor: exactly new_tokens tokens, nothing extra."""
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=new_tokens, do_sample=False, use_cache=True, eos_token_id=None,
                            pad_token_id=0, **more)


def run_ours(model, ids, new_tokens: int, compile: bool = False) -> tuple[list[float], list[int]]:
    """(token times, tokens): the start time, then the time each new token was yielded."""
    from llmlab.infer.generate import stream
    from llmlab.infer.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    times, tokens = [time.perf_counter()], []
    for step in stream(model, ids, params, compile=compile):
        times.append(time.perf_counter())
        tokens.append(int(step.tokens[0]))
    return times, tokens


def run_hf(model, ids, new_tokens: int) -> tuple[list[float], list[int]]:
    import torch

    clock = TokenClock()
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=hf_config(new_tokens),
                         streamer=clock)
    return [t0, *clock.times[1:]], out[0, ids.shape[1]:].tolist()


def timing(times: list[float]) -> tuple[float, float]:
    """(TTFT s, decode tok/s) from [start, token 1, ..., token n]."""
    ttft = times[1] - times[0]
    return ttft, (len(times) - 2) / (times[-1] - times[1])


def hf_cache_bytes(model, ids, new_tokens: int) -> int:
    """Bytes of the K/V tensors HF's DynamicCache holds at the end of a generation."""
    import torch

    out = model.generate(ids, attention_mask=torch.ones_like(ids),
                         generation_config=hf_config(new_tokens, return_dict_in_generate=True))
    cache = out.cache
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))


def main(preset: str = "small", prompt_len: int = 64, new_tokens: int = 128, repeats: int = 3, threads: int = 2,
         device: str = "cpu", dtype: str = "float32", save: Path | None = None, vocab_size: int = VOCAB,
         seed: int = 0, compile: bool = False) -> dict:
    """`save`: a JSON file of runs; a run with the same settings already in it is replaced, others are kept."""
    import torch
    import transformers
    from rich.console import Console
    from rich.table import Table

    from llmlab.errors import ConfigError
    from llmlab.infer.generate import generate, prefill
    from llmlab.infer.kv_cache import bytes_per_token
    from llmlab.infer.speculative import prompt_lookup_generate
    from llmlab.train.loop import DTYPES, resolve_device

    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} must be one of {', '.join(DTYPES)}")
    if prompt_len < 2 or new_tokens < 2:
        raise ConfigError(f"prompt_len={prompt_len} and new_tokens={new_tokens} must be >= 2 (decode tok/s is "
                          "timed from the first new token to the last)")
    torch.set_num_threads(threads)
    dev, torch_dtype = resolve_device(device), DTYPES[dtype]
    console = Console()
    ours, hf = build(preset, vocab_size, dev, torch_dtype, seed)
    cfg = ours.cfg
    if prompt_len + new_tokens > cfg.max_seq_len:
        raise ConfigError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the {preset} preset's "
                          f"max_seq_len={cfg.max_seq_len}")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (1, prompt_len), generator=gen).to(dev)

    # the same weights: the same greedy tokens (exact in float32; bfloat16 rounding may flip a near tie)
    same = run_ours(ours, ids, CHECK_TOKENS)[1] == run_hf(hf, ids, CHECK_TOKENS)[1]
    if not same and dtype == "float32":
        raise RuntimeError(f"ours and HF disagree on the first {CHECK_TOKENS} greedy tokens: not the same model")

    runs = {"ours": (run_ours, ours), "hf": (run_hf, hf)}
    compiled = {}
    if compile:
        runs["ours_compiled"] = (lambda model, ids, n: run_ours(model, ids, n, compile=True), ours)
        t0 = time.perf_counter()
        tokens = runs["ours_compiled"][0](ours, ids, CHECK_TOKENS)[1]  # compiles the decode step
        compiled = {"compile_s": time.perf_counter() - t0,
                    "same_tokens_as_eager": tokens == run_ours(ours, ids, CHECK_TOKENS)[1]}
    measured: dict[str, list[tuple[float, float]]] = {who: [] for who in runs}
    for fn, model in runs.values():
        fn(model, ids, new_tokens)  # warm-up
    with console.status(f"timing {preset}"):
        for r in range(repeats):
            for who in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                fn, model = runs[who]
                times, tokens = fn(model, ids, new_tokens)
                assert len(tokens) == new_tokens, f"{who} generated {len(tokens)} tokens, not {new_tokens}"
                measured[who].append(timing(times))

    rows = {}
    for who, values in measured.items():
        rows[who] = {"ttft_ms": 1000 * statistics.median(v[0] for v in values),
                     "decode_tokens_per_s": statistics.median(v[1] for v in values),
                     "runs_decode_tokens_per_s": [v[1] for v in values]}
    ratio = {"decode_tokens_per_s": rows["ours"]["decode_tokens_per_s"] / rows["hf"]["decode_tokens_per_s"],
             "ttft": rows["hf"]["ttft_ms"] / rows["ours"]["ttft_ms"]}
    if compile:
        ratio["compiled_decode_tokens_per_s"] = (rows["ours_compiled"]["decode_tokens_per_s"]
                                                 / rows["hf"]["decode_tokens_per_s"])

    # KV cache: per token from the config, and what each run held at its end
    per_token = bytes_per_token(cfg, torch_dtype)
    with torch.no_grad():
        ours_cache = prefill(ours, ids, None, min(cfg.max_seq_len, prompt_len + new_tokens))[0]  # as `stream` builds
    cache = {"bytes_per_token": per_token,
             "ours_bytes": ours_cache.memory_bytes(), "ours_tokens": ours_cache.k.shape[3],
             "hf_bytes": hf_cache_bytes(hf, ids, new_tokens), "hf_tokens": prompt_len + new_tokens - 1}

    # speculative: prompt lookup vs plain greedy decoding, on a passage given twice
    passage = torch.randint(0, vocab_size, (1, prompt_len // 2), generator=gen).to(dev)
    rep = passage.repeat(1, 2)
    spec_fns = {"plain": lambda: (generate(ours, rep, new_tokens, temperature=0.0), None),
                "prompt lookup": lambda: prompt_lookup_generate(ours, rep, new_tokens, temperature=0.0)}
    spec_out = {kind: fn() for kind, fn in spec_fns.items()}  # warm-up; also the tokens and stats reported
    spec_times: dict[str, list[float]] = {kind: [] for kind in spec_fns}
    with console.status("timing prompt lookup"):
        for r in range(repeats):
            for kind in list(spec_fns) if r % 2 == 0 else list(spec_fns)[::-1]:
                t0 = time.perf_counter()
                spec_fns[kind]()
                spec_times[kind].append(time.perf_counter() - t0)
    plain_s, lookup_s = (statistics.median(spec_times[k]) for k in ("plain", "prompt lookup"))
    stats = spec_out["prompt lookup"][1]
    speculative = {"plain_tokens_per_s": new_tokens / plain_s, "lookup_tokens_per_s": new_tokens / lookup_s,
                   "speedup": plain_s / lookup_s, **stats.to_dict(),
                   "same_tokens": bool(torch.equal(spec_out["plain"][0], spec_out["prompt lookup"][0]))}

    table = Table(title=f"batch-1 greedy decoding: random {preset} ({cfg.n_layers} layers, d={cfg.d_model}, vocab "
                        f"{vocab_size}), prompt {prompt_len}, {new_tokens} new tokens, {dtype}, {dev.type}, "
                        f"{threads} thread(s), median of {repeats}")
    for col in ("", "decode tok/s", "TTFT ms", "KV cache at end"):
        table.add_column(col, justify="right")
    table.add_row("ours", f"{rows['ours']['decode_tokens_per_s']:.1f}", f"{rows['ours']['ttft_ms']:.1f}",
                  f"{cache['ours_bytes'] / 2**20:.2f} MiB ({cache['ours_tokens']} slots)")
    if compile:
        table.add_row("ours, compile=True", f"{rows['ours_compiled']['decode_tokens_per_s']:.1f}",
                      f"{rows['ours_compiled']['ttft_ms']:.1f}", "same cache as ours")
    table.add_row("HF generate", f"{rows['hf']['decode_tokens_per_s']:.1f}", f"{rows['hf']['ttft_ms']:.1f}",
                  f"{cache['hf_bytes'] / 2**20:.2f} MiB ({cache['hf_tokens']} tokens)")
    table.add_row("speed, ours / HF", f"{ratio['decode_tokens_per_s']:.2f}x", f"{ratio['ttft']:.2f}x", "")
    if compile:
        table.add_row("speed, compiled / HF", f"{ratio['compiled_decode_tokens_per_s']:.2f}x", "", "")
    console.print(table)
    if compile:
        console.print(f"compile=True: first run (compilation) {compiled['compile_s']:.1f} s; greedy tokens equal to "
                      f"eager ours: {'yes' if compiled['same_tokens_as_eager'] else 'NO'}")
    console.print(f"KV cache: {per_token} bytes/token ({per_token / 1024:.1f} KiB: 2 x {cfg.n_layers} layers x "
                  f"{cfg.n_kv_heads} kv heads x {cfg.head_dim} x {torch_dtype.itemsize} B); greedy tokens equal "
                  f"to HF's: {'yes' if same else 'NO'}")
    console.print(f"prompt lookup on a {prompt_len // 2}-token passage given twice: "
                  f"{speculative['lookup_tokens_per_s']:.1f} vs {speculative['plain_tokens_per_s']:.1f} tok/s plain "
                  f"= {speculative['speedup']:.2f}x, acceptance {speculative['acceptance_rate']:.2f}, "
                  f"{speculative['tokens_per_pass']:.2f} tokens/pass, same tokens: "
                  f"{'yes' if speculative['same_tokens'] else 'NO'}")

    config = dict(preset=preset, vocab_size=vocab_size, prompt_len=prompt_len, new_tokens=new_tokens,
                  repeats=repeats, threads=threads, device=dev.type, dtype=dtype, seed=seed, compile=compile)
    run = {"config": config, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "params": ours.num_parameters(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "load_avg_1min": os.getloadavg()[0],
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "same_greedy_tokens": same, "ours": rows["ours"], "hf": rows["hf"], "ratio_ours_over_hf": ratio,
           "kv_cache": cache, "prompt_lookup": speculative}
    if compile:
        run["ours_compiled"] = {**rows["ours_compiled"], **compiled}
    if save is not None:
        save = Path(save)
        save.parent.mkdir(parents=True, exist_ok=True)
        saved = json.loads(save.read_text())["runs"] if save.exists() else []
        # a compile=True run times eager ours as well, so it replaces a run without it
        same_settings = {k: v for k, v in config.items() if k not in ("repeats", "compile")}
        saved = [r for r in saved if {k: r["config"].get(k) for k in same_settings} != same_settings] + [run]
        save.write_text(json.dumps({"runs": saved}, indent=2) + "\n")
        console.print(f"saved {save}")
    return run


if __name__ == "__main__":
    main()
