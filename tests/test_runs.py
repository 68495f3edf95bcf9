"""lib/ (process, stages, results, logger) and the failure behaviour: nothing lost, nothing
silent (results replaced only at the end, atomic concurrent updates, one writer per directory,
stage records, signals, bad flags)."""
import collections, dataclasses, errno, glob, json, multiprocessing, os, signal, subprocess
import sys
import threading, time

import pytest
import torch
from transformers import GPT2ForSequenceClassification

import common as c
from lib import logger, plots, process, results, stages
from conftest import ROOT, run_script


def rows_of(path):
    return [json.loads(line) for line in open(path)]


def test_interrupted_rerun_keeps_the_finished_points(tmp_path):
    path, stage = tmp_path / "results.jsonl", str(tmp_path / "rloo")
    fields = {"run": "rloo-rm beta=0.1", "algo": "rloo", "variant": "rm", "beta": 0.1}
    stages.start_stage(stage)
    first = c.Results(path, stage, fields)
    for step in (0, 10):
        first.add({"kl": step / 10, "gold": [0.2, 0.3][step // 10]}, step, final=step == 10)
    c.finish_run(stage, _Cfg(), [], first)
    release(stage)
    stages.start_stage(stage)
    rerun = c.Results(path, stage, fields)  # the same run again, cut off after 0
    rerun.add({"kl": 0.0, "gold": 0.25}, 0)
    assert [r["gold"] for r in rows_of(path)] == [0.2, 0.3]  # the finished points, untouched
    rerun.add({"kl": 2.0, "gold": 0.5}, 10, final=True)
    c.finish_run(stage, _Cfg(), [], rerun)  # finished: its points replace the earlier ones
    assert [r["gold"] for r in rows_of(path)] == [0.25, 0.5]
    assert {r["record"] for r in rows_of(path)} == {stages.record_id(stage)}  # named by it
    with pytest.raises(SystemExit):  # a diverged evaluation is never recorded
        rerun.add({"kl": float("nan"), "gold": 0.5}, 20)
    release(stage)


def test_points_are_published_from_the_record_even_after_an_interruption(tmp_path, monkeypatch):
    """The record is the commit point: a run stopped after it and before its points reached the
    results file is finished by whoever comes next (the loop's resume, the stage's next run),
    never run again and never left half there."""
    from experiments import loop
    path, stage = tmp_path / "results.jsonl", str(tmp_path / "dpo")
    write_record(str(tmp_path / "sft"), "sft-1")
    fields = {"run": "dpo-sigmoid", "algo": "dpo", "variant": "sigmoid", "beta": 0.1}
    stages.start_stage(stage)
    points = c.Results(path, stage, fields)
    points.add({"kl": 1.0, "gold": 0.4}, 4, final=True)

    def interrupted(stage_dir, say=False):
        raise KeyboardInterrupt
    monkeypatch.setattr(results, "publish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        c.finish_run(stage, _Cfg(), [str(tmp_path / "sft")], points)
    monkeypatch.undo()
    release(stage)
    assert stages.record_id(stage) and not path.exists()  # finished, not yet published
    assert loop.finished(str(tmp_path)) == {"dpo-sigmoid"}  # the resume publishes it
    row = rows_of(path)[0]
    assert row["record"] == stages.record_id(stage) and row["inputs"] == {"sft": "sft-1"}
    assert results.publish(stage) and len(rows_of(path)) == 1  # idempotent


def test_points_of_a_run_whose_sft_was_rebuilt_stay_out(tmp_path, capsys):
    """An RL run trained against π_SFT 1 finishes after sft.py installed π_SFT 2: its points
    are not put beside the new SFT's point (they stay in its points.jsonl), with one warning."""
    path, stage, sft = tmp_path / "results.jsonl", str(tmp_path / "rloo"), str(tmp_path / "sft")
    write_record(sft, "sft-1")
    c.require(sft, "sft.py", [])
    stages.start_stage(stage)
    points = c.Results(path, stage, {"run": "rloo-rm", "algo": "rloo", "variant": "rm"})
    points.add({"kl": 1.0, "gold": 0.4}, 4, final=True)
    write_record(sft, "sft-2")  # sft.py finished again while this run trained
    c.finish_run(stage, _Cfg(), [sft], points)
    release(stage)
    assert not path.exists() and "was rebuilt (or removed) while" in capsys.readouterr().out
    assert stages.record_id(stage)  # the run itself is finished: its model and points are kept


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

    default = results.run_key("ppo", Cfg(), Cfg())
    assert default["run"] == "ppo-rm" and default["variant"] == "rm" and default["beta"] == 0.05
    other = results.run_key("ppo", Cfg(lr=3e-4, steps=60, out="elsewhere"), Cfg())
    assert other["run"] == "ppo-rm lr=0.0003 steps=60"  # --out and --precision do not count
    assert other["settings"] == {"lr": 3e-4, "steps": 60}
    assert results.run_key("ppo", Cfg(reward="gold"), Cfg())["variant"] == "gt"


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
    stages.lock(str(tmp_path / "ppo"))
    code = f"from lib import stages; stages.lock({str(tmp_path / 'ppo')!r}); print('got it')"
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

    monkeypatch.setattr(stages, "run_child", fake_build)
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


def test_a_script_builds_its_inputs_with_its_own_seed(tmp_path, monkeypatch):
    """`python rloo.py --seed 1` on an empty --out builds π_SFT and r_φ with seed 1: one
    pipeline seed; seed 0 adds no flag (the defaults' commands stay `python sft.py`)."""
    import rloo
    assert c.build_args(rloo.Config(out="o", seed=1)) == ["--out", "o", "--seed", "1"]
    assert c.build_args(rloo.Config(out="o")) == ["--out", "o"]
    built = []
    monkeypatch.setattr(stages, "run_child", lambda cmd, **kw: built.append(cmd[1:]) or
                        finished(str(tmp_path / "sft")) or 0)
    c.require(str(tmp_path / "sft"), "sft.py", c.build_args(rloo.Config(out=str(tmp_path), seed=2)))
    assert built and built[0][-2:] == ["--seed", "2"]
    for script in ("ppo.py", "rloo.py", "grpo.py", "dpo.py", "reward_model.py"):
        with open(os.path.join(ROOT, script)) as f:
            calls = [line for line in f if "c.require(" in line]
        assert calls and all("c.build_args(cfg)" in line for line in calls), script


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
    monkeypatch.setattr(logger.time, "time", lambda: next(clock))
    log = logger.Logger(tmp_path, 100)
    for step in range(1, 9):
        log.log(step, **({"eval_gold": 0.5} if step in (1, 2, 4) else {"loss": 1.0}))
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("≈")]
    assert said == ["≈ 2.0 min for 100 steps on this machine (1.00 s/step, evaluations not"
                    " counted); --steps N runs fewer"]  # 26 s so far + 92 steps of 1 s
    assert len(rows_of(tmp_path / "metrics.jsonl")) == 8

# ---------------------------------------------------------------- nothing lost, nothing silent

@dataclasses.dataclass
class _Cfg:
    seed: int = 0


def write_record(stage, run_id, inputs=None):
    os.makedirs(stage, exist_ok=True)
    with open(os.path.join(stage, "run.json"), "w") as f:
        json.dump({"id": run_id, "inputs": inputs or {}}, f)


def release(stage):
    stages._locks.pop(str(stage)).close()  # as if the run that claimed it had ended


def test_an_input_is_recorded_as_it_was_when_loaded(tmp_path, capsys):
    """reward_model.py loads out/sft; sft.py rebuilds it meanwhile: the reward model's record
    names the SFT it was built from, and a later load from the rebuilt stage stops."""
    sft, rm = str(tmp_path / "sft"), str(tmp_path / "reward_model")
    c.build_model(512, 1, 2, 32, 64).save_pretrained(sft)
    write_record(sft, "sft-1")
    c.require(sft, "sft.py", [])
    c.load_model(sft)
    write_record(sft, "sft-2")  # sft.py finished again while this run trained
    stages.start_stage(rm)
    stages.finish_stage(rm, _Cfg(), [sft])
    with open(os.path.join(rm, "run.json")) as f:
        assert json.load(f)["inputs"] == {"sft": "sft-1"}
    with pytest.raises(SystemExit):
        c.load_model(sft)
    err = capsys.readouterr().err.strip()
    assert "was rebuilt by another run" in err and "\n" not in err


def test_a_failed_rerun_keeps_the_finished_stage(tmp_path):
    """A rerun's files wait in <stage>/.next: the finished model, log and record stay valid
    until the rerun finishes, whatever stops it first; then the new ones replace them."""
    stage = tmp_path / "sft"
    torch.manual_seed(0)
    old, new = c.build_model(512, 1, 2, 32, 64), c.build_model(512, 1, 2, 32, 64)
    old.save_pretrained(stage)
    write_record(stage, "sft-1")
    (stage / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    ckpt_dir = stages.start_stage(str(stage))
    logger.Logger(str(stage), 1).log(1, loss=9.0)  # the rerun's log
    c.save_model(new, ckpt_dir)  # and a checkpoint; then it fails
    release(stage)
    assert stages.record_id(stage) == "sft-1"
    assert rows_of(stage / "metrics.jsonl") == [{"step": 1, "loss": 3.0}]
    torch.testing.assert_close(c.load_model(str(stage)).lm_head.weight, old.lm_head.weight)
    ckpt_dir = stages.start_stage(str(stage))  # the next rerun starts afresh, and finishes
    assert ckpt_dir == str(stage / ".next") and not os.listdir(ckpt_dir)  # the failed one's: gone
    logger.Logger(str(stage), 1).log(1, loss=2.0)
    c.save_model(new, ckpt_dir)
    stages.finish_stage(str(stage), _Cfg())
    release(stage)
    assert rows_of(stage / "metrics.jsonl")[0]["loss"] == 2.0
    assert stages.writing_dir(str(stage)) == str(stage)  # the run is over: plots read the stage
    assert stages.record_id(stage) not in (None, "sft-1") and not os.path.exists(ckpt_dir)
    torch.testing.assert_close(c.load_model(str(stage)).lm_head.weight, new.lm_head.weight)


def test_a_stage_missing_its_file_or_inputs_is_rebuilt(tmp_path, monkeypatch):
    """preferences.jsonl belongs to the reward model's stage: written under a pending name and
    put in place when the run finishes; deleted, the stage is rebuilt as a missing one is. So
    is a stage whose record lacks its inputs."""
    rm, prefs = str(tmp_path / "reward_model"), tmp_path / "preferences.jsonl"
    prefs.write_text("the finished run's pairs\n")
    stages.start_stage(rm)
    with open(stages.stage_file(rm, str(prefs)), "w") as f:
        f.write("the new run's pairs\n")
    assert prefs.read_text() == "the finished run's pairs\n"  # until the run has finished
    stages.finish_stage(rm, _Cfg())
    release(rm)
    assert prefs.read_text() == "the new run's pairs\n" and stages.record_id(rm)
    built = []
    monkeypatch.setattr(stages, "run_child", lambda cmd, **kw: built.append(cmd) or 1)
    for broken in (lambda: prefs.unlink(), lambda: (tmp_path / "reward_model" / "run.json")
                   .write_text('{"id": "rm-1"}')):
        broken()
        assert stages.record_id(rm) is None
        with pytest.raises(SystemExit):  # the fake build fails; the real one would rebuild it
            c.require(rm, "reward_model.py", [])
    assert len(built) == 2


@pytest.mark.parametrize("script, flags, says", [
    ("dpo", ["--beta", "0"], "--beta 0"), ("dpo", ["--loss", "ipo", "--beta", "0"], "--beta 0"),
    ("ppo", ["--horizon", "10"], "--horizon 10"), ("ppo", ["--lam", "1.5"], "--lam 1.5"),
    ("ppo", ["--gamma", "1.01"], "--gamma 1.01"), ("sft", ["--n-ranks", "100"], "--n-ranks"),
    ("sft", ["--n-ranks", "60000"], "--n-ranks"),
    ("rloo", ["--n-eval-prompts", "1001"], "--n-eval-prompts"),
    ("grpo", ["--n-eval-prompts", "1"], "a standard error needs 2"),
    ("reward_model", ["--n-val-prompts", "5000"], "--n-val-prompts"),
])
def test_degenerate_settings_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys,
                                                              script, flags, says):
    """Values that make a formula degenerate or a count impossible: exit 2, one line naming the
    flag; a finished stage there is left as it was."""
    write_record(tmp_path / "sft", "sft-1")
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--out", str(tmp_path), *flags])
    with pytest.raises(SystemExit) as stop:
        __import__(script).main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and says in err and "\n" not in err, err
    assert stages.record_id(tmp_path / "sft") == "sft-1"


def test_preferences_without_a_split_or_with_negative_ids_stop(tmp_path, capsys):
    enc, path = c.tokenizer(1024), tmp_path / "preferences.jsonl"
    pair = {"prompt": "The film", "chosen": " was great.", "rejected": " was bad."}
    for records, says in (([pair, pair], "2 records have no split"),
                          ([{**pair, "split": "train"}], "no held-out (valid) pairs"),
                          ([{**pair, "split": "valid", "chosen_ids": [5, -3]}], "negative")):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        with pytest.raises(SystemExit):
            c.read_preferences(str(path), enc)
        err = capsys.readouterr().err.strip()
        assert says in err and "python reward_model.py" in err and "\n" not in err, err
        assert "delete" not in err  # nothing would rebuild a deleted file alone
    path.unlink()  # deleted under a reward model of an older version (no files in its record)
    with pytest.raises(SystemExit):
        c.read_preferences(str(path), enc)
    assert "is missing; rebuild it" in capsys.readouterr().err


def test_a_bad_results_row_is_skipped_with_a_warning(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"run": "a", "algo": "ppo", "step": 0, "kl": 0.0, "gold": 0.1}\n\xff\xfe\n'
                     b'{"run": "b", "algo": "ppo", "step": 1}\n{"step": 2, "kl": 0, "gold": 0}\n'
                     b'{"run": "d", "algo": "ppo", "step": "x", "kl": 0, "gold": 0}\n')
    assert [r["run"] for r in c.read_results(path)] == ["a"]
    err = capsys.readouterr().err
    assert "line 2 is not JSON" in err and "line 3 is not a results row (no kl)" in err
    assert "line 4 is not a results row (no run key)" in err and "line 5" in err
    c.replace_rows(path, "c", [{"run": "c", "algo": "rloo", "step": 0, "kl": 0.0, "gold": 0.2}])
    plots.plot_frontier(c.read_results(path), tmp_path / "frontier.png")  # as finish_rl does
    assert [r["run"] for r in c.read_results(path)] == ["a", "c"]


def test_late_failures_are_found_early_and_said_in_one_line(tmp_path, monkeypatch, capsys):
    def one_line(code=1):
        err = capsys.readouterr().err.strip()
        assert stop.value.code == code and err.startswith("error: ") and "\n" not in err, err
        return err

    model = c.build_model(512, 1, 2, 32, 64)
    with pytest.raises(SystemExit) as stop:  # --max-new-tokens beyond the model's positions
        c.check_positions(model, _Positions(max_new_tokens=60))
    assert "give at most 56" in one_line(2)
    monkeypatch.setattr(results.shutil, "disk_usage", lambda d: shutil_usage(free=1 << 20))
    with pytest.raises(SystemExit) as stop:  # a disk too full for a checkpoint
        c.check_space(str(tmp_path), model)
    assert "1 MiB free" in one_line()

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "out/ppo/metrics.jsonl")
    with pytest.raises(SystemExit) as stop:  # any write that the disk refuses
        process.run(full_disk)
    assert "out/ppo/metrics.jsonl: No space left on device; free some disk space" in one_line()
    os.symlink("loop", tmp_path / "loop")  # a stage directory that points at itself
    for claim in (stages.lock, lambda d: c.require(d, "sft.py", [])):
        with pytest.raises(SystemExit) as stop:
            claim(str(tmp_path / "loop"))
        assert "leads nowhere (or to itself)" in one_line()
    os.makedirs(tmp_path / "ppo" / ".lock")  # a lock file that cannot be opened for writing
    with pytest.raises(SystemExit) as stop:
        stages.lock(str(tmp_path / "ppo"))
    assert "cannot open the lock file" in one_line()
    monkeypatch.setattr(stages.os, "access", lambda path, mode: False)  # a read-only directory
    with pytest.raises(SystemExit) as stop:
        stages.lock(str(tmp_path / "dpo"))
    assert "is not writable" in one_line()


@dataclasses.dataclass
class _Positions:
    max_new_tokens: int = 48


def shutil_usage(free):
    return collections.namedtuple("usage", "total used free")(free, 0, free)


def test_messages_say_what_is_true_for_the_case(tmp_path, capsys):
    with pytest.raises(SystemExit):  # a path that does not exist: nothing to delete
        c.load_model(str(tmp_path / "no-such-init"))
    err = capsys.readouterr().err
    assert "no such directory" in err and "delete" not in err
    stage = str(tmp_path / "sft")  # a stage without its model: deleting it rebuilds it
    write_record(stage, "sft-1")
    c.require(stage, "sft.py", [])
    with pytest.raises(SystemExit):
        c.load_model(stage)
    assert "delete the directory so that it is rebuilt" in capsys.readouterr().err
    os.makedirs(tmp_path / "init")  # an --init directory without a model: nothing rebuilds it
    with pytest.raises(SystemExit):
        c.load_model(str(tmp_path / "init"))
    assert "delete" not in capsys.readouterr().err
    corrupt = c.build_model(512, 1, 2, 32, 64)
    with torch.no_grad():
        corrupt.lm_head.weight[0, 0] = float("nan")
    corrupt.save_pretrained(tmp_path / "corrupt")
    with pytest.raises(SystemExit):
        c.load_model(str(tmp_path / "corrupt"))
    assert "non-finite weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # NaN before any update: the input's fault, not the lr's
        results.finite_row({"step": 0, "gold": float("nan"), "kl": 0.0})
    err = capsys.readouterr().err
    assert "before training" in err and "lower --lr" not in err


def test_old_results_move_aside_under_the_lock_and_a_wait_names_its_holder(tmp_path, capsys):
    """A new π_SFT's point goes in once the update another run holds the lock for is done; the
    rows of earlier π_SFTs move aside, those built from this one stay."""
    path, sft = tmp_path / "results.jsonl", str(tmp_path / "sft")
    path.write_text('{"run": "ppo-rm", "algo": "ppo", "step": 0, "kl": 0.0, "gold": 0.1}\n')
    stages.start_stage(sft)
    points = c.Results(path, sft, {"run": "sft", "algo": "sft", "variant": ""})
    points.add({"kl": 0.0, "gold": 0.2}, 10, final=True)
    done = []
    with stages.FileLock(path):  # another run is updating the results
        finisher = threading.Thread(target=lambda: done.append(
            c.finish_run(sft, _Cfg(), [], points, new_sft=True)))
        finisher.start()
        finisher.join(1.0)
        assert finisher.is_alive() and len(rows_of(path)) == 1  # it waits for that run
        new = {"run": "ppo-rm beta=0.02", "algo": "ppo", "step": 0, "kl": 0.0, "gold": 0.3,
               "inputs": {"sft": stages.record_id(sft)}}  # a run of the new π_SFT, finished
        results.write_jsonl(path, rows_of(path) + [new])
    finisher.join(10)
    release(sft)
    assert [r["run"] for r in rows_of(path)] == ["ppo-rm beta=0.02", "sft"]
    aside = glob.glob(str(tmp_path / "results-before-sft-*.jsonl"))
    assert len(aside) == 1 and [r["run"] for r in rows_of(aside[0])] == ["ppo-rm"]
    assert f"waiting for pid {os.getpid()}, which is updating {path}" in capsys.readouterr().out


def test_a_child_build_dies_with_its_parent(tmp_path):
    """SIGKILL to a script that is building its input: the child build gets SIGTERM."""
    child = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    code = ("import sys; from lib import process;"
            f" process.run_child([sys.executable, '-c', {child!r}])")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] == "Z":  # a zombie has ended
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the child (pid {pid}) outlived its parent")


