"""experiments/goodhart.py and its formulas: the reader's gold, ensembles, the unbiased best-of-n
estimator, Gao's fits, peaks and falls; reading an earlier run's comparisons; collecting and
drawing."""
import itertools, json, math, os, pathlib, sys

import pytest
import torch
from transformers import GPT2ForSequenceClassification

import common as c
import experiments.goodhart as g
import reward_model as rmod
from conftest import run_experiments, run_script
from experiments.loop import Config, key_of
from lib.results import write_jsonl


def test_repetition_by_hand():
    # great movie ! great movie ! → 5 word pairs, 3 distinct
    assert c.repetition("Great movie! great movie!") == pytest.approx(0.4)
    assert c.repetition("a fine film") == 0.0
    assert c.repetition("one") == 0.0 and c.repetition("") == 0.0
    assert c.repetition("so so so so", n=1) == pytest.approx(0.75)


def test_reader_reward_by_hand():
    texts = ["Great movie! great movie!", "a fine film", "Bad, bad, bad."]
    vader = torch.tensor([0.8, 0.2, -0.6])
    # (1 + r*)(1 − rep-2) − 1: bad , bad , bad . → 5 pairs, 3 distinct
    assert c.reader_reward(texts, vader).tolist() == pytest.approx(
        [1.8 * 0.6 - 1, 0.2, 0.4 * 0.6 - 1])
    assert c.reader_reward(texts).tolist() == pytest.approx(
        c.reader_reward(texts, c.gold_reward(texts)).tolist())
    assert set(c.GOLDS) == {"vader", "reader"}


def test_ensemble_reward_mean_and_min():
    r = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 1.0]])
    assert c.ensemble_reward(r, "mean").tolist() == [2.0, 1.0]
    assert c.ensemble_reward(r, "min").tolist() == [1.0, 0.0]
    # UWO: mean − ½·unbiased variance; both columns have variance ((−1)² + 1² + 0²) / 2 = 1
    assert c.ensemble_reward(r, "uwo").tolist() == [1.5, 0.5]


def test_ensemble_directory_is_read_as_its_members_combined(tmp_path):
    torch.manual_seed(0)
    models = []
    for i in range(2):
        c.build_model(512, 1, 2, 32, 64).save_pretrained(tmp_path / f"m{i}")
        rm = c.load_model(str(tmp_path / f"m{i}"), GPT2ForSequenceClassification, num_labels=1)
        rm.score.weight.data.normal_()
        rm.save_pretrained(tmp_path / f"m{i}")
        models.append(rm.eval())
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps(
        {"members": ["../m0", "../m1"], "combine": "min"}))
    ens = c.load_reward_model(str(tmp_path / "ens"), models[0])
    tokens = torch.randint(0, 500, (3, 6))
    with torch.no_grad():
        expected = torch.minimum(c.reward(models[0], tokens), c.reward(models[1], tokens))
        assert torch.allclose(c.reward(ens, tokens), expected)
    # each member in units of its sd on π_SFT's samples, when ensemble.json gives them
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps(
        {"members": ["../m0", "../m1"], "combine": "min", "sd": [2.0, 0.5]}))
    ens = c.load_reward_model(str(tmp_path / "ens"), models[0])
    with torch.no_grad():
        expected = torch.minimum(c.reward(models[0], tokens) / 2, c.reward(models[1], tokens) * 2)
        assert torch.allclose(c.reward(ens, tokens), expected)


def test_best_of_n_by_hand():
    gold, proxy = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[3.0, 1.0, 2.0]])
    # subsets of 2: {0,1} → 0 (proxy 3), {0,2} → 0, {1,2} → 2 (proxy 2): mean 2/3
    assert g.best_of_n_gold(gold, proxy, 2).item() == pytest.approx(2 / 3)
    assert g.best_of_n_gold(gold, proxy, 1).item() == pytest.approx(1.0)  # the mean
    assert g.best_of_n_gold(gold, proxy, 3).item() == pytest.approx(0.0)  # the proxy's top
    assert g.best_of_n_weights(3, 2).tolist() == pytest.approx([0, 1 / 3, 2 / 3])


