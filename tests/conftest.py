"""Shared test helpers: the repo root on sys.path, a runner for the scripts themselves, spies for
the wiring tests (what main() hands a formula: tests/test_wiring.py says which tests guard
wiring and which guard formulas), and the statistical check of the learning tests. The tests
run in the precision the scripts pick (RLHF_PRECISION=fp32 or bf16 in the environment forces
one; .ci/run also runs the learning tests in fp32 on machines whose default is bf16)."""
import inspect, json, math, os, subprocess, sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the tests never touch the network: a hub name must fail at once, not after retries
os.environ["HF_HUB_OFFLINE"] = "1"

# a from-scratch model small enough to train for a few steps in seconds
TINY_SFT = ["--n-ranks", "1024", "--n-layer", "2", "--n-head", "2", "--n-embd", "96",
            "--batch-size", "32", "--n-eval-prompts", "16", "--max-new-tokens", "16"]


def pytest_configure(config):
    config.addinivalue_line("markers", "learning: a run that fails if learning is broken")


def assert_rises(before, after, key, n_se):
    """after[key] exceeds before[key] by more than n_se standard errors of the difference of the
    two evaluation means (independent samples: se = √(se_before² + se_after²)). A fixed margin
    holds for one trajectory; a margin in standard errors holds for the method on any machine."""
    se = math.hypot(before[f"{key}_se"], after[f"{key}_se"])
    rise = after[key] - before[key]
    assert rise > n_se * se, f"{key} {before[key]:.3f} → {after[key]:.3f}: rise {rise:.3f}" \
        f" is not above {n_se} standard errors ({n_se} × {se:.3f})"


def run_script(script, *args, check=True):
    """Run `python script args` as a user would; return the completed process."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_experiments(*args, check=True):
    """Run `python -m experiments args` from the repo root, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "experiments", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"experiments failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """out/ with a tiny SFT model (300 steps: English-ish but weak, ~15 s) and a tiny reward model
    (~8 s), shared by the PPO, RLOO and DPO tests."""
    out = tmp_path_factory.mktemp("out")
    run_script("sft.py", "--out", out, *TINY_SFT, "--steps", 300, "--eval-every", 150, "--lr", 5e-3)
    run_script("reward_model.py", "--out", out, "--n-prompts", 600, "--n-val-prompts", 50,
               "--max-new-tokens", 16, "--n-eval-prompts", 32, "--lr", 3e-3, "--epochs", 4)
    return out


def open_record(out, stage):
    with open(os.path.join(out, stage, "run.json")) as f:
        return json.load(f)


def run_points(out, stage):
    """The evaluation points of the last run in out/<stage>, after checking that the shared
    results file holds exactly them under the run's key (put there when the run finished),
    each tagged with the stage's record id, its inputs' ids and its pipeline: its π_SFT's id
    (sft.py's own run: its own), 8 hex digits."""
    points = [json.loads(line) for line in open(os.path.join(out, stage, "points.jsonl"))]
    shared = [json.loads(line) for line in open(os.path.join(out, "results.jsonl"))]
    record = open_record(out, stage)
    sft_id = record["inputs"].get("sft") or record["id"]
    assert sft_id == (record["id"] if stage == "sft" else open_record(out, "sft")["id"])
    tag = {"record": record["id"], "inputs": record["inputs"], "pipeline": sft_id[:8]}
    assert [p for p in shared if p["run"] == points[0]["run"]] == [{**p, **tag} for p in points]
    return points


def spy(monkeypatch, owner, name):
    """Wrap owner.name (a function of a script or of common) so that every call is recorded, its
    arguments by name (defaults filled in) and its result under "out", then calls through.
    Returns the list the calls go into: what `main` passed to a tested formula."""
    fn = getattr(owner, name)
    signature, calls = inspect.signature(fn), []

    def recorded(*args, **kwargs):
        out = fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append({**bound.arguments, "out": out})
        return out
    monkeypatch.setattr(owner, name, recorded)
    return calls


def run_main(monkeypatch, script, *args):
    """Run a script's main() in this process as `python script args` would (spies stay in
    place); the precision it picks is undone afterwards."""
    monkeypatch.setattr(sys, "argv", [script.__file__, *map(str, args)])
    monkeypatch.setenv("RLHF_PRECISION", os.environ.get("RLHF_PRECISION", "auto"))
    script.main()


def linked_out(tmp_path, pipeline):
    """A new out/ whose sft, reward_model and preferences.jsonl are the pipeline's (links): a run
    there writes its own stage and results and leaves the shared pipeline alone."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("sft", "reward_model", "preferences.jsonl"):
        (out / name).symlink_to(pipeline / name)
    return out