def test_the_ends_of_a_range_are_allowed_and_zero_is_refused_where_it_freezes(tmp_path):
    """γ 0 and λ 0 (the one-step advantage) are in range; a learning rate or a loss weight of 0
    would train nothing, and is refused in one line naming the flag."""
    import ppo, sft
    cfg = c.parse_config(ppo.Config, ppo.__doc__, ppo.CHOICES,
                         argv=["--out", str(tmp_path), "--gamma", "0", "--lam", "0"])
    assert (cfg.gamma, cfg.lam) == (0.0, 0.0)
    for script, flag in ((sft, "--muon-lr"), (ppo, "--vf-coef"), (ppo, "--lr")):
        with pytest.raises(SystemExit):
            c.parse_config(script.Config, script.__doc__, getattr(script, "CHOICES", None),
                           argv=["--out", str(tmp_path), flag, "0"])
    with pytest.raises(SystemExit):
        c.parse_config(sft.Config, sft.__doc__, None,
                       argv=["--out", str(tmp_path), "--n-head", "3", "--n-embd", "64"])


def test_a_relative_out_is_found_again(tmp_path, monkeypatch):
    """require() keeps the id it checked under the stage's absolute path: a load by the relative
    path the user gave finds it (and sees a rebuild meanwhile)."""
    monkeypatch.chdir(tmp_path)
    c.build_model(512, 1, 2, 32, 64).save_pretrained("out/sft")
    write_record("out/sft", "sft-1")
    c.require("out/sft", "sft.py", [])
    assert stages._ids[os.path.abspath("out/sft")] == "sft-1"
    c.load_model("out/sft")  # the id it checked: fine
    write_record("out/sft", "sft-2")
    with pytest.raises(SystemExit):
        c.load_model("out/sft")


