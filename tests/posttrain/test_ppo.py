import torch

from llmlab.posttrain import gae, kl_penalized_rewards, masked_whiten, ppo_policy_loss, ppo_value_loss


def _gae_by_definition(rewards, values, mask, gamma, lam):
    """Slow reference: A_t = sum_{l>=0} (gamma lam)^l delta_{t+l} over each sequence's real tokens, V = 0 after the
    last one (Schulman et al. 2016, Eq. 16), written as the explicit sum."""
    adv = torch.zeros_like(rewards)
    for i in range(rewards.size(0)):
        n = int(mask[i].sum())
        v = torch.cat([values[i, :n], torch.zeros(1, dtype=values.dtype)])
        delta = [rewards[i, t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[i, t] = sum((gamma * lam) ** k * delta[t + k] for k in range(n - t))
    return adv


def test_gae_equals_definition_with_padding():
    """Reference: the explicit-sum definition above (no TRL: PPO is absent from the TRL 1.16 wheel); float64,
    rtol 1e-12. Padding holds garbage values and rewards that must not leak in."""
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g,
                                                                                         dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.float64)
    mask[1, 5:] = 0
    mask[2, 1:] = 0
    rewards = rewards * mask
    for gamma, lam in ((1.0, 0.95), (0.9, 0.8), (0.99, 1.0)):
        adv, ret = gae(rewards, values, mask, gamma, lam)
        expected = _gae_by_definition(rewards, values, mask, gamma, lam)
        torch.testing.assert_close(adv, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ret, (expected + values) * mask, rtol=1e-12, atol=1e-12)


def test_gae_closed_forms():
    """Closed form: lam=1, gamma=1 -> A_t = (sum of rewards from t) - V_t (Monte Carlo); lam=0 -> A_t = delta_t."""
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.5, 0.4]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.5, 0.6]]))
    torch.testing.assert_close(ret, torch.ones(1, 3))
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=0.0)
    torch.testing.assert_close(adv, torch.tensor([[0.3, -0.1, 0.6]]))


def test_kl_penalized_rewards_closed_form():
    """Closed form: r_t = -beta (logp_t - ref_t), plus the score on the last real token only (Ziegler et al. 2019)."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = kl_penalized_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-0.1, -1.0, 0.0]]))


def test_ppo_policy_loss_clipping_cases():
    """Closed form, eps = 0.2: ratio 1.5, A=+1 -> -1.2 (clipped); A=-1 -> 1.5 (unclipped); ratio 0.5, A=+1 -> -0.5;
    A=-1 -> 0.8 (clipped). The masked token must not count."""
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 3.0]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss = ppo_policy_loss(ratio.log(), torch.zeros_like(ratio), adv, mask, clip_eps=0.2)
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 1.5 - 0.5 + 0.8) / 4))


def test_ppo_value_loss_clipping_cases():
    """Closed form, eps = 0.2: V moved 0 -> 1 with return 1: clipped 0.2 -> max(0, 0.64) = 0.64; V 0 -> 0.1, R = 1:
    max(0.81, 0.81) = 0.81; loss = 0.5 * mean."""
    values, old, returns = torch.tensor([[1.0, 0.1]]), torch.zeros(1, 2), torch.ones(1, 2)
    loss = ppo_value_loss(values, old, returns, torch.ones(1, 2), clip_eps=0.2)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (0.64 + 0.81) / 2))


def test_masked_whiten():
    """Masked positions are ignored: whitened real tokens have mean 0 and unbiased std 1."""
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -100.0, -100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    white = masked_whiten(x, mask)[mask.bool()]
    torch.testing.assert_close(white.mean(), torch.tensor(0.0))
    torch.testing.assert_close(white.std(), torch.tensor(1.0), rtol=1e-6, atol=1e-6)
