"""The TRL bridge (examples/trl_bridge.py) on the tiny pipeline's out/: TRL's DPO, reward and GRPO
trainers take our models and data as they are. TRL is not in requirements.txt: .ci/run installs
a pinned TRL in an environment of its own and names its Python in RLHF_TRL_PYTHON; without it
this test is skipped."""
import os, subprocess

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