def test_the_kl_check_is_every_ranks(monkeypatch):
    """check_kl stops on the mean KL over all ranks (what all_mean gives), so that every rank
    takes the same decision; its own share's alone could disagree."""
    seen = []
    monkeypatch.setattr(c, "all_mean", lambda v, weight=1.0: seen.append(v) or 1e9)
    with pytest.raises(SystemExit):
        c.check_kl(torch.zeros(4), 10.0, 3, "nothing saved")
    assert len(seen) == 1
    monkeypatch.setattr(c, "all_mean", lambda v, weight=1.0: 0.0)
    c.check_kl(torch.full((4,), 1e6), 10.0, 3, "nothing saved")  # the ranks' mean is fine


def test_files_of_the_wrong_shape_stop_with_one_line(tmp_path, capsys):
    """An ensemble.json cut off mid-write or without its members: one line naming it, not a
    traceback; results and failure rows without the keys a reader needs are skipped, said."""
    from experiments import loop
    ens = tmp_path / "ens"
    ens.mkdir()
    for text in ('{"members": ["../m0"], "comb', '{"combine": "mean"}', '[1, 2]',
                 '{"members": ["../m0"], "combine": "mean", "sd": [0]}',
                 '{"members": ["../m0"], "combine": "wco"}'):
        (ens / "ensemble.json").write_text(text)
        with pytest.raises(SystemExit):
            c.load_reward_model(str(ens), None)
        err = capsys.readouterr().err.strip()
        assert "ensemble.json" in err and "\n" not in err, err
    (tmp_path / "failed.jsonl").write_text('{"run": "a"}\n{"run": "b", "error": "KL exploded"}\n')
    assert loop.failures(str(tmp_path)) == {"b": "KL exploded"}
    (tmp_path / "results.jsonl").write_text(
        '{"run": "x", "step": 0, "kl": 0.0, "gold": 0.2}\n'  # no algo: skipped, said
        '{"run": "y", "algo": "dpo", "step": 0, "kl": 0.0, "gold": 0.2}\n')  # no variant: ""
    assert c.read_results(tmp_path / "results.jsonl") == [
        {"run": "y", "algo": "dpo", "variant": "", "step": 0, "kl": 0.0, "gold": 0.2}]
    assert "line 1 is not a results row (no algo)" in capsys.readouterr().err


