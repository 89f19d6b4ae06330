import pytest
import torch
from trl.experimental.cpo.cpo_trainer import CPOTrainer
from trl.experimental.orpo.orpo_trainer import ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.kto_trainer import KTOTrainer
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


def _trl_dpo(policy, ref, inputs, loss_type, beta, label_smoothing=0.0):
    me = trainer_self(model=policy, ref_model=ref, beta=beta, loss_types=[loss_type], loss_weights=[1.0],
                      label_smoothing=label_smoothing, ld_alpha=None, precompute_ref_logps=False,
                      f_divergence_type="reverse_kl", use_weighting=False,
                      args=type("Args", (), {"gradient_checkpointing_kwargs": None})())
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


def test_dpo_closed_form():
    """Closed form: equal policy and reference -> Delta = 0 -> DPO loss log 2, hinge 1, IPO 1/(4 beta^2)."""
    x = torch.tensor([-5.0, -7.0])
    torch.testing.assert_close(dpo_loss(x, x - 1, x, x - 1), torch.full((2,), 0.6931471805599453))
    torch.testing.assert_close(hinge_loss(x, x - 1, x, x - 1), torch.ones(2))
    torch.testing.assert_close(ipo_loss(x, x - 1, x, x - 1, torch.ones(2), torch.ones(2), beta=0.5), torch.ones(2))
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_dpo_loss(x, x, x, x, label_smoothing=0.5)
