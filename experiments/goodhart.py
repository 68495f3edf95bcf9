"""experiments/goodhart.py: Goodhart's law as Gao et al. (2022) measured it.

The design, fixed before any run (docs/goodhart.md says why):
- gold: the reader's, golds.reader_reward: VADER's sentiment discounted by repetition,
  (1 + r*)(1 − rep-2) − 1. Every evaluation also reports VADER (common.evaluate), so each run is
  scored by both golds.
- labels: the labeler (Bradley–Terry, τ = 0.1) ranks 4 π_SFT samples of each of 10,000 training
  prompts by the reader's gold: one labelled set, `reward_model.py --gold reader`.
- proxies: reward models on its first 250, 1000, 3000 and 10,000 prompts (1.5k, 6k, 18k, 60k
  pairs), one epoch each, the SFT trunk (reward_model.py --preferences).
- RL: one long RLOO run against each proxy, β = 0.005, 150 iterations (--quick; 300 without),
  evaluated every 10 (and at 1, 2, 4, 8) on the 256 held-out prompts.
- best-of-n from π_SFT: N = 512 samples of each of 128 held-out prompts, the unbiased estimator
  (best_of_n_gold) for n = 1 … 512, for the four proxies, both golds.
Those are `python -m experiments --quick --experiment goodhart`. goodhart-mitigation adds, on
the 6k-pair proxy:
- what mitigates it: an ensemble of it and two more seeds of the same data (their mean, their
  minimum: Coste et al. 2024), and a 10× larger β (0.05);
- the labeler's own function: RLOO on VADER itself, and on the default VADER-labelled r_φ.
Both write <out>/goodhart.jsonl (one row per evaluation and gold, every Goodhart run there is),
the core also <out>/best_of_n.jsonl; then goodhart.png, best_of_n.png, mitigation.png and
goodhart_data.md.
"""
import json, math, os, time, uuid

import matplotlib.pyplot as plt
import torch

import common as c
import rloo
from experiments.loop import as_run, key_of
from experiments.points import gold_at_kl, in_ses, said_pipelines
from lib.results import write_jsonl

PROXY_PROMPTS = (250, 1000, 3000, 10000)  # the proxies' training prompts (6 pairs each)
LABELS = PROXY_PROMPTS[-1]  # the labelled set: the largest proxy's run samples and labels it
MITIGATE = 1000  # the proxy whose ensemble and larger β are measured
SEEDS = (0, 1, 2)  # the ensemble's members: one labelled set, three seeds
BETA, BIG_BETA = 0.005, 0.05
STEPS = {True: 150, False: 300}  # RLOO iterations: --quick or not
BON_N, BON_PROMPTS = 512, 128  # best-of-n: samples per prompt, held-out prompts
NAMES = ["goodhart", "goodhart-mitigation"]  # the experiments of this file
BON_MINUTES = 7.5  # best-of-n (--quick), 2-core Intel Xeon with AMX, bf16 (docs/goodhart.md#time)
GOODHART_ROW = c.has("run", "step", "kl", "gold", "gold_se", "gold_fn", "proxy_name", "proxy")
BON_ROW = c.has("n", "kl_bound", "gold", "gold_se", "gold_fn", "proxy_name", "proxy")


def same_text(path, text):
    """Whether the file at path holds text."""
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return f.read() == text


def root(out, name):
    return os.path.join(out, "goodhart", name)


def proxy_name(n, seed=0):
    return f"reader-rm-{n}" + (f"-seed{seed}" if seed else "")


def runs(cfg, name=None):
    """The Runs of the experiment (None: of both), each in its proxy's root."""
    long = ["--steps", STEPS[cfg.quick], "--max-kl", 500, *cfg.extra.split()]
    out = cfg.out
    core = [as_run("rloo.py", f"rloo β={BETA} vs {proxy_name(n)}", ["--beta", BETA, *long],
                   root(out, proxy_name(n))) for n in PROXY_PROMPTS]
    if name == "goodhart":
        return core
    mitigation = ([as_run("rloo.py", f"rloo β={BETA} vs ensemble-{how}", ["--beta", BETA, *long],
                          root(out, f"reader-ensemble-{how}")) for how in ("mean", "min")]
                  + [as_run("rloo.py", f"rloo β={BIG_BETA} vs {proxy_name(MITIGATE)}",
                            ["--beta", BIG_BETA, *long], root(out, proxy_name(MITIGATE)))]
                  + [as_run("rloo.py", f"rloo β={BETA} vs vader-rm-10000",
                            ["--beta", BETA, *long], root(out, "vader")),
                     as_run("rloo.py", f"rloo β={BETA} vs VADER itself",
                            ["--beta", BETA, "--reward", "gold", *long], root(out, "vader"))])
    return mitigation if name == "goodhart-mitigation" else core + mitigation


