"""Loss baselines: closed-form cases."""

import math

import numpy as np
import pytest

from llmlab.eval.baselines import uniform_loss, unigram_loss


def test_uniform_is_ln_v():
    assert uniform_loss(260) == pytest.approx(math.log(260))


def test_unigram_closed_form():
    """train = [0, 0, 0, 1], V = 3, alpha = 1: p = (4/7, 2/7, 1/7); val = [0, 1] -> -(ln 4/7 + ln 2/7) / 2."""
    got = unigram_loss(np.array([0, 0, 0, 1]), np.array([0, 1]), vocab_size=3)
    assert got == pytest.approx(-(math.log(4 / 7) + math.log(2 / 7)) / 2, rel=1e-12)


def test_unigram_of_uniform_text_is_near_ln_v():
    """Every token equally frequent: the unigram model is the uniform one."""
    tokens = np.tile(np.arange(50), 100)
    assert unigram_loss(tokens, tokens, 50) == pytest.approx(math.log(50), rel=1e-9)
