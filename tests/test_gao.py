"""experiments/gao.py (Goodhart with a learned gold, docs/goodhart_design.md): the gold's data,
training step, freezing and scoring; τ's bisection; the relabelled labels and their subsets; the
pooling of seeds, the pass rule and the fits, each against values worked by hand."""
import hashlib, json, math, os

import pytest
import torch
from transformers import GPT2ForSequenceClassification

import common as c
import experiments.gao as g
import reward_model as rmod
from experiments.loop import Config, key_of
from lib.results import write_jsonl


def tiny_classifier(path=None, seed=0):
    torch.manual_seed(seed)
    config = c.build_model(512, 1, 2, 32, 64).config
    config.num_labels = 1
    model = GPT2ForSequenceClassification(config)
    if path is not None:
        c.save_model(model, str(path))
    return model


def test_labelled_reviews_hold_out_the_evaluation_reviews():
    train, test = g.labelled_reviews()
    held_out = set(c.imdb()["valid"]) | set(c.imdb()["eval"])
    assert len(test) == 2000 and {t for _, t, _ in test} == held_out
    assert not held_out & {t for _, t, _ in train}
    assert sum(s == "rotten_tomatoes" for s, _, _ in train) == 8530
    assert {y for _, _, y in train + test} == {0, 1}


def test_gold_reads_the_first_and_last_tokens_of_a_review():
    enc = c.tokenizer(512)
    long = " ".join(f"word{i}" for i in range(100))
    ids = enc.encode_ordinary(long)
    assert g.gold_inputs(enc, "imdb", long) == [ids[:48], ids[-48:]]
    assert g.gold_inputs(enc, "rotten_tomatoes", long) == [ids[:48]]  # a sentence: once
    assert g.gold_inputs(enc, "imdb", long, ends=False) == [ids[:48]]
    assert g.gold_inputs(enc, "imdb", "a fine film") == [enc.encode_ordinary("a fine film")]


def test_gold_step_is_binary_cross_entropy_on_the_logit():
    model = tiny_classifier()
    torch.nn.init.zeros_(model.score.weight)  # logit 0: −log σ(0) = log 2 whatever the label
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens, labels = torch.randint(0, 500, (8, 10)), torch.tensor([1, 0] * 4)
    assert g.gold_step(model, opt, tokens, labels) == pytest.approx(math.log(2), abs=1e-6)
    for _ in range(30):
        loss = g.gold_step(model, opt, tokens, labels)
    assert loss < 0.3  # it learns the batch
    assert g.gold_accuracy(model, [(t.tolist(), y.item()) for t, y in zip(tokens, labels)],
                           513) == 1.0


