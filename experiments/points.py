"""experiments/points.py: formulas on a run's evaluation points, shared by every experiment's
tables and figures: its gold where its KL first reaches a value, the mean and spread over seeds,
a difference in standard errors, the pipelines a caption names."""
import math


def paths(rows):
    """{run key: its points in step order}."""
    out = {}
    for r in sorted(rows, key=lambda r: r["step"]):
        out.setdefault(r["run"], []).append(r)
    return out


def gold_at_kl(points, kl):
    """A run's gold reward where its KL first reaches kl, linear between the two evaluations
    around it; points: (KL, gold) in step order. None if the run never gets there."""
    for (k0, g0), (k1, g1) in zip(points, points[1:]):
        if k0 <= kl <= k1:
            return g0 if k1 == k0 else g0 + (g1 - g0) * (kl - k0) / (k1 - k0)
    return None


def mean_sd(values):
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    return m, (sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5


def said_pipelines(rows):
    """The pipelines the rows came from, as a caption says them: "pipeline `c168695e`"
    (docs/pipelines.md)."""
    ids = sorted({r.get("pipeline") or "unnamed" for r in rows})
    return ("pipeline " if len(ids) == 1 else "pipelines ") + ", ".join(f"`{p}`" for p in ids)


def in_ses(a, a_se, b, b_se):
    """(a − b) in standard errors of the difference of two independent means."""
    return (a - b) / math.sqrt(a_se ** 2 + b_se ** 2)