def test_preference_pairs_longer_than_the_positions_stop_with_one_line(tmp_path, capsys):
    enc = c.tokenizer(512)
    path = tmp_path / "preferences.jsonl"
    pair = {"split": "valid", "prompt_ids": [5, 6], "chosen_ids": [7] * 60, "rejected_ids": [8]}
    path.write_text(json.dumps({**pair, "split": "train"}) + "\n" + json.dumps(pair) + "\n")
    assert len(c.read_preferences(str(path), enc)["train"]) == 1  # no model given: no limit
    with pytest.raises(SystemExit):
        c.read_preferences(str(path), enc, n_positions=64)  # 64 − 8 = 56 < 60
    err = capsys.readouterr().err.strip()
    assert "line 1" in err and "at most 56" in err and "\n" not in err


def test_a_terminal_that_cannot_print_unicode_gets_question_marks(tmp_path):
    """Output to an ASCII-only terminal: "≈", "±" and "→" print as "?" and the run goes on."""
    (tmp_path / "results.jsonl").write_text(
        '{"run": "sft", "algo": "sft", "step": 0, "kl": 0.0, "gold": 0.2, "gold_se": 0.01}\n')
    proc = subprocess.run([sys.executable, "-m", "experiments", "--out", str(tmp_path),
                           "--redraw"], cwd=ROOT, capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"KL \\xe2" not in proc.stdout and b"KL ? 2" in proc.stdout
