"""parallel.py's reductions on real ranks, checked against the same numbers pooled by hand; run
by tests/test_parallel.py as `torchrun --standalone --nproc_per_node 3 tests/ddp_reductions.py`.
Rank r holds its own made-up data; rank 0 prints "reductions: ok" if every check passed."""
import os, sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import common as c  # noqa: E402
from lib import parallel  # noqa: E402

parallel.init(seed=0)
r, n = parallel.rank(), parallel.world()
data = [torch.arange(3.0) + 10 * k for k in range(n)]  # rank k's values
masks = [torch.tensor([1.0, 1.0, 0.0]) if k == 0 else torch.ones(3) for k in range(n)]
pooled = torch.cat([x[m > 0] for x, m in zip(data, masks)])

# a mean over every rank's real tokens, and a mean weighted by each rank's count
assert abs(c.masked_mean(data[r], masks[r], all_ranks=True).item() - pooled.mean().item()) < 1e-6
assert abs(c.all_mean(data[r].mean().item(), masks[r].sum()) -
           sum(x.mean().item() * m.sum().item() for x, m in zip(data, masks)) /
           sum(m.sum().item() for m in masks)) < 1e-9

# metrics: a value that differs is averaged; one that every rank has alike stays exactly
alike = 0.8444218515250481  # the mean of three copies of it is not exactly it
means = parallel.mean_over_ranks({"mine": float(r), "alike": alike})
assert means == {"mine": sum(range(n)) / n, "alike": alike}

# gradients: the mean over ranks, each weighted by its tokens
w = torch.nn.Parameter(torch.zeros(3))
(w * data[r]).sum().backward()
parallel.average_gradients([w], weight=masks[r].sum())
expected = sum(x * m.sum() for x, m in zip(data, masks)) / sum(m.sum() for m in masks)
assert torch.allclose(w.grad, expected), (w.grad, expected)

# gathering in rank order; split_map in item order, each item computed by one rank
assert parallel.gather([r, r]) == [k for k in range(n) for _ in range(2)]
assert parallel.split_map(lambda i: (i, parallel.rank()), range(5)) == \
    [(i, i % n) for i in range(5)]
assert parallel.share(list(range(2 * n))) == [2 * r, 2 * r + 1]
if r == 0:
    print("reductions: ok", flush=True)