def test_best_of_n_matches_enumeration_of_every_subset():
    torch.manual_seed(0)
    gold, proxy = torch.randn(3, 7), torch.randn(3, 7)
    for n in range(1, 8):
        brute = torch.tensor([[float(torch.mean(torch.stack(
            [gold[p, list(s)][proxy[p, list(s)].argmax()] for s in itertools.combinations(
                range(7), n)])))] for p in range(3)]).flatten()
        assert torch.allclose(g.best_of_n_gold(gold, proxy, n).float(), brute, atol=1e-6), n
    w = g.best_of_n_weights(512, 37)
    assert w.sum().item() == pytest.approx(1.0) and (w >= 0).all()


def test_bon_kl_bound():
    assert g.bon_kl_bound(1) == 0.0
    assert g.bon_kl_bound(2) == pytest.approx(math.log(2) - 0.5)


@pytest.mark.parametrize("form", ["rl", "bon"])
def test_gao_fits_recover_their_coefficients(form):
    d = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 5.0], dtype=torch.float64)  # d = 0: π_SFT, n = 1
    R = d * (0.4 - 0.1 * (torch.log(d.clamp(min=1e-12)) if form == "rl" else d))
    assert g.fit_gao(d, R, form) == pytest.approx((0.4, 0.1), abs=1e-9)
    assert torch.allclose(g.gao_curve(d, 0.4, 0.1, form), R.double())
    other = "bon" if form == "rl" else "rl"
    assert g.fit_gao(d, R, other) != pytest.approx((0.4, 0.1), abs=1e-3)


def test_peak_and_fall_in_standard_errors():
    pts = [{"gold": 0.2, "gold_se": 0.03, "kl": 0}, {"gold": 0.8, "gold_se": 0.04, "kl": 9},
           {"gold": 0.5, "gold_se": 0.02, "kl": 25}]
    s = g.peak_and_fall(pts)
    assert s["peak"]["kl"] == 9 and s["final"]["kl"] == 25
    assert s["rise_se"] == pytest.approx(0.6 / 0.05)
    assert s["fall_se"] == pytest.approx(0.3 / math.sqrt(0.04 ** 2 + 0.02 ** 2))


def test_read_comparisons_gives_back_the_written_groups(tmp_path):
    enc = c.tokenizer(512)
    groups = [{"prompt_ids": [5, 6], "responses": [[7], [8, 9], [10], [11, 12]],
               "gold": [0.1, 0.9, -0.5, 0.3], "ranking": [1, 3, 0, 2]},
              {"prompt_ids": [13], "responses": [[14], [15], [16], [17]],
               "gold": [0.0, 0.2, 0.4, 0.6], "ranking": [3, 2, 1, 0]}]
    path = str(tmp_path / "p.jsonl")
    c.write_preferences(path, enc, rmod.preference_records({"train": groups,
                                                            "valid": groups[:1]}))
    read = lambda split, n, k: c.read_comparisons(path, split, n, k,  # noqa: E731
                                                  rmod.ranking_pairs(range(k)))
    back = read("train", 2, 4)
    for a, b in zip(groups, back):  # the same pairs, responses now in ranking order
        pairs = lambda grp: [(grp["responses"][w], grp["responses"][l])  # noqa: E731
                             for w, l in rmod.ranking_pairs(grp["ranking"])]
        assert pairs(a) == pairs(b) and b["prompt_ids"] == a["prompt_ids"]
        assert b["gold"] == [a["gold"][i] for i in a["ranking"]]
    assert len(read("valid", 1, 4)) == 1
    with pytest.raises(SystemExit):
        read("train", 3, 4)  # only 2 prompts there
    with pytest.raises(SystemExit):
        read("train", 2, 3)  # written with k = 4
    with pytest.raises(SystemExit):
        c.read_comparisons(path + ".missing", "train", 1, 4, rmod.ranking_pairs(range(4)))


