"""runs.py and the failure behaviour: nothing lost, nothing silent (results replaced only at the
end, atomic concurrent updates, one writer per directory, stage records, signals, bad flags)."""
import dataclasses, json, multiprocessing, os, signal, subprocess, sys, time

import pytest
from transformers import GPT2ForSequenceClassification

import common as c
import runs
from conftest import ROOT, run_script


def rows_of(path):
    return [json.loads(line) for line in open(path)]


def test_interrupted_rerun_keeps_the_finished_points(tmp_path):
    path = tmp_path / "results.jsonl"
    fields = {"run": "rloo-rm beta=0.1", "algo": "rloo", "variant": "rm", "beta": 0.1}
    first = c.Results(path, tmp_path / "rloo", fields)
    for step in (0, 10):
        first.add({"kl": step / 10, "gold": [0.2, 0.3][step // 10]}, step, final=step == 10)
    first.finish()
    rerun = c.Results(path, tmp_path / "rloo", fields)  # the same run again, cut off after 0
    rerun.add({"kl": 0.0, "gold": 0.25}, 0)
    assert [r["gold"] for r in rows_of(path)] == [0.2, 0.3]  # the finished points, untouched
    rerun.add({"kl": 2.0, "gold": 0.5}, 10, final=True)
    rerun.finish()  # finished: its points replace the earlier ones, and only those
    assert [r["gold"] for r in rows_of(path)] == [0.25, 0.5]
    with pytest.raises(SystemExit):  # a diverged evaluation is never recorded
        rerun.add({"kl": float("nan"), "gold": 0.5}, 20)


def test_run_key_covers_every_setting_that_changes_the_result():
    @dataclasses.dataclass
    class Cfg:
        out: str = "out"
        reward: str = "model"
        beta: float = 0.05
        lr: float = 1e-4
        steps: int = 100
        seed: int = 0
        precision: str = "auto"

    default = runs.run_key("ppo", Cfg(), Cfg())
    assert default["run"] == "ppo-rm" and default["variant"] == "rm" and default["beta"] == 0.05
    other = runs.run_key("ppo", Cfg(lr=3e-4, steps=60, out="elsewhere"), Cfg())
    assert other["run"] == "ppo-rm lr=0.0003 steps=60"  # --out and --precision do not count
    assert other["settings"] == {"lr": 3e-4, "steps": 60}
    assert runs.run_key("ppo", Cfg(reward="gold"), Cfg())["variant"] == "gt"


def _replace(args):
    path, i = args
    for j in range(5):
        c.replace_rows(path, f"run {i}-{j}", [{"run": f"run {i}-{j}", "step": 0}])


def test_concurrent_updates_lose_no_row(tmp_path):
    path = str(tmp_path / "results.jsonl")
    with multiprocessing.get_context("fork").Pool(6) as pool:
        pool.map(_replace, [(path, i) for i in range(6)])
    assert {r["run"] for r in rows_of(path)} == {f"run {i}-{j}" for i in range(6) for j in range(5)}


def test_a_second_writer_stops_with_one_line(tmp_path):
    runs.lock(str(tmp_path / "ppo"))
    code = f"import runs; runs.lock({str(tmp_path / 'ppo')!r}); print('got it')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "another run is writing to" in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def finished(stage, inputs=None):
    os.makedirs(stage)
    with open(os.path.join(stage, "run.json"), "w") as f:
        json.dump({"id": os.path.basename(stage) + "-1", "inputs": inputs or {}}, f)


def test_unfinished_input_is_rebuilt_and_a_stale_one_refused(tmp_path, monkeypatch, capsys):
    sft, rm = str(tmp_path / "sft"), str(tmp_path / "reward_model")
    finished(sft)
    os.makedirs(rm)  # an interrupted reward_model.py: a checkpoint, no completion mark
    built = []

    def fake_build(cmd, **kwargs):  # stands in for `python reward_model.py`
        built.append(os.path.basename(cmd[1]))
        finished(rm + "-new", {"sft": "sft-1"})
        os.replace(os.path.join(rm + "-new", "run.json"), os.path.join(rm, "run.json"))
        return 0

    monkeypatch.setattr(runs, "run_child", fake_build)
    c.require(rm, "reward_model.py", ["--out", str(tmp_path)], built_from=[sft])
    assert built == ["reward_model.py"] and "unfinished" in capsys.readouterr().out
    c.require(rm, "reward_model.py", ["--out", str(tmp_path)], built_from=[sft])
    assert built == ["reward_model.py"]  # finished and built from this SFT: used as it is
    with open(os.path.join(sft, "run.json"), "w") as f:
        json.dump({"id": "sft-2", "inputs": {}}, f)  # sft.py was run again since
    with pytest.raises(SystemExit):
        c.require(rm, "reward_model.py", ["--out", str(tmp_path)], built_from=[sft])
    err = capsys.readouterr().err.strip()
    assert "was built from another" in err and "\n" not in err


def test_a_reward_model_of_another_vocabulary_is_refused(tmp_path):
    c.build_model(512, 1, 2, 32, 64).save_pretrained(tmp_path / "rm")
    policy = c.build_model(1024, 1, 2, 32, 64)
    with pytest.raises(SystemExit):
        c.load_reward_model(str(tmp_path / "rm"), policy)
    rm = c.load_reward_model(str(tmp_path / "rm"), c.build_model(512, 1, 2, 32, 64))
    assert isinstance(rm, GPT2ForSequenceClassification) and not rm.training


def test_sigterm_ends_the_children(tmp_path):
    """rloo.py on an empty out/ starts sft.py as a child; SIGTERM to rloo.py ends both."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "rloo.py"), "--out", tmp_path],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lock = tmp_path / "sft" / ".lock"
    for _ in range(600):  # the child writes its pid into out/sft/.lock once it runs
        if lock.exists() and lock.read_text().strip():
            break
        time.sleep(0.1)
    child = int(lock.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.strip().endswith("never written")
    for _ in range(100):
        try:
            os.kill(child, 0)  # still there?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the child sft.py (pid {child}) still runs")
    assert not (tmp_path / "sft" / "run.json").exists()  # and it never claimed to have finished


@pytest.mark.parametrize("script, flags, flag", [
    ("ppo.py", ["--beta", -1], "--beta"), ("rloo.py", ["--steps", 0], "--steps"),
    ("grpo.py", ["--batch-size", 0], "--batch-size"), ("dpo.py", ["--lr", -1], "--lr"),
    ("ppo.py", ["--eval-every", 0], "--eval-every"),
    ("rloo.py", ["--max-new-tokens", 0], "--max-new-tokens"),
    ("reward_model.py", ["--tau", "nan"], "--tau"), ("sft.py", ["--lr", "inf"], "--lr"),
    ("grpo.py", ["--temperature", 0], "--temperature"),
    ("rloo.py", ["--out", "/dev/null/out"], "is a file"),
    ("dpo.py", ["--out", "/proc/rlhf"], "cannot create it"),
])
def test_invalid_values_stop_with_one_line_naming_the_flag(tmp_path, script, flags, flag):
    proc = run_script(script, "--out", tmp_path, *flags, check=False)  # a later --out wins
    assert proc.returncode == 2 and flag in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing was written


def test_a_corrupt_results_line_is_skipped_with_a_warning(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text('{"run": "a", "step": 0}\n{"run": "b", "st\nnull\n{"run": "c", "step": 1}\n')
    assert [r["run"] for r in c.read_jsonl(path)] == ["a", "c"]
    assert "line 2 is not JSON; skipped" in capsys.readouterr().err
    c.replace_rows(path, "c", [{"run": "c", "step": 2}])  # the other points survive an update
    assert [(r["run"], r["step"]) for r in rows_of(path)] == [("a", 0), ("c", 2)]


def test_the_time_estimate_leaves_evaluations_out(tmp_path, monkeypatch, capsys):
    clock = iter([0.0, 1.0, 11.0, 12.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0])  # evals take 10 s
    monkeypatch.setattr(runs.time, "time", lambda: next(clock))
    logger = runs.Logger(tmp_path, 100)
    for step in range(1, 9):
        logger.log(step, **({"eval_gold": 0.5} if step in (1, 2, 4) else {"loss": 1.0}))
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("≈")]
    assert said == ["≈ 2.0 min for 100 steps on this machine (1.00 s/step, evaluations not"
                    " counted); --steps N runs fewer"]  # 26 s so far + 92 steps of 1 s
    assert len(rows_of(tmp_path / "metrics.jsonl")) == 8