def prepare(cfg, name, device):
    """Before the runs: the labelled set and the experiment's proxies."""
    build_proxies(cfg.out, name)


def finish(cfg, name, device):
    """After the runs: goodhart.jsonl from every Goodhart run there is, and best-of-n unless it
    was scored by the proxies there now."""
    collect(cfg)
    if name == "goodhart" and not best_of_n_is_current(cfg.out):
        print(f"best-of-n: ≈ {BON_MINUTES} min on a 2-core bf16 CPU", flush=True)
        run_best_of_n(cfg.out, device)


def link_into(directory, out, stages):
    """directory (made if missing) with relative links to the stages of <out> it reads."""
    os.makedirs(directory, exist_ok=True)
    for stage in stages:
        path = os.path.join(directory, stage)
        if not os.path.lexists(path):
            os.symlink(os.path.relpath(os.path.join(out, stage), directory), path)


def link(out, name, stages):
    """<out>/goodhart/<name>/ with links to the stages of <out> it reads (e.g. sft)."""
    link_into(root(out, name), out, stages)


def build_proxies(out, experiment):
    """The labelled set and the experiment's proxies (built if missing, as any input stage);
    goodhart-mitigation: the ensembles, a directory with ensemble.json and a record, rewritten
    when a member changes."""
    labels = os.path.join(root(out, proxy_name(LABELS)), "preferences.jsonl")
    mitigation = experiment == "goodhart-mitigation"
    for n in sorted(PROXY_PROMPTS, key=lambda n: n != LABELS):  # the labelled set first
        if mitigation and n not in (LABELS, MITIGATE):
            continue
        for seed in (SEEDS if n == MITIGATE and mitigation else (0,)):
            name = proxy_name(n, seed)
            link(out, name, ["sft"])
            args = ["--out", root(out, name), "--n-prompts", n, "--gold", "reader"]
            rm_dir, mark = (os.path.join(root(out, name), f) for f in ("reward_model", "labels"))
            if n != LABELS:  # (built after the labelled set: its record id names the labels)
                labels_id = c.record_id(os.path.join(root(out, proxy_name(LABELS)), "reward_model"))
                args += ["--preferences", labels, "--seed", seed]
                if c.record_id(rm_dir) and not same_text(mark, labels_id):  # labels rebuilt
                    os.remove(os.path.join(rm_dir, "run.json"))
            c.require(rm_dir, "reward_model.py", list(map(str, args)),
                      built_from=[os.path.join(root(out, name), "sft")])
            if n != LABELS:
                with open(mark + ".tmp", "w") as f:  # the labels it was trained on
                    f.write(labels_id)
                os.replace(mark + ".tmp", mark)
    if not mitigation:
        return
    link(out, "vader", ["sft", "reward_model", "preferences.jsonl"])  # (the record lists it)
    members = [os.path.join(root(out, proxy_name(MITIGATE, s)), "reward_model") for s in SEEDS]
    for how in ("mean", "min"):
        name = f"reader-ensemble-{how}"
        link(out, name, ["sft"])
        write_ensemble(os.path.join(root(out, name), "reward_model"), out, members, how,
                       f"goodhart.py: ensemble ({how}) of {len(members)} seeds")


