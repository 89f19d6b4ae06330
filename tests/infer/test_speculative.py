"""Speculative decoding (draft model and prompt lookup) against the target model decoding on its own.

References: greedy — plain greedy decoding of the target written here (a full forward over all tokens +
argmax per step), compared token for token (exact); sampling — the target's exact next-token and two-token
distributions (softmax of `sampling.process_logits`), compared with the frequencies of 3000 speculative
generations by a chi-square test at significance 1e-3 (fixed seeds, so the outcome is reproducible); the
accept/reject step — the analytic distribution of one step's output, sum over the accept and reject branches,
equal to p within 1e-12 in float64; cache rollback — logits after `KVCache.crop` equal to a full forward
(torch.testing's fp32 defaults).
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.kv_cache import KVCache
from llmlab.infer.sampling import SamplingParams, process_logits
from llmlab.infer.speculative import (
    accept_prob,
    layer_skip_draft,
    lookup_draft,
    prompt_lookup_generate,
    residual,
    speculative_generate,
)
from llmlab.model.config import TransformerConfig
from llmlab.model.transformer import Transformer

BASE = dict(vocab_size=32, d_model=32, n_layers=3, n_heads=4, d_ff=64, max_seq_len=64, init_std=0.3)
CONFIGS = {
    "mha": TransformerConfig(**BASE),
    "gqa_sliding_window": TransformerConfig(**BASE, n_kv_heads=2, sliding_window=6),
    "gpt2_learned": TransformerConfig(**BASE, position="learned", norm="layernorm", activation="gelu_tanh",
                                      gated_mlp=False, qkv_bias=True, out_bias=True, tie_embeddings=True),
}
TINY = TransformerConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16, init_std=0.5)
ALPHA = 1e-3  # significance of the chi-square tests
RUNS = 3000


def build(cfg: TransformerConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(cfg).eval()


@torch.no_grad()
def plain_greedy(model: Transformer, ids: torch.Tensor, n: int) -> torch.Tensor:
    """The reference: n steps of a full forward over every token so far, then argmax."""
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def prompt(t: int = 6, seed: int = 1, vocab: int = 32) -> torch.Tensor:
    return torch.randint(0, vocab, (1, t), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- greedy: identical tokens

@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_draft_model_equals_plain_greedy(name, k):
    """Greedy speculative decoding with a layer-skip draft and with an unrelated smaller random draft gives
    exactly the tokens of plain greedy decoding of the target; the layer-skip draft is accepted partly."""
    cfg = CONFIGS[name]
    target = build(cfg)
    ids = prompt()
    expected = plain_greedy(target, ids, 24)
    small = build(cfg.replace(n_layers=1, d_model=16, n_heads=2, d_ff=32), seed=5)
    for draft in (layer_skip_draft(target, 1), small):
        tokens, stats = speculative_generate(target, draft, ids, 24, k=k)
        assert torch.equal(tokens, expected)
        assert stats.generated == 24 and stats.accepted <= stats.proposed
        assert stats.target_passes == stats.generated - stats.accepted  # each pass emits accepted + 1 tokens
    tokens, stats = speculative_generate(target, layer_skip_draft(target, 1), ids, 24, k=k)
    assert 0 < stats.acceptance_rate < 1, stats


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_draft_equal_to_target_accepts_everything(k):
    """draft == target: every draft is accepted (rate 1.0) and each target pass emits k + 1 tokens."""
    target = build(CONFIGS["mha"])
    tokens, stats = speculative_generate(target, target, prompt(), 20, k=k)
    assert torch.equal(tokens, plain_greedy(target, prompt(), 20))
    assert stats.acceptance_rate == 1.0
    assert stats.target_passes == -(-20 // (k + 1)) < 20
    assert stats.tokens_per_pass == 20 / stats.target_passes


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("k,ngram", [(2, 1), (4, 3), (6, 2)])
def test_greedy_prompt_lookup_equals_plain_greedy(name, k, ngram):
    """Greedy prompt-lookup decoding gives exactly the tokens of plain greedy decoding; on a repetitive
    prompt it proposes drafts and some are accepted (random models fall into loops the lookup finds)."""
    target = build(CONFIGS[name])
    ids = prompt(5).repeat(1, 3)  # a 5-token phrase three times
    expected = plain_greedy(target, ids, 30)
    tokens, stats = prompt_lookup_generate(target, ids, 30, ngram=ngram, k=k)
    assert torch.equal(tokens, expected)
    assert stats.proposed > 0 and stats.accepted > 0, stats
    assert stats.target_passes < 30 and stats.draft_passes == 0


# ---------------------------------------------------------------- the accept / reject step, exactly

def step_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """P(out = x) of one step: draw x ~ q and accept it w.p. min(1, p/q), else draw from residual(p, q)."""
    accepted = q * accept_prob(p, q)  # (V,) the accept branch
    return accepted + (1 - accepted.sum()) * residual(p, q)  # plus the reject branch


def test_accept_reject_step_reproduces_the_target_distribution():
    """For random p, q (including zeros and p == q) and for one-hot q (prompt lookup: accept w.p. p(x)),
    the output distribution of one accept/reject step equals p within 1e-12 in float64."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for v in (2, 8, 50):
        p = torch.rand(v, generator=g, dtype=torch.float64) ** 3
        q = torch.rand(v, generator=g, dtype=torch.float64) ** 3
        q[0] = 0.0  # a token the drafter never proposes
        p[-1] = 0.0  # a token the target never emits
        p, q = p / p.sum(), q / q.sum()
        cases += [(p, q), (p, p.clone()), (p, torch.nn.functional.one_hot(torch.tensor(v - 1), v).double())]
        cases += [(p, torch.nn.functional.one_hot(torch.tensor(1), v).double())]
    for p, q in cases:
        assert_close(step_distribution(p, q), p, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- sampling: statistically equal

def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square test of counts against probs; cells expected < 5 are pooled into one."""
    counts, expected = counts.double().flatten(), probs.double().flatten() * counts.sum()
    small = expected < 5
    counts = torch.cat([counts[~small], counts[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected > 0
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))  # P(chi2_df > stat)


@torch.no_grad()
def target_joint(target: Transformer, ids: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """(V, V): the target's own probability of emitting (t1, t2) after ids, through `sampling.process_logits`."""
    def probs(x):
        return torch.softmax(process_logits(target(x)[:, -1].float(), x, params), -1)[0].double()  # (V,)

    p1 = probs(ids)
    return torch.stack([p1[t] * probs(torch.cat([ids, torch.tensor([[t]])], 1)) for t in range(len(p1))])


def sample_pairs(generate_fn, v: int) -> torch.Tensor:
    """(V, V) counts of the first two generated tokens over RUNS generations from one seeded generator."""
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(v, v)
    accepted = proposed = 0
    for _ in range(RUNS):
        tokens, stats = generate_fn(g)
        counts[tokens[0, -3], tokens[0, -2]] += 1
        accepted, proposed = accepted + stats.accepted, proposed + stats.proposed
    assert 0 < accepted < proposed  # both branches, and so the cache rollback, are exercised
    return counts


@pytest.mark.parametrize("temperature,top_k", [(0.7, 5), pytest.param(1.0, None, marks=pytest.mark.slow)])
def test_sampled_draft_model_matches_target_distribution(temperature, top_k):
    """First and second generated token of speculative sampling (draft = the target with noisy weights) follow
    the target's own distributions (and the joint of the two): chi-square p-value > 1e-3 each, while the
    draft's own distribution would fail the same test."""
    target = build(TINY)
    draft = build(TINY)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ids = torch.tensor([[1, 2, 3]])
    params = SamplingParams(temperature=temperature, top_k=top_k)
    joint = target_joint(target, ids, params)
    counts = sample_pairs(lambda g: speculative_generate(target, draft, ids, 3, k=4, temperature=temperature,
                                                         top_k=top_k, generator=g), TINY.vocab_size)
    assert chi_square_pvalue(counts.sum(1), joint.sum(1)) > ALPHA
    assert chi_square_pvalue(counts.sum(0), joint.sum(0)) > ALPHA
    assert chi_square_pvalue(counts, joint) > ALPHA
    draft_first = target_joint(draft, ids, params).sum(1)
    assert chi_square_pvalue(counts.sum(1), draft_first) < 1e-6  # the test can tell the two apart


def test_sampled_prompt_lookup_matches_target_distribution():
    """First and second generated token of prompt-lookup sampling (drafts accepted w.p. p(token)) follow the
    target's own distributions and their joint: chi-square p-value > 1e-3 each."""
    target = build(TINY)
    ids = torch.tensor([[1, 2, 3, 1, 2]])  # "1 2" occurred before: the lookup drafts "3 1"
    joint = target_joint(target, ids, SamplingParams(temperature=1.0))
    counts = sample_pairs(lambda g: prompt_lookup_generate(target, ids, 3, ngram=2, k=4, temperature=1.0,
                                                           generator=g), TINY.vocab_size)
    assert chi_square_pvalue(counts.sum(1), joint.sum(1)) > ALPHA
    assert chi_square_pvalue(counts.sum(0), joint.sum(0)) > ALPHA
    assert chi_square_pvalue(counts, joint) > ALPHA


# ---------------------------------------------------------------- pieces

def test_lookup_draft():
    """The continuation of the most recent earlier occurrence of the last n-gram, backing off to shorter ones."""
    ids = torch.tensor([5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2])
    assert lookup_draft(ids, 2, 3).tolist() == [4, 7, 1]  # "1 2" last seen before at index 5
    assert lookup_draft(ids, 3, 2).tolist() == [4, 7]  # "7 1 2" is new: backs off to "1 2"
    assert lookup_draft(torch.tensor([1, 2, 3]), 2, 4).tolist() == []  # nothing repeats
    assert lookup_draft(torch.tensor([4]), 3, 4).tolist() == []
    assert lookup_draft(torch.tensor([3, 3, 3]), 1, 4).tolist() == [3]  # the continuation stops at the end


@torch.no_grad()
def test_cache_crop_matches_recomputation():
    """After crop(length) and new tokens, the cached logits equal a full forward over the corrected sequence,
    for a left-padded batch (the padding mask is cropped too)."""
    cfg = CONFIGS["gqa_sliding_window"]
    model = build(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    cache = KVCache(cfg, 2, 20)
    model(ids[:, :7], attention_mask=mask[:, :7], cache=cache)
    model(ids[:, 7:12], cache=cache)  # 5 drafts ...
    cache.crop(9)  # ... of which 2 are kept
    new = torch.tensor([[4], [6]])
    seq = torch.cat([ids[:, :9], new], 1)
    full_mask = torch.cat([mask[:, :9], torch.ones(2, 1, dtype=torch.long)], 1)
    assert_close(model(new, cache=cache), model(seq, attention_mask=full_mask)[:, -1:])
    assert cache.length == 10 and cache.mask.shape == (2, 10)


def test_errors():
    """Documented errors: batch > 1, mismatched vocabularies, too long for max_seq_len, bad crop."""
    target = build(CONFIGS["mha"])
    with pytest.raises(LlmlabError, match="one sequence at a time"):
        speculative_generate(target, target, prompt().repeat(2, 1), 4)
    with pytest.raises(ConfigError, match="vocab_size"):
        speculative_generate(target, build(TINY), prompt(), 4)
    with pytest.raises(LlmlabError, match="max_seq_len=64"):
        prompt_lookup_generate(target, prompt(), 60)
    with pytest.raises(ConfigError, match="n_layers=4"):
        layer_skip_draft(target, 4)
    cache = KVCache(CONFIGS["gqa_sliding_window"], 1, rolling=True)
    with pytest.raises(LlmlabError, match="rolling"):
        cache.crop(0)
    with pytest.raises(LlmlabError, match="crop length=3"):
        KVCache(CONFIGS["mha"], 1).crop(3)
