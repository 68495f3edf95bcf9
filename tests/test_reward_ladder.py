"""bench/reward_ladder.py: its readouts and its bag-of-words control, by hand."""
import os, sys

import pytest
import torch
from transformers import GPT2ForSequenceClassification

import common as c
import reward_model as rmod
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import reward_ladder as ladder  # noqa: E402


@pytest.fixture
def rm(tmp_path):
    torch.manual_seed(0)
    c.build_model(512, 1, 2, 32, 64).save_pretrained(tmp_path)
    rm = c.load_model(str(tmp_path), GPT2ForSequenceClassification, num_labels=1).eval()
    with torch.no_grad():
        rm.score.weight.normal_()
    return rm


def test_mean_readout_averages_the_head_over_real_response_tokens(rm):
    pad = rm.config.pad_token_id
    tokens, mask = c.collate([[5, 6], [7]], [[8, 9, 10], [11]], pad)  # the second row padded
    got = ladder.mean_readout(rm, tokens, mask)
    with torch.no_grad():  # by hand: each row alone, unpadded, head on its response positions
        h = rm.transformer(torch.tensor([[5, 6, 8, 9, 10]])).last_hidden_state[0]
        first = rm.score(h[2:]).mean()
        h = rm.transformer(torch.tensor([[7, 11]])).last_hidden_state[0]
        second = rm.score(h[1:]).mean()
    torch.testing.assert_close(got, torch.stack([first, second]), atol=1e-4, rtol=0)
    last = rmod.last_token(rm, tokens, mask)  # the default reads only the last real token
    torch.testing.assert_close(last[1], second, atol=1e-4, rtol=0)  # one token: the same


def test_bag_of_words_counts_tokens():
    groups = [{"responses": [[3, 3, 1], [2]]}, {"responses": [[], [0, 2, 2]]}]
    X = ladder.bag_of_words(groups, 4)
    assert X.shape == (2, 2, 4)
    assert X[0, 0].tolist() == [0, 1, 0, 2] and X[0, 1].tolist() == [0, 0, 1, 0]
    assert X[1, 0].tolist() == [0, 0, 0, 0] and X[1, 1].tolist() == [1, 0, 2, 0]


def test_bag_of_words_learns_the_valence_of_a_token():
    """Token 1 is good, token 2 bad: the fitted weights order them after a few steps."""
    groups = [{"prompt_ids": [0], "responses": [[1, 3], [2, 3]], "gold": [0.5, -0.5],
               "ranking": [0, 1]} for _ in range(8)]
    score = ladder.fit_bag_of_words(groups, 4, steps=50)
    rewards = score(groups)
    assert (rewards[:, 0] > rewards[:, 1]).all()
    assert rmod.pair_metrics(rewards, groups)["val_acc_gold"] == 1.0


def test_trunk_shape_parses_and_refuses():
    assert rmod.trunk_shape("8x384") == (8, 384)
    for bad in ("8", "8x100", "0x96", "axb"):
        with pytest.raises(SystemExit):
            rmod.trunk_shape(bad)