def write_ensemble(rm_dir, out, members, how, command, sd=None):
    """<rm_dir>: ensemble.json (its members, how they combine, their sds if given) and a record
    naming the members' records, each written to a temporary name and renamed (the record last,
    so never half there); rewritten only when a member changed."""
    ids = [c.record_id(m) for m in members]
    if (c.read_record(rm_dir) or {}).get("members") == ids:
        return
    os.makedirs(rm_dir, exist_ok=True)
    spec = {"members": [os.path.relpath(m, rm_dir) for m in members], "combine": how,
            **({"sd": sd} if sd is not None else {})}
    record = {"id": uuid.uuid4().hex, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": command, "inputs": {"sft": c.record_id(os.path.join(out, "sft"))},
              "members": ids}
    for name, obj in (("ensemble.json", spec), ("run.json", record)):
        with open(os.path.join(rm_dir, name + ".tmp"), "w") as f:
            json.dump(obj, f)
        os.replace(os.path.join(rm_dir, name + ".tmp"), os.path.join(rm_dir, name))


# ---------------------------------------------------------------- the formulas


def best_of_n_weights(N, n):
    """P(the best of n samples drawn without replacement from N is the one ranked j-th lowest),
    j = 1 … N: C(j−1, n−1) / C(N, n) (0 for j < n)."""
    assert 1 <= n <= N, (n, N)
    j = torch.arange(1, N + 1, dtype=torch.float64)
    def log_choose(a, b):  # log C(a, b), elementwise
        a, b = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b))
        return torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)
    log_w = log_choose(j - 1, n - 1) - log_choose(N, n)
    return torch.where(j >= n, log_w.exp(), torch.zeros((), dtype=torch.float64))


def best_of_n_gold(gold, proxy, n):
    """The unbiased best-of-n estimate from N ≥ n samples per prompt (gold, proxy: (prompts, N)):
    the expected gold of the proxy's pick among n of them, over every n-subset at once
    (order statistics): (prompts,)."""
    order = proxy.argsort(dim=1, stable=True)  # lowest proxy first
    return gold.gather(1, order).double() @ best_of_n_weights(gold.shape[1], n)


def bon_kl_bound(n):
    """KL(best-of-n ‖ π_SFT) ≤ log n − (n−1)/n (Stiennon et al. 2020): a bound only."""
    return math.log(n) - (n - 1) / n


def fit_gao(d, R, form):
    """Least squares of Gao et al.'s forms on d = √KL and R = gold − gold at d = 0: 'rl',
    R = d(a − b log d); 'bon', R = d(a − b d). Returns (a, b) (b is not the KL coefficient)."""
    d, R = torch.as_tensor(d, dtype=torch.float64), torch.as_tensor(R, dtype=torch.float64)
    second = -d * torch.log(d.clamp(min=1e-12)) if form == "rl" else -d * d
    X = torch.stack([d, second], 1)
    alpha, beta = torch.linalg.lstsq(X, R[:, None]).solution.flatten().tolist()
    return alpha, beta


def gao_curve(d, alpha, beta, form):
    """R(d) of fit_gao's form with its fitted (a, b): the dashes drawn over the points."""
    d = torch.as_tensor(d, dtype=torch.float64)
    return d * (alpha - beta * (torch.log(d.clamp(min=1e-12)) if form == "rl" else d))


def peak_and_fall(points):
    """A run's points (step order, each with gold, gold_se, kl) → the first point, the peak, the
    last, the rise to the peak and the fall after it in standard errors of the difference, as if
    the means were independent. They are not: every evaluation samples with the same noise, which
    correlates them and makes these counts conservative; the peak, the highest of about 20 noisy
    points, is biased upward, which inflates them. Read a count near 3 with both in mind."""
    first, last = points[0], points[-1]
    peak = max(points, key=lambda p: p["gold"])
    return {"start": first, "peak": peak, "final": last,
            "rise_se": in_ses(peak["gold"], peak["gold_se"], first["gold"], first["gold_se"]),
            "fall_se": in_ses(peak["gold"], peak["gold_se"], last["gold"], last["gold_se"])}


# ---------------------------------------------------------------- best-of-n, collecting, drawing


def proxies(out):
    """(name, reward-model directory) of every proxy best-of-n ranks by: the four label counts
    (not the ensembles: three more passes over N·prompts samples)."""
    return [(proxy_name(n), os.path.join(root(out, proxy_name(n)), "reward_model"))
            for n in PROXY_PROMPTS]


