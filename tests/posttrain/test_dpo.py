import inspect

import pytest
import torch
from datasets import Dataset
from trl.data_utils import unpair_preference_dataset
from trl.experimental.cpo.cpo_trainer import CPOTrainer
from trl.experimental.orpo.orpo_trainer import ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference, KTOTrainer
from trl.trainer.utils import add_fused_lm_head

from llmlab.posttrain import (
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_odds_ratio_loss,
    robust_dpo_loss,
    sequence_logprobs,
    simpo_loss,
)
from llmlab.posttrain.train_dpo import Row, kl_batch, pair_logps, reference_logps, step_loss
from llmlab.posttrain.train_dpo import pair_batch as collate  # the name pair_batch is the fixture's here
from tests.posttrain.trl_stub import tiny_llama, trainer_self

FUSED_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


@pytest.fixture(scope="module")
def pair_batch():
    """2 preference pairs laid out as TRL's DPO collator does: [chosen_0, chosen_1, rejected_0, rejected_1]."""
    policy, ref = tiny_llama(0), tiny_llama(1)
    for m in (policy, ref):
        add_fused_lm_head(m, outputs=FUSED_OUTPUTS)
    torch.manual_seed(2)
    input_ids = torch.randint(0, 97, (4, 10))
    attention_mask = torch.ones(4, 10, dtype=torch.long)
    attention_mask[1, 8:] = 0
    attention_mask[3, 6:] = 0
    completion_mask = attention_mask.clone()
    completion_mask[:, :4] = 0  # 4 prompt tokens, then completions of 6, 4, 6, 2 tokens
    with torch.no_grad():
        seq = {name: sequence_logprobs(m(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids,
                                       completion_mask) for name, m in (("policy", policy), ("ref", ref))}
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, completion_mask=completion_mask)
    return policy, ref, inputs, seq


ARGS = type("Args", (), {"gradient_checkpointing_kwargs": None})()


def _trl_dpo(policy, ref, inputs, loss_type, beta, label_smoothing=0.0, loss_weights=(1.0,)):
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    me = trainer_self(model=policy, ref_model=ref, beta=beta, loss_types=loss_types, loss_weights=list(loss_weights),
                      label_smoothing=label_smoothing, ld_alpha=None, precompute_ref_logps=False,
                      f_divergence_type="reverse_kl", use_weighting=False, args=ARGS)
    with torch.no_grad():
        return DPOTrainer._compute_loss(me, policy, dict(inputs), return_outputs=False)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust"])
def test_dpo_family_equals_trl_dpo_trainer_compute_loss(pair_batch, loss_type):
    """Reference: TRL 1.16 `DPOTrainer._compute_loss` (the loss is inline there) run on a tiny Llama policy and
    reference with TRL's fused LM head; ours from the same models' logits via `sequence_logprobs`. fp32 defaults."""
    policy, ref, inputs, seq = pair_batch
    chosen, rejected = seq["policy"].chunk(2)
    ref_chosen, ref_rejected = seq["ref"].chunk(2)
    beta = 0.5
    if loss_type == "sigmoid":
        ours = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    elif loss_type == "hinge":
        ours = hinge_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    elif loss_type == "ipo":
        lengths = inputs["completion_mask"].sum(-1).float()
        ours = ipo_loss(chosen, rejected, ref_chosen, ref_rejected, *lengths.chunk(2), beta=beta)
    else:
        ours = robust_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.2)
    trl = _trl_dpo(policy, ref, inputs, loss_type, beta, label_smoothing=0.2 if loss_type == "robust" else 0.0)
    torch.testing.assert_close(ours.mean(), trl)


def _logps(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 30 + 0.5) for _ in range(4)]


def _cpo_self(loss_type, beta, label_smoothing=0.0, simpo_gamma=0.5):
    return trainer_self(loss_type=loss_type, beta=beta, label_smoothing=label_smoothing, alpha=0.0,
                        simpo_gamma=simpo_gamma)


