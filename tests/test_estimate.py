"""logger.Logger's time estimate, on a simulated clock (slow first steps, then steady steps and
costly evaluations): said once the steps have settled, within 25% of the real time, and
refined a quarter of the way through, once evaluations have been timed; the old rule (the mean
of the first five steps) would have been far off."""
import re

from lib import logger


def test_the_estimate_holds_once_the_steps_have_settled(monkeypatch, capsys, tmp_path):
    total, clock = 400, [0.0]
    monkeypatch.setattr(logger.time, "time", lambda: clock[0])
    evaluates = lambda s: s % 50 == 0 or s == total  # noqa: E731
    log = logger.Logger(tmp_path, total, every=1e9, evaluates=evaluates)
    for step in range(1, total + 1):
        clock[0] += 2.0 if step <= 8 else 0.5  # warming up, then steady
        if evaluates(step):
            clock[0] += 5.0  # an evaluation
        log.log(step, loss=1.0, **({"val_loss": 1.0} if evaluates(step) else {}))
    said = [float(m) * 60 for m in re.findall(r"≈ ([\d.]+) min", capsys.readouterr().out)]
    real = clock[0]
    assert len(said) == 2, said  # once settled, once refined
    settled, refined = (abs(s - real) / real for s in said)
    assert settled < 0.25 and refined < 0.05, (said, real)
    first_five = 2.0 * total  # the old rule: the mean of steps 2–6 times the steps
    assert abs(first_five - real) / real > 0.25
