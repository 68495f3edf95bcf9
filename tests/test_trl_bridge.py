"""The TRL bridge (examples/trl_bridge.py) on the tiny pipeline's out/: TRL's DPO, reward and GRPO
trainers take our models and data as they are. TRL is not in requirements.txt: .ci/run installs
a pinned TRL in an environment of its own and names its Python in RLHF_TRL_PYTHON; without it
this test is skipped."""
import os, subprocess, sys

import pytest

from conftest import ROOT, linked_out

TRL_PYTHON = os.environ.get("RLHF_TRL_PYTHON")


@pytest.mark.skipif(not TRL_PYTHON, reason="needs RLHF_TRL_PYTHON, a Python with TRL (.ci/run)")
def test_trl_trains_on_our_out(tmp_path, pipeline):
    out = linked_out(tmp_path, pipeline)
    proc = subprocess.run([TRL_PYTHON, os.path.join(ROOT, "examples", "trl_bridge.py"), "--out",
                           str(out), "--steps", "3"], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    assert f"TRL ran DPO, a reward model and GRPO for 3 steps each on {out}" in said
    assert "'rewards/gold/mean'" in said  # our gold reward, called by TRL's GRPO
    for trainer in ("trl_dpo", "trl_rm", "trl_grpo"):
        assert os.path.isdir(os.path.join(out, trainer))


def test_without_trl_help_works_and_a_run_says_what_is_missing():
    """In this repo's own environment (no TRL): --help, and one line saying how to get TRL."""
    import importlib.util
    if importlib.util.find_spec("trl") and importlib.util.find_spec("datasets"):
        pytest.skip("TRL is installed here")
    bridge = [sys.executable, os.path.join(ROOT, "examples", "trl_bridge.py")]
    assert subprocess.run([*bridge, "--help"], capture_output=True).returncode == 0
    proc = subprocess.run(bridge, capture_output=True, text=True)
    assert proc.returncode == 1 and "trl==1.16.0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