def proxy_info(rm_dir):
    """A proxy's size and quality from its report (an ensemble: its first member's labels)."""
    spec = os.path.join(rm_dir, "ensemble.json")
    if os.path.exists(spec):
        members = c.read_json(spec, members=list)["members"]
        info = proxy_info(os.path.join(rm_dir, members[0]))
        return {**info, "proxy_acc_gold": None, "ensemble": len(members)}
    with open(os.path.join(rm_dir, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(rm_dir, "run.json")) as f:
        prompts = json.load(f)["config"]["n_prompts"]
    return {"proxy_pairs": prompts * report["k"] * (report["k"] - 1) // 2,
            "proxy_acc_gold": report["val_acc_gold"], "label_gold": report.get("gold", "vader")}


@torch.no_grad()
def run_best_of_n(out, device):
    """N samples of each held-out prompt from π_SFT, scored by both golds and every proxy; the
    unbiased best-of-n estimate for n on a √2 grid up to N → <out>/best_of_n.jsonl."""
    sft = c.load_model(os.path.join(out, "sft")).to(device).eval()
    enc = c.tokenizer(sft.config.bpe_ranks)
    prompt_ids = [p for p in c.prompts("eval", enc, BON_PROMPTS) for _ in range(BON_N)]
    t0, tokens, golds, chunk = time.time(), [], {"vader": [], "reader": []}, 256
    with c.autocast(device):
        for j in range(0, len(prompt_ids), chunk):
            t, _ = c.sample(sft, prompt_ids[j:j + chunk], rloo.Config().max_new_tokens)
            texts = [c.decode(enc, row) for row in t.tolist()]
            golds["vader"].append(c.gold_reward(texts))
            golds["reader"].append(c.reader_reward(texts, golds["vader"][-1]))
            tokens.append(t.cpu())
            if j == 3 * chunk:
                print(f"best-of-n: sampling and scoring {len(prompt_ids):,} responses ≈"
                      f" {(time.time() - t0) / 4 / chunk * len(prompt_ids) / 60:.1f} min",
                      flush=True)
    golds = {k: torch.cat(v).view(BON_PROMPTS, BON_N) for k, v in golds.items()}
    ns = sorted({round(2 ** (i / 2)) for i in range(int(2 * math.log2(BON_N)) + 1)})
    rows = []
    for name, rm_dir in proxies(out):
        rm = c.load_reward_model(rm_dir, sft).to(device)
        with c.autocast(device):
            proxy = torch.cat([c.reward(rm, t.to(device)).cpu() for t in tokens])
        proxy = proxy.view(BON_PROMPTS, BON_N)
        info = {**proxy_info(rm_dir), "proxy_id": c.record_id(rm_dir),
                "pipeline": c.pipeline_at(out)}
        for n in ns:
            picked_proxy = best_of_n_gold(proxy, proxy, n)
            for fn, gold in golds.items():
                g = best_of_n_gold(gold, proxy, n)
                rows.append({"n": n, "kl_bound": bon_kl_bound(n), "gold": g.mean().item(),
                             "gold_se": g.std().item() / math.sqrt(BON_PROMPTS), "gold_fn": fn,
                             "proxy": picked_proxy.mean().item(), "proxy_name": name, **info})
        print(f"best-of-n vs {name}: best of {BON_N}: reader gold"
              f" {rows[-1]['gold']:.3f}, VADER {rows[-2]['gold']:.3f}", flush=True)
    write_jsonl(os.path.join(out, "best_of_n.jsonl"), rows)


def best_of_n_is_current(out):
    """best_of_n.jsonl exists and was scored by the proxies there now (their record ids)."""
    rows = c.read_jsonl(os.path.join(out, "best_of_n.jsonl"))
    done = {(r["proxy_name"], r.get("proxy_id")) for r in rows}
    return bool(rows) and all((name, c.record_id(d)) in done for name, d in proxies(out))


def collect(cfg):
    """<out>/goodhart.jsonl: every run's evaluations, each as two rows, one per gold (gold_fn),
    with its proxy's size and quality."""
    rows = []
    for r in runs(cfg):
        key = key_of(r.script, r.flags, r.root)
        points = [p for p in c.read_results(os.path.join(r.root, "results.jsonl"))
                  if p["run"] == key]
        if not points:  # (not run yet: e.g. the other experiment's)
            continue
        rm_dir = os.path.join(r.root, "reward_model")
        info = proxy_info(rm_dir) if "--reward" not in r.flags else \
            {"proxy_pairs": None, "label_gold": "vader"}
        for p in points:
            for fn, k in (("vader", "gold"), ("reader", "gold_reader")):
                rows.append({**p, "gold": p[k], "gold_se": p[f"{k}_se"], "gold_fn": fn,
                             "run": r.label, "proxy_name": os.path.basename(r.root), **info})
    write_jsonl(os.path.join(cfg.out, "goodhart.jsonl"), rows)
    sizes = runs(cfg)[:len(PROXY_PROMPTS)]
    write_peak_samples(cfg.out, [(by_run(rows, "reader").get(r.label, []),
                                  os.path.join(r.root, "rloo", "eval_samples.jsonl"))
                                 for r in (sizes[0], sizes[-1])])
    return rows


def write_peak_samples(out, runs_and_files):
    """<out>/goodhart_samples.md: the weakest and the largest proxy's runs at π_SFT, at their
    reader-gold peak and at their end: the first four held-out prompts' samples there."""
    lines = ["# Samples at the start, the peak and the end", "",
             "The first four held-out prompts at three evaluations of the runs against the weakest"
             " and the largest proxy (temperature 1; the evaluation's own sampling noise, the same"
             " at every step). Written by `python -m experiments --quick --experiment goodhart`,"
             f" {said_pipelines([p for points, _ in runs_and_files for p in points])}.", ""]
    for points, samples_file in runs_and_files:
        if not points or not os.path.exists(samples_file):
            continue
        by_step = {r["step"]: r["samples"] for r in c.read_jsonl(samples_file)}
        s = peak_and_fall(points)
        lines += [f"## `{points[0]['run']}`", ""]
        for name in ("start", "peak", "final"):
            p = s[name]
            lines += [f"### {name}: step {p['step']}, KL {p['kl']:.1f}, the reader's gold"
                      f" {p['gold']:.3f}", ""] + [f"- {t!r}" for t in by_step.get(p["step"], [])]
            lines.append("")
    with open(os.path.join(out, "goodhart_samples.md"), "w") as f:
        f.write("\n".join(lines))


def by_run(rows, fn):
    """{run label: its points in step order} of the rows scored with gold fn."""
    out = {}
    for r in sorted(rows, key=lambda r: r["step"]):
        if r["gold_fn"] == fn:
            out.setdefault(r["run"], []).append(r)
    return out


def sqrt_kl(points):
    return [math.sqrt(max(p["kl"], 0)) for p in points]


def legend(pts):
    """A run's legend: its label, and its proxy's labelled pairs and accuracy where it has one."""
    p, acc = pts[0], pts[0].get("proxy_acc_gold")
    return p["run"] + (f" ({p['proxy_pairs'] / 1000:g}k pairs" if p.get("proxy_pairs") else "") \
        + (f", acc {acc:.2f})" if acc is not None else ")" if p.get("proxy_pairs") else "")


COLOURS = {  # each proxy's colour in every figure: the label counts from dark to light
    **{proxy_name(n): plt.cm.viridis(i / (len(PROXY_PROMPTS) - 1) * 0.85)
       for i, n in enumerate(PROXY_PROMPTS)},
    "reader-ensemble-mean": "tab:red", "reader-ensemble-min": "tab:purple",
    "vader": "tab:orange", "VADER itself": "tab:brown"}


def colour_of(proxy):
    """A proxy's colour: COLOURS', or one of tab10's, the same for the same name."""
    return COLOURS.get(proxy) or plt.cm.tab10(sum(map(ord, proxy)) % 10)


def run_style(p):
    """A run's colour (its proxy's) and line style (dashed: the larger β), from its first row."""
    colour = colour_of("VADER itself" if p["run"].endswith("VADER itself") else p["proxy_name"])
    return colour, "--" if p.get("beta") == BIG_BETA else "-"


def draw_runs(ax, runs, labels, fit=False, key=True):
    """Gold against √KL of the runs named, ★ at each peak; fit: Gao's RL form drawn on them."""
    for label in labels:
        pts = runs[label]
        colour, ls = run_style(pts[0])
        ax.errorbar(sqrt_kl(pts), [p["gold"] for p in pts], [p["gold_se"] for p in pts],
                    fmt=ls, color=colour, lw=1.3, elinewidth=0.6, label=legend(pts))
        pk = peak_and_fall(pts)["peak"]
        ax.plot(math.sqrt(max(pk["kl"], 0)), pk["gold"], "*", ms=13, color=colour, mec="black")
        if fit:
            d = torch.tensor(sqrt_kl(pts))
            a, b = fit_gao(d, [p["gold"] - pts[0]["gold"] for p in pts], "rl")
            grid = torch.linspace(0, float(d.max()), 100)
            ax.plot(grid, pts[0]["gold"] + gao_curve(grid, a, b, "rl"), "--", color=colour, lw=0.9)
    ax.set_xlabel("√KL(π‖π_ref)   [√nats]")
    ax.grid(alpha=0.3)
    if key:
        ax.legend(fontsize=7)


def table(rows):
    """The Goodhart table (markdown lines): per run and gold, the start, peak and final gold, the
    rise and the fall in standard errors, and Gao's fit."""
    lines = ["| run | proxy pairs | proxy's pair accuracy | gold | π_SFT | peak (KL) |"
             " final (KL) | rise | fall | fit a, b |", "|---|---|---|---|---|---|---|---|---|---|"]
    for fn in ("reader", "vader"):
        for label, pts in by_run(rows, fn).items():
            s = peak_and_fall(pts)
            a, b = fit_gao(sqrt_kl(pts), [p["gold"] - pts[0]["gold"] for p in pts], "rl")
            acc = pts[0].get("proxy_acc_gold")
            lines.append(
                f"| {label} | {pts[0].get('proxy_pairs') or '–'} |"
                f" {f'{acc:.3f}' if acc is not None else '–'} | {fn} | {s['start']['gold']:.3f} |"
                f" {s['peak']['gold']:.3f} ({s['peak']['kl']:.1f}) |"
                f" {s['final']['gold']:.3f} ({s['final']['kl']:.1f}) | {s['rise_se']:.1f} SE |"
                f" {s['fall_se']:.1f} SE | {a:.3f}, {b:.3f} |")
    return lines


def bon_curves(bon):
    """{(gold fn, proxy name): (its best-of-n points in n order, Gao's (α, β) fitted to them)}."""
    out = {}
    for fn, name in dict.fromkeys((r["gold_fn"], r["proxy_name"]) for r in bon):
        pts = sorted((r for r in bon if r["gold_fn"] == fn and r["proxy_name"] == name),
                     key=lambda r: r["n"])
        d = [math.sqrt(r["kl_bound"]) for r in pts]
        out[fn, name] = pts, fit_gao(d, [r["gold"] - pts[0]["gold"] for r in pts], "bon")
    return out


def bon_table(bon):
    """Per proxy and gold: gold at n = 1, at its best n, at the largest; Gao's fit and the KL
    where the fit peaks, (α/2β)² (beyond the largest n's bound: no fall measured)."""
    lines = ["| proxy | gold | n = 1 | best (n) | n = max | fit a, b | fit's peak at KL |",
             "|---|---|---|---|---|---|---|"]
    for (fn, name), (pts, (a, b)) in bon_curves(bon).items():
        pk = max(pts, key=lambda r: r["gold"])
        top = f"{(a / (2 * b)) ** 2:.1f}" if b > 0 else "–"
        lines.append(f"| {name} | {fn} | {pts[0]['gold']:.3f} | {pk['gold']:.3f} ({pk['n']}) |"
                     f" {pts[-1]['gold']:.3f} | {a:.3f}, {b:.3f} | {top} |")
    return lines


AT_KL = (5, 10, 20, 30)  # the equal-KL table's columns


def at_kl_table(rows):
    """The reader's gold of every run where its KL first reaches 5, 10, 20, 30 (interpolated;
    – where it never does): mitigations compared at equal KL, not at their ends."""
    lines = ["| run | " + " | ".join(f"at KL {k}" for k in AT_KL) + " |",
             "|---|" + "---|" * len(AT_KL)]
    for label, pts in by_run(rows, "reader").items():
        golds = [gold_at_kl([(p["kl"], p["gold"]) for p in pts], k) for k in AT_KL]
        lines.append(f"| {label} | " + " | ".join("–" if v is None else f"{v:.3f}"
                                                  for v in golds) + " |")
    return lines


def draw(out):
    """goodhart.png, mitigation.png, best_of_n.png and goodhart_data.md from the data alone."""
    rows = c.read_jsonl(os.path.join(out, "goodhart.jsonl"), GOODHART_ROW)
    if not rows or "gold_fn" not in rows[0]:
        return False
    size = [f"rloo β={BETA} vs {proxy_name(n)}" for n in PROXY_PROMPTS]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    runs = {fn: by_run(rows, fn) for fn in ("vader", "reader")}
    have = [s for s in size if s in runs["reader"]]
    draw_runs(axes[0], runs["vader"], have, key=False)  # one key, on the right, off the data
    draw_runs(axes[1], runs["reader"], have, fit=True, key=False)
    for label in have:
        pts = runs["reader"][label]
        sd0 = (pts[0].get("proxy_se") or 0) * math.sqrt(256) or 1.0
        axes[2].plot(sqrt_kl(pts), [(p["proxy"] - pts[0]["proxy"]) / sd0 for p in pts],
                     color=run_style(pts[0])[0], label=legend(pts))
    axes[0].set(ylabel="VADER's gold, held-out", title="scored by VADER (★: each run's peak)")
    axes[1].set(ylabel="the reader's gold, held-out",
                title="the reader: ★ peak; dashes: Gao's fit d(a − b log d)")
    axes[2].set(xlabel="√KL(π‖π_ref)   [√nats]", title="proxy r_φ, normalised",
                ylabel="change from KL 0, in its sd at KL 0")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    c.save_figure(fig, os.path.join(out, "goodhart.png"))

    mit = {"ensemble (6k pairs, 3 seeds)": [size[1], f"rloo β={BETA} vs ensemble-mean",
                                            f"rloo β={BETA} vs ensemble-min"],
           "β (6k pairs)": [size[1], f"rloo β={BIG_BETA} vs {proxy_name(MITIGATE)}"],
           "optimising VADER, scored by the reader": [f"rloo β={BETA} vs vader-rm-10000",
                                                      f"rloo β={BETA} vs VADER itself"]}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), sharey=True)
    for ax, (title, labels) in zip(axes, mit.items()):
        draw_runs(ax, runs["reader"], [lb for lb in labels if lb in runs["reader"]])
        ax.set_title(title)
    axes[0].set_ylabel("the reader's gold, held-out")
    c.save_figure(fig, os.path.join(out, "mitigation.png"))

    lines = ["# Goodhart on the reader's gold: the data's numbers", "",
             f"From goodhart.jsonl, {said_pipelines(rows)}"
             " (`python -m experiments --quick --experiment goodhart`); rise and"
             " fall: peak − π_SFT and peak − final, in standard errors of the difference.", "",
             *table(rows), "", "The reader's gold at equal KL (where each run first gets there):",
             "", *at_kl_table(rows), ""]
    bon = c.read_jsonl(os.path.join(out, "best_of_n.jsonl"), BON_ROW)
    if bon:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharex=True)
        for (fn, name), (pts, (a, b)) in bon_curves(bon).items():
            ax, colour = axes[int(fn == "reader")], colour_of(name)
            d = [math.sqrt(r["kl_bound"]) for r in pts]
            ax.errorbar(d, [r["gold"] for r in pts], [r["gold_se"] for r in pts], fmt="o-",
                        ms=4, mfc="none", color=colour, lw=1, label=name)  # hollow: KL a bound
            grid = torch.linspace(0, max(d), 100)
            ax.plot(grid, pts[0]["gold"] + gao_curve(grid, a, b, "bon"), "--", color=colour,
                    lw=0.8)
        for ax, fn in zip(axes, ("VADER", "the reader")):
            ax.set(xlabel="√(KL bound log n − (n−1)/n)   [a bound, not a measurement]",
                   ylabel=f"{fn}'s gold of the pick", title=f"best-of-n, scored by {fn}")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7)
        c.save_figure(fig, os.path.join(out, "best_of_n.png"))
        lines += [f"Best-of-n from π_SFT (best_of_n.jsonl, {said_pipelines(bon)}):", "", *bon_table(bon), ""]
    with open(os.path.join(out, "goodhart_data.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return True
