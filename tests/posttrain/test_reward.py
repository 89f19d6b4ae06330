import torch
from trl.trainer.reward_trainer import RewardTrainer

from llmlab import Transformer, TransformerConfig
from llmlab.posttrain import RewardModel, bradley_terry_loss, pairwise_accuracy
from tests.posttrain.trl_stub import trainer_self


def _trl_reward_loss(chosen, rejected, margin=None):
    """TRL 1.16 `RewardTrainer.compute_loss` with a model that returns the given rewards as (2B, 1) logits."""
    inputs = dict(input_ids=torch.zeros(2 * len(chosen), 3, dtype=torch.long),
                  attention_mask=torch.ones(2 * len(chosen), 3, dtype=torch.long))
    if margin is not None:
        inputs["margin"] = margin
    logits = torch.cat([chosen, rejected]).unsqueeze(-1)
    me = trainer_self(args=type("Args", (), {"center_rewards_coefficient": None})())
    return RewardTrainer.compute_loss(me, lambda **kw: type("Out", (), {"logits": logits})(), inputs)


def test_bradley_terry_equals_trl_reward_trainer():
    """Reference: TRL 1.16 `RewardTrainer.compute_loss` on identical rewards, with and without margins; fp32."""
    g = torch.Generator().manual_seed(0)
    chosen, rejected, margin = (torch.randn(8, generator=g) * 2 for _ in range(3))
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), _trl_reward_loss(chosen, rejected))
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, margin), _trl_reward_loss(chosen, rejected, margin))
    assert pairwise_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == 0.5


def test_reward_model_scores_last_real_token_and_learns():
    """The reward of a right-padded sequence equals that of the unpadded one; 30 Adam steps separate a toy pair set."""
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16)
    rm = RewardModel.from_lm(Transformer(cfg)).eval()
    ids = torch.randint(0, 32, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    torch.testing.assert_close(rm(padded, mask), rm(ids))
    chosen, rejected = torch.randint(0, 16, (8, 6)), torch.randint(16, 32, (8, 6))  # "good" = low token ids
    rm.train()
    opt = torch.optim.Adam(rm.parameters(), lr=3e-3)
    for _ in range(30):
        loss = bradley_terry_loss(rm(chosen), rm(rejected))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3
    assert pairwise_accuracy(rm(chosen), rm(rejected)) == 1.0
