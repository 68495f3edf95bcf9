"""bench/judges.py: ties among the labeler's pairs and judges' win rates, by hand."""
import os, sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import judges  # noqa: E402


def test_tied_pairs_counts_equal_gold_and_those_at_zero():
    records = [{"chosen_gold": w, "rejected_gold": l}
               for w, l in ((0.5, 0.1), (0.0, 0.0), (0.3, 0.3), (0.0, -0.2))]
    assert judges.tied_pairs(records) == (4, 2, 1)


def test_win_rate_counts_a_tie_half_with_its_standard_error():
    a, b = torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 0.0, 3.0, 1.0])
    w, se = judges.win_rate(a, b)  # wins 1, tie ½, loss 0, win 1: 2.5 of 4
    assert w == pytest.approx(0.625) and se == pytest.approx((0.625 * 0.375 / 4) ** 0.5)
