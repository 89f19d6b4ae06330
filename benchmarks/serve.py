"""The server under load: throughput and latency of `llmlab serve` at several concurrency levels, against HF `generate`
answering the same requests one at a time, in one run on the same weights.

Our side: the engine (continuous batching, paged KV cache) behind the OpenAI API (`serve.api.create_app`), uvicorn on
127.0.0.1 at a port the OS picks, in a thread of this process. A bounded asyncio load generator (httpx) sends
`requests_per_level` streaming chat completions per level, `concurrency` in flight at a time (each client sends its
next request when its last one ends), greedy, max_tokens each, `stream_options.include_usage` for the token count:
    TTFT    = send -> first chunk with content or a finish (the role-only first chunk does not count)
    latency = send -> [DONE];  p50 / p99 over the level's requests (linear interpolation; with 32 requests p99 ~ max)
    tok/s   = completion tokens of the level / (first send -> last [DONE])
    batch   = engine tokens / engine steps in the level (how many sequences shared each decode forward)
The baseline: HF `generate` (greedy, KV cache, the chat stop tokens as eos) on the same prompts, one request after
the other, timed before each level and once more at the end; its tok/s is the median of those passes, and each
level's ratio is ours / that. Every request of either side is the chat template around a line pair of the sonnets.

The model has random weights and a tokenizer trained on the bundled sonnets (`vocab_size` tokens), so answers can end
early at <|im_end|>: tokens are counted, not assumed. The load generator shares the process (and the GIL) with the
server and the engine, which counts against our side. Every wait is bounded (start, each request, each level, stop);
the server and engine are shut down in a `finally`.
Run: `llmlab bench serve` (options: --preset, --concurrency, --requests-per-level, --max-tokens, --threads, --save);
main(compile=True) serves with the engine's compiled decode step.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

MODEL_NAME = "bench"
VOCAB = 4096
START_TIMEOUT_S = 30
REQUEST_TIMEOUT_S = 120  # one request, connect to [DONE]
LEVEL_TIMEOUT_S = 600  # one concurrency level, all its requests


def serving(engine, tokenizer):
    """The engine's API on 127.0.0.1:free-port for the `with` block; yields the base URL."""
    from llmlab.serve.background import serve_in_background

    return serve_in_background(engine, tokenizer, MODEL_NAME, start_timeout=START_TIMEOUT_S)