def test_bad_gold_name_is_one_line(tmp_path):
    proc = run_script("reward_model.py", "--out", tmp_path, "--gold", "human", check=False)
    assert proc.returncode == 2 and "--gold" in proc.stderr and "reader" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_collect_and_draw_from_the_data_alone(tmp_path):
    """Every run's points come from its root, once per gold; the redraw draws the figures and
    the table from goodhart.jsonl and best_of_n.jsonl alone."""
    out = str(tmp_path)
    vader = ("vader-rm-10000", os.path.join(out, "reward_model"))
    for (name, rm_dir), n in zip([*g.proxies(out), vader], [*g.PROXY_PROMPTS, 10000]):
        rm_dir = tmp_path / rm_dir
        rm_dir.mkdir(parents=True, exist_ok=True)
        (rm_dir / "report.json").write_text(json.dumps(
            {"k": 4, "val_acc_gold": 0.5 + n / 1e5, "gold": "reader"}))
        (rm_dir / "run.json").write_text(json.dumps({"config": {"n_prompts": n}}))
    g.link(out, "vader", ["reward_model", "preferences.jsonl"])
    for how in ("mean", "min"):
        (tmp_path / f"goodhart/reader-ensemble-{how}/reward_model").mkdir(parents=True)
        (tmp_path / f"goodhart/reader-ensemble-{how}/reward_model/ensemble.json").write_text(
            json.dumps({"members": ["../../reader-rm-1000/reward_model"] * 3, "combine": how}))
    cfg = Config(out=out, quick=True)
    for i, (script, label, flags, root) in enumerate(g.runs(cfg)):
        key = key_of(script, flags, root)
        rows = [{"run": key, "algo": "rloo", "variant": "rm", "beta": 0.005, "step": s,
                 "final": s == 3, "kl": [0, 4, 16, 36][s], "gold": [0.2, 0.6, 0.9, 0.95][s],
                 "gold_se": 0.01, "gold_reader": [0.2, 0.5, 0.7, 0.4][s] + i / 100,
                 "gold_reader_se": 0.02, "proxy": float(s), "proxy_se": 0.1} for s in range(4)]
        c.replace_rows(f"{root}/results.jsonl", None, rows)
        if i == len(g.PROXY_PROMPTS) - 1:  # the core's runs alone: the mitigation's not run yet
            assert len(g.collect(cfg)) == 2 * 4 * len(g.PROXY_PROMPTS)
    rows = g.collect(cfg)
    assert len(rows) == 2 * 4 * len(g.runs(cfg))
    weakest = [r for r in rows if r["run"] == g.runs(cfg)[0].label]
    assert [r["gold"] for r in weakest if r["gold_fn"] == "reader"] == [0.2, 0.5, 0.7, 0.4]
    assert {r["proxy_pairs"] for r in weakest} == {1500}
    ensemble = [r for r in rows if r["proxy_name"] == "reader-ensemble-min"]
    assert {(r["ensemble"], r["proxy_acc_gold"], r["proxy_pairs"]) for r in ensemble} == {
        (3, None, 6000)}
    d = lambda n: math.sqrt(g.bon_kl_bound(n))  # noqa: E731
    bon = [{"n": n, "kl_bound": g.bon_kl_bound(n), "gold": 0.2 + d(n) * (0.3 - 0.05 * d(n)),
            "gold_se": 0.01, "gold_fn": fn, "proxy": 0.0, "proxy_name": p}
           for n in (1, 2, 4, 8, 16) for fn in ("vader", "reader") for p in ("a", "b")]
    write_jsonl(f"{out}/best_of_n.jsonl", bon)
    proc = run_experiments("--out", tmp_path, "--redraw")
    for name in ("goodhart.png", "mitigation.png", "best_of_n.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    table = (tmp_path / "goodhart_data.md").read_text()
    # the weakest proxy's reader gold: 0.2 → peak 0.7 at KL 16 → 0.4; rise 0.5/√(2·0.02²)
    assert (f"| {g.runs(cfg)[0].label} | 1500 | 0.502 | reader | 0.200 | 0.700 (16.0) |"
            " 0.400 (36.0) | 17.7 SE | 10.6 SE |") in table, proc.stdout
    assert f"| {g.runs(cfg)[0].label} | 0.517 | 0.600 | 0.640 | 0.490 |" in table
    # best-of-n: gold = 0.2 + d(0.3 − 0.05 d) exactly, so its fit gives α 0.3, β 0.05
    assert "| b | reader | 0.200 | 0.515 (16) | 0.515 | 0.300, 0.050 | 9.0 |" in table, table


def test_the_two_experiments_split_the_runs_and_the_proxies(tmp_path, monkeypatch):
    """goodhart: the labelled set, the four proxies and their runs, and none of out/reward_model;
    goodhart-mitigation: the 6k proxy's three seeds, the ensembles, the β and VADER runs."""
    out = str(tmp_path)
    cfg = Config(out=out, quick=True)
    core, mit = (g.runs(cfg, e) for e in ("goodhart", "goodhart-mitigation"))
    assert core + mit == g.runs(cfg) and len(core) == len(g.PROXY_PROMPTS)
    assert [r.root for r in core] == [g.root(out, g.proxy_name(n)) for n in g.PROXY_PROMPTS]
    built, flags = [], {}

    def require(d, script, args, built_from):
        built.append(os.path.relpath(d, out))
        flags[built[-1]] = dict(zip(args[::2], args[1::2]))
    monkeypatch.setattr(g.c, "require", require)
    monkeypatch.setattr(g.c, "record_id", lambda d: "id" if "rm-10000" in d else None)
    g.build_proxies(out, "goodhart")
    assert built == [f"goodhart/{g.proxy_name(n)}/reward_model"
                     for n in (10000, 250, 1000, 3000)]
    # every proxy learns the experiment's gold's labels: the labelled set ranked by the reader's
    # gold, the smaller proxies trained on its first n prompts
    labels = f"{out}/goodhart/{g.proxy_name(g.LABELS)}/preferences.jsonl"
    for n, d in zip((10000, 250, 1000, 3000), built):
        assert flags[d]["--gold"] == "reader" and flags[d]["--n-prompts"] == str(n)
        assert n == g.LABELS or flags[d]["--preferences"] == labels
    assert not os.path.lexists(f"{out}/goodhart/vader")
    built.clear()
    g.build_proxies(out, "goodhart-mitigation")
    assert built == [f"goodhart/{g.proxy_name(n, s)}/reward_model"
                     for n, s in ((10000, 0), (1000, 0), (1000, 1), (1000, 2))]
    # the ensemble's members: one labelled set, each its own seed (else three copies of one)
    assert [flags[d]["--seed"] for d in built[1:]] == ["0", "1", "2"]
    assert os.path.islink(f"{out}/goodhart/vader/reward_model")
    spec = json.loads((tmp_path / "goodhart/reader-ensemble-min/reward_model/ensemble.json")
                      .read_text())
    assert spec["combine"] == "min" and len(spec["members"]) == 3


def test_an_ensemble_is_written_whole_and_only_when_a_member_changed(tmp_path, monkeypatch):
    """ensemble.json and its record (naming the members' records) are written once; the same
    members leave them as they are; a rebuilt member rewrites both. sds go in when given."""
    ids = {"a": "1", "b": "2"}
    monkeypatch.setattr(g.c, "record_id", lambda d: ids.get(os.path.basename(d), "sft"))
    members, rm_dir = [str(tmp_path / m) for m in "ab"], str(tmp_path / "ens")
    g.write_ensemble(rm_dir, str(tmp_path), members, "uwo", "test", sd=[0.5, 2.0])
    spec = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert spec == {"members": ["../a", "../b"], "combine": "uwo", "sd": [0.5, 2.0]}
    record = json.loads((tmp_path / "ens" / "run.json").read_text())
    assert record["members"] == ["1", "2"] and record["inputs"] == {"sft": "sft"}
    assert sorted(os.listdir(rm_dir)) == ["ensemble.json", "run.json"]  # no .tmp left
    monkeypatch.setattr(g.c, "read_record", lambda d: json.loads(
        (tmp_path / "ens" / "run.json").read_text()))
    g.write_ensemble(rm_dir, str(tmp_path), members, "min", "test")  # same members: kept
    assert json.loads((tmp_path / "ens" / "run.json").read_text())["id"] == record["id"]
    ids["b"] = "3"
    g.write_ensemble(rm_dir, str(tmp_path), members, "min", "test")  # b rebuilt: rewritten
    assert json.loads((tmp_path / "ens" / "ensemble.json").read_text()) == {
        "members": ["../a", "../b"], "combine": "min"}
    assert json.loads((tmp_path / "ens" / "run.json").read_text())["members"] == ["1", "3"]


def test_pair_agreement_by_hand():
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "bench"))
    import reader_gold
    a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 3.0, 2.0]])
    assert reader_gold.pair_agreement(a, b) == pytest.approx(2 / 3)  # (1, 2) is ordered apart
    assert reader_gold.pair_agreement(a, torch.tensor([[1.0, 1.0, 2.0]])) == 1.0  # a tie: left out