def test_cdpo_label_smoothing_equals_trl_cpo_loss():
    """Reference: TRL 1.16 `trl.experimental.cpo.CPOTrainer.cpo_loss` (loss_type='sigmoid', label_smoothing): with the
    policy-minus-reference log-ratios as its inputs it is conservative DPO (TRL 1.16's DPOTrainer 'sigmoid' ignores
    label_smoothing). float64, rtol 1e-12."""
    chosen, rejected, ref_chosen, ref_rejected = _logps()
    for eps in (0.0, 0.1, 0.3):
        trl, _, _ = CPOTrainer.cpo_loss(_cpo_self("sigmoid", 0.1, eps), chosen - ref_chosen, rejected - ref_rejected)
        ours = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=eps)
        torch.testing.assert_close(ours, trl, rtol=1e-12, atol=1e-12)


def test_simpo_equals_trl_cpo_loss_simpo():
    """Reference: TRL 1.16 `CPOTrainer.cpo_loss` with loss_type='simpo' (alpha=0) on average log-probs; float64."""
    chosen, rejected, _, _ = _logps(seed=1)
    chosen, rejected = chosen / 20, rejected / 20  # per-token averages
    for beta, gamma, eps in ((2.0, 0.5, 0.0), (2.5, 1.4, 0.1)):
        trl, _, _ = CPOTrainer.cpo_loss(_cpo_self("simpo", beta, eps, gamma), chosen, rejected)
        torch.testing.assert_close(simpo_loss(chosen, rejected, beta, gamma, eps), trl, rtol=1e-12, atol=1e-12)


def test_orpo_equals_trl_odds_ratio_loss():
    """Reference: TRL 1.16 `trl.experimental.orpo.ORPOTrainer.odds_ratio_loss`, which returns beta*logsigmoid(log-odds)
    (the trainer subtracts its mean); ours is the positive term. Averages on both sides of -ln 2; fp32 defaults."""
    chosen = torch.tensor([-0.05, -0.4, -0.69, -0.9, -3.0, -12.0])
    rejected = torch.tensor([-0.3, -0.1, -0.75, -2.5, -1.0, -11.0])
    trl, _, _, _, _ = ORPOTrainer.odds_ratio_loss(trainer_self(beta=0.25), chosen, rejected)
    torch.testing.assert_close(orpo_odds_ratio_loss(chosen, rejected, beta=0.25), -trl)