def prompts(n: int) -> list[str]:
    """n user messages: consecutive line pairs of the sonnets."""
    from llmlab.data.samples import sample_text

    lines = [line.strip() for line in sample_text("sonnets").splitlines() if len(line.strip()) > 20]
    return [f"{lines[2 * i % len(lines)]} {lines[(2 * i + 1) % len(lines)]}" for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between the nearest ranks (numpy's default)."""
    xs = sorted(values)
    at = (len(xs) - 1) * q / 100
    lo = int(at)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (at - lo)


async def one_request(client, url: str, message: str, max_tokens: int) -> dict:
    """One streaming chat completion: {ttft, latency, tokens}."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": message}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens = None, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread()).decode()[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"server error: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if ttft is None and (choice["delta"].get("content") or choice.get("finish_reason")):
                    ttft = time.perf_counter() - t0
    if tokens is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return {"ttft": ttft, "latency": time.perf_counter() - t0, "tokens": tokens}


async def load(url: str, messages: list[str], concurrency: int, max_tokens: int) -> tuple[list[dict], float]:
    """All messages through `concurrency` clients; returns the per-request results and the wall time."""
    import httpx

    todo = list(enumerate(messages))
    results: list[dict | None] = [None] * len(messages)

    async def client_loop(client) -> None:
        while todo:
            i, message = todo.pop(0)
            results[i] = await asyncio.wait_for(one_request(client, url, message, max_tokens), REQUEST_TIMEOUT_S)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S), limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client_loop(client) for _ in range(concurrency))), LEVEL_TIMEOUT_S)
        wall = time.perf_counter() - t0
    return results, wall


def hf_sequential(hf, prompt_ids: list[list[int]], max_tokens: int, stop_ids: list[int]) -> tuple[int, float]:
    """(tokens, seconds): HF generate on each prompt in turn, greedy, stopping at the chat stop tokens."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, use_cache=True, eos_token_id=stop_ids,
                              pad_token_id=stop_ids[0])
    tokens = 0
    t0 = time.perf_counter()
    for ids in prompt_ids:
        x = torch.tensor([ids])
        out = hf.generate(x, attention_mask=torch.ones_like(x), generation_config=config)
        tokens += out.shape[1] - x.shape[1]
    return tokens, time.perf_counter() - t0


def main(preset: str = "tiny", concurrency: tuple[int, ...] = (1, 4, 16), requests_per_level: int = 32,
         max_tokens: int = 32, threads: int = 2, save: Path | None = None, vocab_size: int = VOCAB,
         seed: int = 0, compile: bool = False) -> dict:
    """`save`: a JSON file of runs; a run with the same settings already in it is replaced, others are kept.
    compile: the engine decodes with compile=True (one torch.compile'd graph per step)."""
    import torch
    import transformers
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM

    from llmlab import Transformer
    from llmlab.data.samples import sample_text
    from llmlab.errors import ConfigError
    from llmlab.infer.chat_template import ChatTemplate
    from llmlab.model.hf import save_hf_model
    from llmlab.model.presets import preset as preset_config
    from llmlab.serve.engine import Engine
    from llmlab.tokenizer import train_tokenizer

    concurrency = tuple(concurrency)
    if not concurrency or min(concurrency) < 1 or requests_per_level < 1 or max_tokens < 1:
        raise ConfigError(f"concurrency={concurrency}, requests_per_level={requests_per_level} and "
                          f"max_tokens={max_tokens} must be positive")
    torch.set_num_threads(threads)
    console = Console()
    tokenizer = train_tokenizer(sample_text(), vocab_size)
    torch.manual_seed(seed)
    model = Transformer(preset_config(preset, vocab_size=tokenizer.vocab_size)).eval()
    with tempfile.TemporaryDirectory() as d:
        save_hf_model(model, d)
        hf = AutoModelForCausalLM.from_pretrained(d, attn_implementation="sdpa").eval()
    template = ChatTemplate()
    stop_ids = template.stop_token_ids(tokenizer)
    messages = prompts(requests_per_level)
    prompt_ids = [tokenizer.encode(template.render([{"role": "user", "content": m}]), allowed_special="all")
                  for m in messages]
    engine = Engine(model, tokenizer, max_batch_size=max(concurrency), device="cpu", compile=compile)

    hf_sequential(hf, prompt_ids[:1], max_tokens, stop_ids)  # warm-up
    hf_passes: list[tuple[int, float]] = []
    levels = []
    engine.warm_up()  # compile=True compiles its decode graphs here, as `llmlab serve --compile` does
    with serving(engine, tokenizer) as url:
        asyncio.run(load(url, messages[:1], 1, max_tokens))  # warm-up
        for c in concurrency:
            with console.status(f"HF generate, {len(prompt_ids)} requests one at a time"):
                hf_passes.append(hf_sequential(hf, prompt_ids, max_tokens, stop_ids))
            before = engine.stats
            with console.status(f"{requests_per_level} requests, {c} at a time"):
                results, wall = asyncio.run(load(url, messages, c, max_tokens))
            after = engine.stats
            tokens = sum(r["tokens"] for r in results)
            ttfts, latencies = [r["ttft"] for r in results], [r["latency"] for r in results]
            levels.append({"concurrency": c, "requests": len(results), "tokens": tokens, "seconds": wall,
                           "tokens_per_s": tokens / wall, "requests_per_s": len(results) / wall,
                           "ttft_ms_p50": 1000 * percentile(ttfts, 50), "ttft_ms_p99": 1000 * percentile(ttfts, 99),
                           "latency_ms_p50": 1000 * percentile(latencies, 50),
                           "latency_ms_p99": 1000 * percentile(latencies, 99),
                           "mean_batch": (after["tokens_generated"] - before["tokens_generated"])
                           / max(1, after["steps"] - before["steps"])})
        hf_passes.append(hf_sequential(hf, prompt_ids, max_tokens, stop_ids))
    hf_tps = statistics.median(n / s for n, s in hf_passes)
    for level in levels:
        level["ratio_over_hf_sequential"] = level["tokens_per_s"] / hf_tps

    cfg = model.cfg
    table = Table(title=f"llmlab serve under load: random {preset} ({cfg.n_layers} layers, d={cfg.d_model}, vocab "
                        f"{tokenizer.vocab_size}), {requests_per_level} streaming chat requests per level, "
                        f"max_tokens {max_tokens}, greedy, {threads} thread(s)"
                        + (", engine compile=True" if compile else ""))
    for col in ("clients", "tok/s", "req/s", "TTFT p50/p99 ms", "latency p50/p99 ms", "batch", "vs HF"):
        table.add_column(col, justify="right")
    for lv in levels:
        table.add_row(str(lv["concurrency"]), f"{lv['tokens_per_s']:.1f}", f"{lv['requests_per_s']:.2f}",
                      f"{lv['ttft_ms_p50']:.0f} / {lv['ttft_ms_p99']:.0f}",
                      f"{lv['latency_ms_p50']:.0f} / {lv['latency_ms_p99']:.0f}", f"{lv['mean_batch']:.1f}",
                      f"{lv['ratio_over_hf_sequential']:.2f}x")
    table.add_row("HF 1 by 1", f"{hf_tps:.1f}", "", "", "", "1.0", "1.00x")
    console.print(table)
    console.print("batch = sequences per engine step; vs HF = tok/s over HF generate answering the same requests "
                  "one at a time")
    console.print(f"HF passes (tokens, s): {', '.join(f'({n}, {s:.2f})' for n, s in hf_passes)}; prompts "
                  f"{min(map(len, prompt_ids))}-{max(map(len, prompt_ids))} tokens")

    config = dict(preset=preset, vocab_size=tokenizer.vocab_size, concurrency=list(concurrency),
                  requests_per_level=requests_per_level, max_tokens=max_tokens, threads=threads, seed=seed,
                  compile=compile)
    run = {"config": config, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
           "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "load_avg_1min": os.getloadavg()[0],
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "prompt_tokens": [min(map(len, prompt_ids)), max(map(len, prompt_ids))],
           "levels": levels, "hf_sequential": {"tokens_per_s": hf_tps, "passes": [
               {"tokens": n, "seconds": s} for n, s in hf_passes]}}
    if save is not None:
        save = Path(save)
        save.parent.mkdir(parents=True, exist_ok=True)
        saved = json.loads(save.read_text())["runs"] if save.exists() else []
        saved = [r for r in saved if {"compile": False, **r["config"]} != config] + [run]  # older runs: eager
        save.write_text(json.dumps({"runs": saved}, indent=2) + "\n")
        console.print(f"saved {save}")
    return run


if __name__ == "__main__":
    main()