def test_a_proxy_is_rebuilt_exactly_when_its_labels_were(tmp_path, monkeypatch):
    """Each proxy keeps the id of the labelled set it learnt from: unchanged labels keep it, a
    rebuilt labelled set makes it unfinished (rebuilt by require)."""
    out = str(tmp_path)

    def record(d, run_id):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump({"id": run_id, "inputs": {}}, f)
    rm = {n: os.path.join(g.root(out, g.proxy_name(n)), "reward_model") for n in g.PROXY_PROMPTS}
    for n, d in rm.items():
        record(d, "labels-1" if n == g.LABELS else f"proxy-{n}")
        if n != g.LABELS:
            pathlib.Path(g.root(out, g.proxy_name(n)), "labels").write_text("labels-1")
    finished_when_required = {}
    monkeypatch.setattr(g.c, "require", lambda d, *a, **k: finished_when_required.__setitem__(
        d, os.path.exists(os.path.join(d, "run.json"))))
    g.build_proxies(out, "goodhart")
    assert all(finished_when_required.values())  # the same labels: every proxy kept
    record(rm[g.LABELS], "labels-2")  # the labelled set was rebuilt
    g.build_proxies(out, "goodhart")
    assert {n: finished_when_required[d] for n, d in rm.items()} == {
        n: n == g.LABELS for n in g.PROXY_PROMPTS}  # every proxy of it rebuilt
    assert all(pathlib.Path(g.root(out, g.proxy_name(n)), "labels").read_text() == "labels-2"
               for n in g.PROXY_PROMPTS if n != g.LABELS)


