"""Beam search with length penalty and early stopping, token for token as HF `generate(num_beams=n)`."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import TinyLM, randint
from llmlab.drills.grader import Case, Drill
from llmlab.infer.beam import beam_candidates
from llmlab.infer.beam import beam_search as llmlab_beam_search

STARTER = '''"""Drill: beam_search. Check with `llmlab drill check beam_search`."""
import torch
from torch import Tensor


def beam_search(model, input_ids: Tensor, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                early_stopping: bool = False, eos_token_id: int | None = None) -> tuple[Tensor, Tensor]:
    """Beam search as HF generate(num_beams=nb, do_sample=False): the best hypothesis of each prompt.

    model: a callable, model(ids (N, T) int64) -> logits (N, T, V) float64. input_ids: (B, T) int64, no padding.
    Next-token log-probs: torch.log_softmax(logits[:, -1].float(), -1), float32 as HF. A sequence's score is the
    sum of its generated tokens' log-probs; a finished hypothesis ranks by score / n_gen ** length_penalty, n_gen =
    its generated tokens, eos included.

    Each prompt starts nb running beams: beam 0 with score 0, the others -inf (only the prompt is extended at
    first). At step n_gen = 1, 2, ..., for each prompt:
      1. candidates: the 2 * nb best extensions (beam, token) of all its running beams together, by summed score,
         best first.
      2. a candidate ends if its token is eos_token_id or n_gen == max_new_tokens. Ending candidates ranked in
         the first nb enter the prompt's pool of finished hypotheses (unless the prompt is done); the pool keeps
         the nb best by normalised score.
      3. the best nb candidates that did not end are the next running beams.
      4. the prompt is done once its pool holds nb hypotheses and early_stopping is True, or (False) the best
         running score / n_gen ** length_penalty <= the pool's worst normalised score.
    Stop when every prompt is done, or after max_new_tokens steps.

    Returns (sequences (B, T + L) int64: each prompt followed by its best pool hypothesis, right-padded with
    eos_token_id to L, the longest of the B returned hypotheses; scores (B,) float32: their normalised scores).
    """
    raise NotImplementedError
'''


def beam_search(model: TinyLM, input_ids: Tensor, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                early_stopping: bool = False, eos_token_id: int | None = None) -> tuple[Tensor, Tensor]:
    out = llmlab_beam_search(model.model, input_ids, num_beams, max_new_tokens, length_penalty=length_penalty,
                             early_stopping=early_stopping, eos_token_id=eos_token_id)
    return out.sequences, out.scores


VOCAB = 47


def _prompt(g: torch.Generator, b: int, t: int) -> Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=g)


def _eos(model: TinyLM, ids: Tensor) -> int:
    """The model's most probable token on average over the prompts' positions: as eos, beams end often, the pool
    fills early, and early stopping and its heuristic decide the result."""
    return int(model(ids).softmax(-1).mean((0, 1)).argmax())


def _case(model: TinyLM, ids: Tensor, nb: int, n: int, tags: tuple[str, ...], visible: bool = False, **kw) -> Case:
    return Case(dict(model=model, input_ids=ids, num_beams=nb, max_new_tokens=n, **kw), tags, visible)


def examples() -> list[Case]:
    g = torch.Generator().manual_seed(8)
    model = TinyLM(g, VOCAB, max_seq_len=32)
    ids = _prompt(g, 1, 3)
    return [_case(model, ids, 2, 4, ("basic", "no-eos"), True),
            _case(model, ids, 2, 6, ("eos",), True, eos_token_id=_eos(model, ids))]


def hidden(g: torch.Generator) -> list[Case]:
    model = TinyLM(g, VOCAB, max_seq_len=32)
    ids = _prompt(g, 2, randint(g, 2, 6))
    eos = _eos(model, ids)
    solo = _prompt(g, 1, 4)
    solo_eos = _eos(model, solo)
    short, three = _prompt(g, 3, 1), _prompt(g, 3, 4)
    return [_case(model, ids, 3, 6, ("no-eos", "batch")),
            _case(model, ids, 3, 8, ("eos", "batch"), eos_token_id=eos),
            _case(model, solo, 4, 10, ("eos", "early-stopping"), eos_token_id=solo_eos, early_stopping=True),
            _case(model, solo, 2, 12, ("eos", "early-stopping"), eos_token_id=solo_eos, early_stopping=True,
                  length_penalty=2.0),
            # early_stopping=False: the heuristic stops a prompt while a longer hypothesis could still win
            _case(model, short, 2, 20, ("eos", "stop-heuristic", "batch"), eos_token_id=_eos(model, short),
                  length_penalty=2.0),
            _case(model, three, 2, 20, ("eos", "stop-heuristic", "batch"), eos_token_id=_eos(model, three)),
            _case(model, solo, 3, 10, ("eos", "length-penalty"), eos_token_id=solo_eos, length_penalty=2.0),
            _case(model, ids, 3, 8, ("eos", "length-penalty", "batch"), eos_token_id=eos, length_penalty=0.0),
            _case(model, solo, 3, 8, ("eos", "length-penalty"), eos_token_id=solo_eos, length_penalty=-1.0),
            _case(model, ids, 1, 5, ("num-beams-1", "eos"), eos_token_id=eos),
            _case(model, _prompt(g, 2, 1), 3, 5, ("len1",)),
            _case(model, ids, 4, 1, ("max-new-1",), eos_token_id=eos)]


DRILL = Drill(
    name="beam_search", area="inference", difficulty=3, minutes=40, func="beam_search",
    statement="Write beam search with a pool of finished hypotheses, length penalty and early stopping, equal "
              "token for token to HF generate(num_beams=n).",
    starter=STARTER, reference=beam_search, sources=(llmlab_beam_search, beam_candidates), examples=examples,
    hidden=hidden, tags=("eos", "length-penalty", "early-stopping", "stop-heuristic", "batch", "len1"),
    tol={torch.float64: (1e-5, 1e-5)},  # scores are float32, as HF
    hints=("Keep per prompt: running (nb, t) ids with scores (nb,), and a pool of up to nb (normalised score, ids). "
           "Each step: logp = log_softmax(model(running)[:, -1].float()); cand = running_score[:, None] + logp; "
           "torch.topk(cand.flatten(), 2 * nb): beam = i // V, token = i % V.",
           "Walk the candidates in rank order: a candidate that ends (eos, or the last step) and ranks < nb goes to "
           "the pool as score / n_gen ** length_penalty (keep the nb best); the first nb that do not end run on.",
           "Done: pool full and (early_stopping or best running score / n_gen ** length_penalty <= worst pooled). "
           "A done prompt adds nothing to its pool. Return each pool's best, padded with eos."),
    tag_hints={"eos": "a beam that emits eos leaves the running beams and enters the pool, ranked by its "
                      "normalised score; the running beams are refilled from the 2 * nb candidates.",
               "length-penalty": "rank finished hypotheses by sum_logprob / n_gen ** length_penalty, n_gen counting "
                                 "the generated tokens with eos.",
               "early-stopping": "early_stopping=True: a prompt is done as soon as its pool holds nb hypotheses.",
               "stop-heuristic": "early_stopping=False: once the pool is full, stop the prompt when its best running "
                                 "score / n_gen ** length_penalty <= the worst pooled score (HF's estimate), not "
                                 "later.",
               "no-eos": "without eos every hypothesis ends at max_new_tokens: the top nb of the last step's "
                         "candidates fill the pool.",
               "num-beams-1": "one beam, two candidates: an eos candidate ranked first ends it, and the second "
                              "candidate runs on.",
               "batch": "prompts are independent: rank candidates within each prompt, stop when all are done.",
               "max-new-1": "one step: the best nb first tokens all end there."},
    banned=("beam_search", "beam_candidates", "generate", "stream", "_steps"),
)