def test_kto_equals_trl_kto_trainer_compute_loss():
    """Reference: TRL 1.16 `KTOTrainer._compute_loss` (inline loss) on a tiny Llama with the fused LM head, cached
    reference log-probs and KL log-probs fed to both; desirable/undesirable weights != 1. fp32 defaults."""
    policy = tiny_llama(0)
    add_fused_lm_head(policy, outputs=FUSED_OUTPUTS)
    torch.manual_seed(3)
    input_ids = torch.randint(0, 97, (5, 8))
    attention_mask = torch.ones(5, 8, dtype=torch.long)
    attention_mask[2, 6:] = 0
    completion_mask = attention_mask.clone()
    completion_mask[:, :3] = 0
    label = torch.tensor([True, False, True, False, False])
    ref_logps = torch.randn(5) * 3 - 20
    kl_logps, ref_kl_logps = torch.randn(5) - 20, torch.randn(5) - 21  # mean difference > 0: the KL term is active
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, completion_mask=completion_mask, label=label,
                 ref_logps=ref_logps, ref_KL_logps=ref_kl_logps)
    me = trainer_self(model=policy, beta=0.3, loss_type="kto", precompute_ref_logps=True, calculate_KL=True,
                      desirable_weight=1.5, undesirable_weight=0.7, _compute_kl_logps=lambda model, batch: kl_logps)
    with torch.no_grad():
        trl = KTOTrainer._compute_loss(me, policy, batch, return_outputs=False)
        logps = sequence_logprobs(policy(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids,
                                  completion_mask)
    kl = kto_kl_estimate(kl_logps, ref_kl_logps)
    assert kl > 0
    ours = kto_loss(logps, ref_logps, label, kl, beta=0.3, desirable_weight=1.5, undesirable_weight=0.7)
    torch.testing.assert_close(ours.mean(), trl)


class Logits(torch.nn.Module):
    """An HF causal LM called as llmlab's models are: model(input_ids, attention_mask=...) -> logits."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids, attention_mask=None):
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def _pairs(inputs) -> list[tuple[Row, Row]]:
    """The fixture's rows [c0, c1, r0, r1] as train_dpo's unpadded (input_ids, completion mask) pairs."""
    rows = [(ids[:n].tolist(), mask[:n].tolist()) for ids, mask, n in
            zip(inputs["input_ids"], inputs["completion_mask"], inputs["attention_mask"].sum(-1), strict=True)]
    return list(zip(rows[:2], rows[2:], strict=True))


def _bound(cls, me, *names):
    """Give the stand-in `self` the trainer methods that the method under test calls on it."""
    for name in names:
        setattr(me, name, inspect.getattr_static(cls, name).__get__(me, cls))
    return me


def _trl_paired(cls, policy, batch, **attrs):
    """TRL 1.16 `ORPOTrainer` / `CPOTrainer.get_batch_loss_metrics` (one forward on chosen + rejected) on a
    pair_batch laid out as their collators do: chosen_/rejected_ input_ids, attention_mask, labels (-100 off the
    completion)."""
    b = batch["input_ids"].shape[0] // 2
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    trl_batch = {f"{side}_{key}": value[rows] for side, rows in (("chosen", slice(0, b)), ("rejected", slice(b, None)))
                 for key, value in (("input_ids", batch["input_ids"]), ("attention_mask", batch["attention_mask"]),
                                    ("labels", labels))}
    me = _bound(cls, trainer_self(is_encoder_decoder=False, padding_value=0, pad_token_id=0, **attrs),
                "concatenated_inputs", "get_batch_logps", "concatenated_forward",
                "odds_ratio_loss" if cls is ORPOTrainer else "cpo_loss")
    with torch.no_grad():
        return cls.get_batch_loss_metrics(me, policy, trl_batch)[0]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_rpo_alpha_equals_trl_dpo_trainer_with_sft_term(pair_batch, loss_type):
    """Reference: TRL 1.16 `DPOTrainer._compute_loss` with loss_type=[loss, 'sft'], loss_weights=[1, alpha], TRL
    1.16's spelling of RPO (older TRL's `rpo_alpha`): 'sft' = NLL per chosen completion token pooled over the batch.
    Ours: `train_dpo.step_loss(rpo_alpha=alpha)` with `reference_logps` on the same tiny Llamas. fp32 defaults."""
    policy, ref, inputs, _ = pair_batch
    pairs = _pairs(inputs)
    batch = collate(pairs, 0)
    ref_logps = reference_logps(Logits(ref), pairs, 0)
    with torch.no_grad():
        ours, _, nll = step_loss(loss_type, Logits(policy), batch, ref_logps, 0.5, rpo_alpha=0.7)
        plain, _, _ = step_loss(loss_type, Logits(policy), batch, ref_logps, 0.5)
    torch.testing.assert_close(ours, _trl_dpo(policy, ref, batch, [loss_type, "sft"], 0.5, loss_weights=(1.0, 0.7)))
    torch.testing.assert_close(ours - plain, 0.7 * nll)


def test_rpo_alpha_with_simpo_equals_trl_cpo_simpo(pair_batch):
    """Reference: TRL 1.16 `CPOTrainer.get_batch_loss_metrics` with loss_type='simpo', cpo_alpha=alpha (CPO-SimPO:
    SimPO + alpha NLL of the chosen completion, the same batch-pooled NLL as DPO's 'sft'). fp32 defaults."""
    policy, _, inputs, _ = pair_batch
    batch = collate(_pairs(inputs), 0)
    with torch.no_grad():
        ours, _, _ = step_loss("simpo", Logits(policy), batch, torch.zeros(2, 2), 2.0, gamma=0.8, rpo_alpha=0.4)
    trl = _trl_paired(CPOTrainer, policy, batch, loss_type="simpo", beta=2.0, simpo_gamma=0.8, label_smoothing=0.0,
                      alpha=0.0, cpo_alpha=0.4)
    torch.testing.assert_close(ours, trl)


def test_orpo_step_equals_trl_orpo_trainer(pair_batch):
    """Reference: TRL 1.16 `ORPOTrainer.get_batch_loss_metrics`: NLL of the chosen rows over every non-pad token
    (prompt included, as TRL and the ORPO authors' code) minus the mean of `odds_ratio_loss` on mean completion-token
    log-probs. Ours: `train_dpo.step_loss('orpo')`, no reference. fp32 defaults."""
    policy, _, inputs, _ = pair_batch
    batch = collate(_pairs(inputs), 0)
    with torch.no_grad():
        ours, margin, _ = step_loss("orpo", Logits(policy), batch, None, 0.25)
    torch.testing.assert_close(ours, _trl_paired(ORPOTrainer, policy, batch, beta=0.25))
    assert margin.shape == (2,)


def test_kto_step_equals_trl_kto_trainer_on_unpaired_pairs(pair_batch):
    """Reference: TRL 1.16's KTOTrainer fed paired data: unpaired by `trl.data_utils.unpair_preference_dataset`
    (chosen rows desirable, then rejected rows undesirable), KL completions rotated by +1 within the batch (the rule of
    `KTOTrainer._prepare_dataset`, restated here: it is a closure there), collated by
    `DataCollatorForUnpairedPreference`, loss by `KTOTrainer._compute_loss` running the reference itself. Ours:
    `kl_batch` + `step_loss('kto')` with the reference's log-probs cached beforehand. fp32 defaults."""
    ref, policy, inputs, _ = pair_batch  # roles swapped: on these rows that makes the KL estimate > 0 (not clamped)
    pairs = [(c, (c[0][:4] + r[0][4:], r[1])) for c, r in _pairs(inputs)]  # both sides after the same 4-token prompt
    paired = {"prompt": [c[0][:4] for c, _ in pairs], "chosen": [c[0][4:] for c, _ in pairs],
              "rejected": [r[0][4:] for _, r in pairs]}
    unpaired = unpair_preference_dataset(Dataset.from_dict(paired)).to_list()
    completions = [ex["completion"] for ex in unpaired]
    examples = [{"prompt_ids": ex["prompt"], "completion_ids": ex["completion"], "KL_completion_ids": kl,
                 "label": ex["label"]} for ex, kl in zip(unpaired, [completions[-1]] + completions[:-1], strict=True)]
    trl_batch = DataCollatorForUnpairedPreference(pad_token_id=0)(examples)
    me = trainer_self(model=policy, ref_model=ref, beta=0.3, loss_type="kto", precompute_ref_logps=False,
                      calculate_KL=True, desirable_weight=1.0, undesirable_weight=1.0, args=ARGS)
    _bound(KTOTrainer, me, "_compute_kl_logps")

    batch, kl = collate(pairs, 0), kl_batch(pairs, 0)
    for key in ("input_ids", "attention_mask", "completion_mask"):  # the same rows, the same mismatched rows
        assert torch.equal(batch[key], trl_batch[key]) and torch.equal(kl[key], trl_batch[f"KL_{key}"])
    with torch.no_grad():
        ref_logps, ref_kl = reference_logps(Logits(ref), pairs, 0), pair_logps(Logits(ref), kl)[0]
        assert kto_kl_estimate(pair_logps(Logits(policy), kl)[0], ref_kl) > 0  # the KL term is active
        ours, _, _ = step_loss("kto", Logits(policy), batch, ref_logps, 0.3, kl=kl, ref_kl=ref_kl)
        trl = KTOTrainer._compute_loss(me, policy, trl_batch, return_outputs=False)
    torch.testing.assert_close(ours, trl)


def test_dpo_closed_form():
    """Closed form: equal policy and reference -> Delta = 0 -> DPO loss log 2, hinge 1, IPO 1/(4 beta^2)."""
    x = torch.tensor([-5.0, -7.0])
    torch.testing.assert_close(dpo_loss(x, x - 1, x, x - 1), torch.full((2,), 0.6931471805599453))
    torch.testing.assert_close(hinge_loss(x, x - 1, x, x - 1), torch.ones(2))
    torch.testing.assert_close(ipo_loss(x, x - 1, x, x - 1, torch.ones(2), torch.ones(2), beta=0.5), torch.ones(2))
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_dpo_loss(x, x, x, x, label_smoothing=0.5)