def test_best_of_n_ranks_by_the_proxy(pipeline, tmp_path, monkeypatch):
    """best-of-n picks each prompt's sample by the proxy's score and reports the gold of that
    pick: every estimate is ranked by the proxy's scores, never by a gold."""
    from conftest import linked_out, spy
    out = linked_out(tmp_path, pipeline)
    monkeypatch.setattr(g, "BON_N", 4)
    monkeypatch.setattr(g, "BON_PROMPTS", 3)
    monkeypatch.setattr(g, "proxies", lambda out: [("reader-rm-250",
                                                    str(pipeline / "reward_model"))])
    estimates = spy(monkeypatch, g, "best_of_n_gold")
    g.run_best_of_n(str(out), torch.device("cpu"))
    proxy = estimates[0]["proxy"]
    assert torch.equal(estimates[0]["gold"], proxy)  # the proxy's own best, first
    assert all(torch.equal(call["proxy"], proxy) for call in estimates)  # all ranked by it
    golds = [call["gold"] for call in estimates if not torch.equal(call["gold"], proxy)]
    assert len(golds) == 2 * len({call["n"] for call in estimates})  # VADER's, the reader's
    rows = c.read_jsonl(out / "best_of_n.jsonl")
    assert {r["gold_fn"] for r in rows} == {"vader", "reader"} and rows[0]["n"] == 1