def test_sha256_and_a_gold_other_than_the_committed_one_is_refused(tmp_path, monkeypatch):
    (tmp_path / "x").write_bytes(b"abc")
    assert g.sha256(tmp_path / "x") == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    (tmp_path / "gold").mkdir()
    (tmp_path / "gold" / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(g, "TAU", 0.1)
    monkeypatch.setattr(g, "GOLD_SHA256", hashlib.sha256(b"weights").hexdigest())
    g.check_frozen(str(tmp_path))  # the committed one: accepted
    monkeypatch.setattr(g, "GOLD_SHA256", hashlib.sha256(b"other").hexdigest())
    with pytest.raises(SystemExit):
        g.check_frozen(str(tmp_path))
    monkeypatch.setattr(g, "GOLD_SHA256", None)
    with pytest.raises(SystemExit):
        g.check_frozen(str(tmp_path))


def test_learned_gold_is_the_classifier_logit_on_the_first_48_tokens(tmp_path):
    model = tiny_classifier(tmp_path / "gold").eval()
    (tmp_path / "gold" / "report.json").write_text("{}")
    gold = c.gold_fn("learned", str(tmp_path))
    enc = c.tokenizer(512)
    texts = ["a fine film", " ".join(f"w{i}" for i in range(80))]
    rows = [enc.encode_ordinary(t)[:48] for t in texts]
    with torch.no_grad():
        expected = [c.reward(model, torch.tensor([r])).item() for r in rows]
    assert gold(texts).tolist() == pytest.approx(expected, abs=1e-5)
    assert c.gold_fn("vader", str(tmp_path)) is c.gold_reward
    with pytest.raises(SystemExit):
        c.gold_fn("learned", str(tmp_path / "nowhere"))
    # §10: a held-out proxy in <out>/heldout rides along, reading the whole text
    assert not hasattr(gold, "heldout")
    proxy = tiny_classifier(tmp_path / "heldout").eval()
    (tmp_path / "heldout" / "report.json").write_text("{}")
    gold = c.gold_fn("learned", str(tmp_path))
    texts = ["a fine film", " ".join(f"w{i}" for i in range(20))]  # (within its 64 positions)
    with torch.no_grad():
        whole = [c.reward(proxy, torch.tensor([enc.encode_ordinary(t)])).item() for t in texts]
        expected = [c.reward(model, torch.tensor([enc.encode_ordinary(t)[:48]])).item()
                    for t in texts]
    assert len(enc.encode_ordinary(texts[1])) > 48  # so that reading it all differs
    assert gold.heldout(texts).tolist() == pytest.approx(whole, abs=1e-5)
    assert gold(texts).tolist() == pytest.approx(expected, abs=1e-5)  # the gold unchanged


def test_evaluate_by_a_learned_gold_also_reports_vader():
    model, enc = c.build_model(512, 1, 2, 32, 64).eval(), c.tokenizer(512)
    prompts = c.prompts("eval", enc, 8)
    const = lambda texts: torch.full((len(texts),), 2.5)  # noqa: E731
    ev = c.evaluate(model, model, enc, prompts, 6, gold=const)
    assert ev["gold"] == 2.5 and ev["gold_se"] == 0.0 and "gold_vader" in ev
    ev = c.evaluate(model, model, enc, prompts, 6)  # VADER itself: no second copy
    assert "gold_vader" not in ev
    const.heldout = lambda texts: torch.arange(len(texts), dtype=torch.float)  # 0 … 7
    ev = c.evaluate(model, model, enc, prompts, 6, gold=const)
    assert ev["heldout"] == 3.5 and ev["heldout_se"] == pytest.approx(2.44949 / math.sqrt(8))
    assert "heldout" not in c.evaluate(model, model, enc, prompts, 6)


def test_labeler_agreement_by_hand():
    gold = torch.tensor([[0.0, 1.0, 1.0, 3.0]], dtype=torch.float64)
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # pairs: |Δ| = 1, 1, 3, 0 (a tie: ½), 2, 2; τ = 1
    expected = (2 * s(1) + s(3) + 0.5 + 2 * s(2)) / 6
    assert g.labeler_agreement(gold, 1.0) == pytest.approx(expected)
    assert expected == pytest.approx(0.77938, abs=1e-5)


def test_tau_bisection_finds_the_agreement():
    # two responses 1 apart: agreement σ(1/τ); σ(2) at τ = ½
    assert g.tau_for_agreement(torch.tensor([[0.0, 1.0]], dtype=torch.float64),
                               1 / (1 + math.exp(-2))) == pytest.approx(0.5, rel=1e-6)
    gold = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tau = g.tau_for_agreement(gold, 0.92)
    assert g.labeler_agreement(gold, tau) == pytest.approx(0.92, abs=1e-6)


def test_relabel_ranks_the_same_responses_by_the_gold_and_subsets_are_prefixes(tmp_path):
    enc = c.tokenizer(512)
    groups = [{"prompt_ids": [5 + i], "responses": [[7 + i], [8, 9], [10], [11, 12, 13]],
               "gold": [0.0] * 4, "ranking": [0, 1, 2, 3]} for i in range(3)]
    src, dst = str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")
    c.write_preferences(src, enc, rmod.preference_records({"train": groups,
                                                           "valid": groups[:1]}))
    length = lambda texts: torch.tensor([float(len(t)) for t in texts])  # noqa: E731
    g.relabel(src, dst, length, 0.0, enc, n=(3, 1))  # τ = 0: the gold's own order
    order = rmod.ranking_pairs(range(4))
    back = c.read_comparisons(dst, "train", 3, 4, order)
    for a, b in zip(groups, back):
        texts = [c.decode(enc, b["prompt_ids"] + r) for r in b["responses"]]
        assert b["gold"] == sorted(b["gold"], reverse=True)  # best first
        assert b["gold"] == [float(len(t)) for t in texts]
        assert sorted(map(tuple, b["responses"])) == sorted(map(tuple, a["responses"]))
    assert c.read_comparisons(dst, "train", 2, 4, order) == back[:2]  # a count: the first prompts


def test_pool_seeds_by_hand():
    curves = [[{"step": 0, "gold": 0.1, "kl": 0.0, "proxy": 1.0},
               {"step": 10, "gold": v, "kl": k, "proxy": 2.0}]
              for v, k in ((0.1, 3.0), (0.2, 4.0), (0.3, 5.0))]
    pooled = g.pool_seeds(curves)
    assert pooled[0]["gold_se"] == pytest.approx(0.0) and pooled[1]["step"] == 10
    assert pooled[1]["gold"] == pytest.approx(0.2) and pooled[1]["kl"] == pytest.approx(4.0)
    assert pooled[1]["gold_se"] == pytest.approx(0.1 / math.sqrt(3))  # sd 0.1 over 3 seeds


def test_the_pass_rule_by_hand():
    pts = lambda ses: [{"step": i, "gold": v, "gold_se": se, "kl": i}  # noqa: E731
                       for i, (v, se) in enumerate(zip((0.0, 0.5, 0.3), ses))]
    f = g.fall(pts((0.01, 0.02, 0.03)))
    assert f["peak"]["step"] == 1 and f["fall"] == pytest.approx(0.2)
    assert f["fall_se"] == pytest.approx(math.sqrt(0.02 ** 2 + 0.03 ** 2))
    assert f["in_ses"] == pytest.approx(5.547, abs=1e-3) and f["falls"]
    f = g.fall(pts((0.01, 0.05, 0.05)))  # 0.2 / 0.0707 = 2.83 SE: below 3.2
    assert f["in_ses"] == pytest.approx(2.828, abs=1e-3) and not f["falls"]
    assert not g.fall(pts((0.01, 0.02, 0.03))[:2])["falls"]  # the peak is the last point


def test_fit_drawn_only_where_it_fits():
    d = torch.linspace(0.5, 6, 12)
    R = g.gao_curve(d, 0.3, 0.1, "rl")
    a, b, r2, ok = g.fit_quality(d, R, "rl")
    assert (a, b) == pytest.approx((0.3, 0.1), abs=1e-6) and r2 == pytest.approx(1.0) and ok
    bent = R.clone()
    bent[-4:] -= torch.tensor([0.1, 0.2, 0.3, 0.4])  # a fall the form cannot follow
    assert not g.fit_quality(d, bent, "rl")[3]


def test_runs_are_rloo_against_each_proxy_scored_by_the_learned_gold(tmp_path):
    cfg = Config(out=str(tmp_path))
    runs = g.runs(cfg, "gao")
    assert len(runs) == 12 and {r.script for r in runs} == {"rloo.py"}
    flags = dict(zip(runs[4].flags[::2], runs[4].flags[1::2]))
    assert flags == {"--beta": "0.005", "--steps": "150", "--max-kl": "500", "--seed": "1",
                     "--gold": "learned"}
    assert runs[4].root.endswith("proxy-1000-seed1")
    assert "gold=learned" in key_of(runs[4].script, runs[4].flags, runs[4].root)
    assert g.runs(cfg, "gao-gold") == []


def test_far_runs_are_rloo_at_beta_0_against_the_smallest_and_largest_proxies(tmp_path):
    """The design's §7: β 0, 300 iterations, evaluations every 20, the 250- and 10,000-prompt
    proxies with seeds 0–2, each run in its own directory (the proxy's holds gao's run)."""
    cfg = Config(out=str(tmp_path))
    runs = g.runs(cfg, "gao-far")
    assert [os.path.basename(r.root) for r in runs] == [
        f"far-proxy-{n}-seed{s}" for n in (250, 10000) for s in (0, 1, 2)]
    flags = dict(zip(runs[5].flags[::2], runs[5].flags[1::2]))
    assert flags == {"--beta": "0.0", "--steps": "300", "--eval-every": "20", "--max-kl": "500",
                     "--seed": "2", "--gold": "learned"}
    key = key_of(runs[5].script, runs[5].flags, runs[5].root)
    assert "beta=0.0" in key and "steps=300" in key and "gold=learned" in key
    assert key != key_of(g.runs(cfg, "gao")[11].script, g.runs(cfg, "gao")[11].flags, runs[5].root)


def far_rows(falls_at):
    """gao_far.jsonl rows of two counts × 3 seeds: a curve that rises and ends 1 below its peak
    (every seed alike but for ±0.01) for the counts in falls_at, one that ends at its peak else."""
    rows = []
    for n in (250, 10000):
        for s, jitter in zip((0, 1, 2), (-0.01, 0.0, 0.01)):
            rows += [{"proxy_prompts": n, "proxy_seed": s, "step": i, "kl": 10.0 * i,
                      "gold": v + jitter, "proxy": float(i)}
                     for i, v in enumerate((0.0, 2.0, 1.0 if n in falls_at else 3.0))]
    return rows


def test_mitigations_act_on_the_smallest_count_whose_far_curve_falls(tmp_path):
    cfg = Config(out=str(tmp_path))
    assert g.mitigated_count(cfg.out) == (None, None) and g.runs(cfg, "gao-mitigation") == []
    with pytest.raises(SystemExit):  # one line: nothing to mitigate yet
        g.build_mitigations(cfg.out, "cpu")
    # §8: the smallest count that falls; §9: none falls, so the smallest, exploratory
    for falls_at, count in (((10000,), (10000, False)), ((), (250, True)),
                            ((250, 10000), (250, False))):
        write_jsonl(str(tmp_path / "gao_far.jsonl"), far_rows(falls_at))
        assert g.mitigated_count(cfg.out) == count
    runs = g.runs(cfg, "gao-mitigation")  # seed by seed: mean, WCO, UWO at β 0, then β 0.05
    assert [os.path.basename(r.root) for r in runs[:4]] == [
        "ensemble-mean-250-seed0", "ensemble-min-250-seed0", "ensemble-uwo-250-seed0",
        "beta0.05-proxy-250-seed0"] and len(runs) == 12
    flags = [dict(zip(r.flags[::2], r.flags[1::2])) for r in (runs[5], runs[7])]
    assert flags[0]["--beta"] == "0.0" and flags[0]["--steps"] == "300"
    assert flags[1]["--beta"] == "0.05" and flags[1]["--steps"] == "150"
    assert flags[0]["--seed"] == flags[1]["--seed"] == "1"
    assert [g.member_seed(s, j) for s in (0, 2) for j in (0, 1, 2)] == [10, 11, 12, 16, 17, 18]


def test_bootstrap_draws_whole_prompts_with_replacement(tmp_path):
    """3 prompts of k = 3 (3 pairs each) and 2 validation rows: n = 2 draws from the first 2
    prompts, each drawn prompt's 3 pairs kept together and in order, the validation kept."""
    rows = [{"split": "train", "prompt": p, "pair": q} for p in "abc" for q in range(3)]
    rows += [{"split": "valid", "prompt": "v", "pair": q} for q in range(2)]
    write_jsonl(str(tmp_path / "labels.jsonl"), rows)
    path = str(tmp_path / "boot.jsonl")
    picks = g.bootstrap(str(tmp_path / "labels.jsonl"), path, 2, seed=3, k=3)
    assert picks == torch.randint(2, (2,), generator=torch.Generator().manual_seed(3)).tolist()
    out = c.read_jsonl(path)
    assert [(r["prompt"], r["pair"]) for r in out] == [
        ("ab"[i], q) for i in picks for q in range(3)] + [("v", 0), ("v", 1)]
    draws = {tuple(g.bootstrap(str(tmp_path / "labels.jsonl"), path, 2, seed=s, k=3))
             for s in range(20)}
    assert (0, 0) in draws and (1, 1) in draws  # with replacement: a prompt can come twice


def test_early_stopping_keeps_the_best_held_out_evaluation_by_hand():
    """§10 on evaluations at 0, 1, 2, 4, 8, 20, 40, …: only the grid (0, 20, 40, …) counts, so
    the dip at 1, 2, 4, 8 stops nothing. Held-out 0.0, 1.0, 3.0 (iteration 40), then 2.0, 2.5,
    3.0 (not above 3.0: three in a row) → iteration 40 is kept; rising to the end → the last."""
    steps = [0, 1, 2, 4, 8, 20, 40, 60, 80, 100, 120]
    held = [0.0, -1.0, -1.0, -1.0, -1.0, 1.0, 3.0, 2.0, 2.5, 3.0, 9.0]
    assert g.early_stop(steps, held) == 6
    assert g.early_stop(steps[:10], held[:9] + [3.5]) == 9  # beaten at the third: goes on
    assert g.early_stop([0, 20, 40], [0.0, 1.0, 2.0]) == 2
    assert g.early_stop([0, 20, 40, 60, 80], [5.0, 1.0, 1.0, 1.0, 9.0]) == 0
    # paired: differences 1, 2, 3 → mean 2, sd 1, se 1/√3 = 0.577; 2 > 1.155: above
    d, se, above = g.paired([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    assert (d, se) == pytest.approx((2.0, 1 / math.sqrt(3))) and above
    assert not g.paired([1.0, 3.0, 2.0], [0.0, 0.0, 2.0])[2]  # 1, 3, 0: mean 1.333, se 0.882


def test_early_stopping_reruns_the_baseline_with_a_held_out_proxy(tmp_path, monkeypatch):
    """gao-stop: nothing before gao-far; then gao-far's flags, seed by seed, in its own
    directory; the held-out proxy learns the next n prompts (seed 20 + s), linked as heldout."""
    cfg = Config(out=str(tmp_path))
    assert g.runs(cfg, "gao-stop") == []
    with pytest.raises(SystemExit):
        g.build_heldout(cfg.out)
    write_jsonl(str(tmp_path / "gao_far.jsonl"), far_rows(()))
    runs, far = g.runs(cfg, "gao-stop"), g.runs(cfg, "gao-far")
    assert [r.flags for r in runs] == [r.flags for r in far[:3]]
    assert [os.path.basename(r.root) for r in runs] == [f"stop-proxy-250-seed{s}"
                                                        for s in (0, 1, 2)]
    rows = [{"split": "train", "prompt": i, "pair": q} for i in range(500) for q in range(6)]
    (tmp_path / "gao").mkdir()
    write_jsonl(str(tmp_path / "gao" / "preferences.jsonl"), rows)
    trained = []
    monkeypatch.setattr(g.c, "require", lambda d, script, args, built_from: trained.append(
        dict(zip(args[::2], args[1::2]))))
    g.build_heldout(cfg.out)
    assert [(t["--seed"], t["--n-prompts"]) for t in trained] == [
        ("20", "250"), ("21", "250"), ("22", "250")]
    held = c.read_jsonl(trained[2]["--preferences"])
    assert [r["prompt"] for r in held[::6]] == list(range(250, 500))  # disjoint from 0 … 249
    link = tmp_path / "gao" / "stop-proxy-250-seed2" / "heldout"
    assert os.path.realpath(link) == str(tmp_path / "gao" / "heldout-250-seed22" / "reward_model")


def test_the_early_stopping_table_by_hand():
    """3 seeds at iterations 0, 20, 40, 60, 80, 100: held-out peaks at 20 for every seed, so 20
    is kept (gold 1, 2, 3); the seed-mean gold peaks at 40 (2, 3, 4) and ends at 0, 0, 0. Kept
    − last: 2.000 ± 0.577 (paired), above 2 se; kept − peak: −1 each, se 0, not above."""
    rows = []
    for s in (0, 1, 2):
        for i, (g_, h) in enumerate(zip((0, 1 + s, 2 + s, 1, 0.5, 0), (0, 2, 1, 1, 1, 1))):
            rows.append({"proxy_prompts": 250, "proxy_seed": s, "step": 20 * i, "kl": 10.0 * i,
                         "gold": float(g_), "heldout": float(h), "proxy": float(i),
                         "heldout_acc_gold": 0.6, "exploratory": True, "pipeline": "p"})
    far = [{k: v for k, v in r.items() if k != "heldout"} for r in rows]
    text = "\n".join(g.stop_lines(far, rows))
    assert "| 2 | 0.600 | 20 | 10.0 | 3.000 | 4.000 (40) | 4.000 | 0.000 | 0.000 |" in text
    assert "Kept gold, seed mean: 2.000 ± 0.577." in text
    assert "baseline's last: +2.000 ± 0.577 (paired), above it" in text
    assert "(iteration 40): -1.000 ± 0.000 (paired), not above" in text


def test_gold_at_equal_kl_and_the_help_rule_by_hand():
    """Seeds' gold where KL first reaches 5: 0.5 and 1.5 (linear between evaluations), mean 1,
    sd √0.5, se ½; at KL 15 one seed never gets there. Helps: Δ 0.8 with se √(0.3² + 0.4²) = 0.5
    is not above 2 se; Δ 1.1 is."""
    curves = [[{"kl": 0.0, "gold": 0.0}, {"kl": 10.0, "gold": 1.0}],
              [{"kl": 0.0, "gold": 0.0}, {"kl": 20.0, "gold": 6.0}]]
    assert g.at_kl(curves, 5.0) == pytest.approx((1.0, 0.5, 2))
    assert g.at_kl(curves, 15.0) == (None, None, 1)
    assert g.helps(1.0, 0.3, 0.2, 0.4) == pytest.approx((0.8, 0.5, False))
    assert g.helps(1.3, 0.3, 0.2, 0.4)[2]
