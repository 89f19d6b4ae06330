import inspect
import textwrap

import pytest
import torch
from trl.trainer import grpo_trainer
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

from llmlab.posttrain import group_advantages, grpo_loss, k3_kl
from tests.posttrain.trl_stub import trainer_self


def _trl_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str) -> torch.Tensor:
    """Execute TRL 1.16's own reward-normalization block, cut from `GRPOTrainer._generate_and_score_completions`
    (single reward function, multi_objective_aggregation='sum_then_normalize'), on the given rewards."""
    src = textwrap.dedent(inspect.getsource(GRPOTrainer._generate_and_score_completions))
    start = src.index('if self.multi_objective_aggregation == "sum_then_normalize":')
    end = src.index('elif self.multi_objective_aggregation == "normalize_then_sum":')
    block = textwrap.dedent(src[start:end].split("\n", 1)[1])  # the body of the `if`
    me = trainer_self(reward_weights=torch.ones(1), scale_rewards=scale_rewards)
    scope = dict(torch=torch, nanstd=nanstd, self=me, device="cpu", num_generations=num_generations,
                 rewards_per_func=rewards.unsqueeze(1), unscorable_mask=torch.zeros_like(rewards, dtype=torch.bool))
    exec(block, vars(grpo_trainer) | scope, scope)
    return scope["advantages"]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trl_normalization(scale):
    """Reference: TRL 1.16 GRPOTrainer reward normalization (source block executed on our rewards), including a group
    whose rewards are all equal (std 0 -> advantage 0). fp32 defaults."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, -1.0, 2.0, 0.0])
    torch.testing.assert_close(group_advantages(rewards, 4, scale), _trl_advantages(rewards, 4, scale))


def _tensors(seed=0, b=4, t=6):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(b, t, generator=g) * 3
    old = logps + torch.randn(b, t, generator=g) * 0.3  # ratios well outside [0.8, 1.2]: clipping is exercised
    ref = logps + torch.randn(b, t, generator=g) * 0.5
    mask = torch.ones(b, t)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    return logps, old, ref, torch.tensor([1.2, -0.7, 0.3, -1.5]), mask


@pytest.mark.parametrize("loss_type,beta", [("grpo", 0.04), ("grpo", 0.0), ("dapo", 0.0), ("dapo", 0.04)])
def test_grpo_loss_equals_trl_compute_loss(loss_type, beta):
    """Reference: TRL 1.16 `GRPOTrainer._compute_loss` on identical per-token logps, old logps, ref logps, advantages
    and completion mask (its model forward replaced by those logps); loss_type='grpo', beta=0.04 is the paper's form,
    'dapo', beta=0 TRL's default. Also the gradient w.r.t. the logps. fp32 defaults."""
    logps, old, ref, adv, mask = _tensors()
    trl_logps = logps.clone().requires_grad_()
    b, t = mask.shape
    me = trainer_self(
        beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level="token", use_vllm=False,
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        args=type("Args", (), {"use_bias_correction_kl": False, "delta": None, "steps_per_generation": 1})(),
        _get_per_token_logps_and_entropies=lambda *a, **k: (trl_logps, torch.zeros(b, t), None))
    inputs = dict(prompt_ids=torch.zeros(b, 3, dtype=torch.long), prompt_mask=torch.ones(b, 3),
                  completion_ids=torch.zeros(b, t, dtype=torch.long), completion_mask=mask, advantages=adv,
                  old_per_token_logps=old, ref_per_token_logps=ref, num_items_in_batch=mask.sum())
    trl = GRPOTrainer._compute_loss(me, None, inputs)
    trl.backward()
    our_logps = logps.clone().requires_grad_()
    ours = grpo_loss(our_logps, old, ref, adv, mask, beta=beta, clip_eps_low=0.2, clip_eps_high=0.28,
                     loss_type=loss_type)
    ours.backward()
    torch.testing.assert_close(ours, trl.detach())
    torch.testing.assert_close(our_logps.grad, trl_logps.grad)


def test_k3_closed_form():
    """Closed form: k3 = e^x - x - 1 with x = ref - logp; 0 when equal, e - 2 at x = 1; its mean under pi is KL."""
    torch.testing.assert_close(k3_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0])),
                               torch.tensor([0.0, torch.e - 2]))
    p, q = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    expected_k3 = (p * k3_kl(p.log(), q.log())).sum()
    torch.testing.assert_close(expected_k3, (p * (p / q).log()).sum())


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="group_size=4"):
        group_advantages(torch.zeros(6), 4)
