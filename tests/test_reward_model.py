"""reward_model.py: Bradley–Terry loss, ranking pairs, the labeler, and an end-to-end run."""
import json, math

import pytest
import torch
from transformers import GPT2ForSequenceClassification

import common as c
import reward_model as rmod
from conftest import run_script


def test_bt_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    hand = [-math.log(1 / (1 + math.exp(-d))) for d in (1.0, 0.0, -2.0)]
    torch.testing.assert_close(rmod.bt_loss(chosen, rejected), torch.tensor(sum(hand) / 3))
    assert abs(rmod.bt_loss(torch.zeros(1), torch.zeros(1)).item() - math.log(2)) < 1e-6


def test_k4_ranking_gives_6_ordered_pairs():
    ranking = [2, 0, 3, 1]  # best first
    pairs = rmod.ranking_pairs(ranking)
    assert len(pairs) == 6 and len(set(pairs)) == 6
    for w, l in pairs:
        assert ranking.index(w) < ranking.index(l)  # chosen always ranked above rejected
    assert rmod.ranking_pairs([1, 0]) == [(1, 0)]


def test_noiseless_labeler_sorts():
    assert rmod.rank([0.1, 0.9, -0.5, 0.3], tau=0).tolist() == [1, 3, 0, 2]
    assert c.labeler_scores([0.1, 0.9], tau=0).tolist() == [0.1, 0.9]


def test_labeler_scores_are_gold_over_tau_plus_gumbel_noise():
    gen = torch.Generator().manual_seed(0)
    noise = c.labeler_scores(torch.zeros(200000), 1.0, gen)
    # the standard Gumbel distribution: mean = Euler's γ, variance π²/6
    assert abs(noise.mean().item() - 0.5772) < 0.01 and abs(noise.var().item() - 1.6449) < 0.04
    gen.manual_seed(0)
    torch.testing.assert_close(c.labeler_scores(torch.full((200000,), 0.3), 0.1, gen), noise + 3)


def test_labeler_follows_bradley_terry():
    """P(y1 ranked above y2) = σ((r1 − r2)/τ), also inside a ranking of K = 4."""
    gen = torch.Generator().manual_seed(0)
    gold, tau, n = torch.tensor([0.3, 0.1, -0.2, 0.5]), 0.2, 20000
    above = torch.zeros(4, 4)
    for _ in range(n):
        r = rmod.rank(gold, tau, gen).tolist()
        for a in range(4):
            for b in range(a + 1, 4):
                above[r[a], r[b]] += 1
    for i, j in [(0, 1), (0, 2), (3, 0), (1, 2)]:
        expected = torch.sigmoid((gold[i] - gold[j]) / tau).item()
        assert abs(above[i, j].item() / n - expected) < 0.015, (i, j)


def test_pairs_and_accuracy_against_gold():
    groups = [{"gold": [0.9, -0.5, 0.0], "ranking": [1, 0, 2]}]  # a noisy ranking
    rewards = torch.tensor([[1.0, 0.0, 0.5]])
    chosen, rejected, gold_w, gold_l, strict = rmod.pair_stats(rewards, groups)
    assert chosen.tolist() == [0.0, 0.0, 1.0] and rejected.tolist() == [1.0, 0.5, 0.5]
    assert gold_w.tolist() == pytest.approx([-0.5, -0.5, 0.9]) and strict.all()


@pytest.mark.learning
def test_reward_model_end_to_end(pipeline):
    out = pipeline
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "training.png",
                 "rm_vs_gold.png", "report.json"):
        assert (out / "reward_model" / name).stat().st_size > 0, name
    records = [json.loads(line) for line in open(out / "preferences.jsonl")]
    assert len(records) == (600 + 50) * 6
    assert {r["split"] for r in records} == {"train", "valid"}
    for key in ("prompt", "chosen", "rejected", "chosen_gold", "rejected_gold", "chosen_ids"):
        assert key in records[0]
    report = json.load(open(out / "reward_model" / "report.json"))
    assert 0.5 < report["labeler_acc_gold"] <= 1
    # normalised to mean 0 on the SFT samples of the validation prompts: exactly there (up to
    # bf16 rounding), and within sampling noise on fresh SFT samples of held-out prompts, whose
    # mean differs from the validation one by se = se_sft·√(1 + n_sft/n_val); 4 se allowed
    assert abs(report["proxy_mean_val"]) < 0.02
    se = report["proxy_se_sft"] * math.sqrt(1 + 32 / report["n_val_responses"])
    assert abs(report["proxy_mean_sft"]) < 4 * se, report
    rm = c.load_model(str(out / "reward_model"), GPT2ForSequenceClassification)
    assert rm.score.weight.shape == (1, rm.config.n_embd)
    rows = [json.loads(line) for line in open(out / "reward_model" / "metrics.jsonl")]
    first, last = rows[:20], rows[-20:]  # it fits its training pairs (4 epochs)
    assert sum(r["loss"] for r in last) / 20 < sum(r["loss"] for r in first) / 20 - 0.1
    # not asserted: held-out accuracy against the gold order. This tiny RM's is 0.47–0.71 over
    # seeds (50 validation prompts); the default RM's is reported in the README. That the RM
    # carries the gold signal is tested by the PPO and RLOO learning tests: gold rises there.


def test_bad_flags(tmp_path):
    for flags, word, code in ((["--k", 1], "--k", 1), (["--tau", -1], "--tau", 2),
                              (["--tau", "nan"], "--tau", 2),
                              (["--n-prompts", 0], "--n-prompts", 2)):
        proc = run_script("reward_model.py", "--out", tmp_path, *flags, check=False)
        assert proc.returncode == code and word in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_shift_rewards_moves_every_reward_by_exactly_m(tmp_path):
    torch.manual_seed(0)
    c.build_model(512, 1, 2, 32, 64).save_pretrained(tmp_path)
    rm = c.load_model(str(tmp_path), GPT2ForSequenceClassification, num_labels=1).eval()
    with torch.no_grad():
        rm.score.weight.normal_()  # a head that reads the hidden state (not all zeros)
        tokens = torch.randint(0, 512, (5, 7))
        before = c.reward(rm, tokens)
        rmod.shift_rewards(rm, 0.75)
        torch.testing.assert_close(c.reward(rm, tokens), before - 0.75, atol=1e-4, rtol=0)
