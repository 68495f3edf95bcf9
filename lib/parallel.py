"""lib/parallel.py: data parallelism under torchrun for every training script (common.py
re-exports it).

`python X.py` is one process, and nothing here changes what it computes. `torchrun
--nproc_per_node N X.py` starts N ranks: each holds the whole model (replicated, not sharded)
and computes on its share of the global batch (--batch-size keeps its meaning at any N); the
gradients are averaged in the one optimiser step, so the weights stay identical on all ranks.
- Random numbers: every rank draws the same ones for what the ranks share (initial weights, data
  order, the prompts of a global batch, of which each takes its share); the sampler's noise is
  each rank's own (sampler.NOISE), so no two ranks sample alike.
- Evaluation: every rank samples the held-out prompts with the evaluation's own seed (the same
  responses everywhere), scores its share of the batches, and the scores are gathered: the same
  numbers as one process.
- Rank 0 alone prints (the others' stdout is closed) and writes: logs, checkpoints, results,
  plots, the stage record. A missing input stage is built by rank 0, as one process, first
  (stages.require), while the others wait for its record. Several machines need one shared --out.
- Backend: nccl on CUDA (a rank's GPU from LOCAL_RANK), gloo on CPU; RLHF_BACKEND overrides.
A rank that fails ends with its one line; torchrun then ends the others on its machine at once
(SIGTERM), and a collective that loses a rank on another machine stops with one line (gloo) or
when NCCL's watchdog times out: not a hang, not a traceback of ours.
"""
import atexit, functools, os, signal, sys

import torch
import torch.distributed as dist

from lib import process, sampler

PARENT = os.getppid()  # torchrun's agent, for a rank: taken at import, before it can die
BACKEND_ENV = "RLHF_BACKEND"  # gloo or nccl, in place of the automatic choice
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def world():
    """How many ranks this run has (torchrun's WORLD_SIZE; 1 for `python X.py`)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def rank():
    """This process's rank, 0 … world() − 1 (0 for `python X.py`)."""
    return int(os.environ.get("RANK", 0))


def _fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def init(seed):
    """Join the other ranks if torchrun started this process (else do nothing). Returns the
    device: cuda:LOCAL_RANK or the CPU."""
    if world() == 1:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if cuda else "gloo")
    if backend not in ("gloo", "nccl") or not dist.is_available() \
            or not dist.is_backend_available(backend) or (backend == "nccl" and not cuda):
        _fail(f"the {backend} backend is not available here"
              + (" (nccl needs CUDA GPUs)" if backend == "nccl" and not cuda else "")
              + f"; set {BACKEND_ENV}=gloo, or unset it for the automatic choice")
    device = torch.device("cpu")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            _fail(f"local rank {local}, but this machine has {torch.cuda.device_count()} GPU(s);"
                  f" give torchrun --nproc_per_node {torch.cuda.device_count()} at most")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    atexit.register(dist.destroy_process_group)
    sampler.NOISE = torch.Generator(device).manual_seed(seed + 1_000_003 * (1 + rank()))
    if rank() > 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks for all; errors still show (stderr)
    # torchrun ends the other ranks with SIGTERM when one fails: at once, even one waiting in a
    # collective (where Python's handler would not run); checkpoints are renamed in whole
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):  # and a rank dies with its torchrun agent, even one
        process.die_with(PARENT)  # killed by SIGKILL, which cannot pass a signal on
    return device


def check_divides(cfg):
    """Refuse a global batch that the ranks cannot share equally (at parse time: one line)."""
    for name in ("batch_size", "minibatch_size"):
        value = getattr(cfg, name, None)
        if value is not None and value % world():
            return f"--{name.replace('_', '-')} {value}: each of the {world()} ranks (torchrun" \
                f" --nproc_per_node {world()}) takes an equal share of it; give a multiple of" \
                f" {world()}"


def _collective(fn):
    """A collective that finds another rank gone ends this one with one line, not a traceback."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, ConnectionError) as e:  # gloo's lost peer is a plain RuntimeError
            if world() == 1 or not (isinstance(e, (dist.DistError, ConnectionError))
                                    or "gloo" in str(e)):
                raise
            why = (str(e).strip().splitlines() or [type(e).__name__])[-1][:100]
            _fail(f"rank {rank()} lost the other ranks ({why}): one of them stopped, and its"
                  " error line says why; finished checkpoints are intact")
    return wrapped


def share(batch):
    """This rank's contiguous share of a global batch (a list or tensor; check_divides made its
    length a multiple of the ranks): the whole batch on one process."""
    assert len(batch) % world() == 0, f"a batch of {len(batch)} for {world()} ranks"
    n = len(batch) // world()
    return batch[rank() * n:(rank() + 1) * n]


@_collective
def gather(items):
    """The lists of all ranks, joined in rank order (a list of picklable things)."""
    if world() == 1:
        return list(items)
    parts = [None] * world()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def split_map(fn, items):
    """[fn(x) for x in items], each rank computing every world()-th item; gathered, in order."""
    items = list(items)
    mine = [fn(x) for x in items[rank()::world()]]
    done = gather([(i, y) for i, y in zip(range(rank(), len(items), world()), mine)])
    return [y for _, y in sorted(done, key=lambda pair: pair[0])]


@_collective
def all_sum(*values):
    """Each value (a number or a 0-d tensor) summed over the ranks: float64 tensors."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in values])
    if world() > 1:
        t = t.to(_device())
        dist.all_reduce(t)
    return list(t.cpu().unbind())


def all_mean(value, weight=1.0):
    """The mean of value over the ranks, each weighted by `weight` (its tokens, say): a float."""
    total, weights = all_sum(torch.as_tensor(value, dtype=torch.float64) * weight, weight)
    return (total / weights).item()


@_collective
def mean_over_ranks(metrics):
    """A dict of numbers, each averaged over the ranks (the same keys on every rank); a value
    that every rank has alike (an evaluation's, the learning rate) stays exactly as it is."""
    if world() == 1:
        return metrics
    mine = torch.tensor([float(v) for v in metrics.values()], dtype=torch.float64)
    every = [torch.zeros_like(mine).to(_device()) for _ in range(world())]
    dist.all_gather(every, mine.to(_device()))
    every = torch.stack(every).cpu()  # (ranks, metrics)
    same = (every == every[0]).all(0)
    return {k: (v if alike else m) for (k, v), alike, m in
            zip(metrics.items(), same.tolist(), every.mean(0).tolist())}


@_collective
def average_gradients(params, weight=1.0):
    """After backward: every rank's gradients become the mean over ranks, each weighted by
    `weight` (rows or tokens of its share: a loss that is a mean over a rank's tokens then
    gives the gradient of the mean over the global batch's), in one all-reduce."""
    if world() == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    w = torch.as_tensor(weight, dtype=torch.float32, device=params[0].device).reshape(1)
    flat = torch.cat([torch.cat([p.grad.flatten() for p in params]) * w, w])
    dist.all_reduce(flat)
    flat = flat[:-1] / flat[-1]
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[:n].view_as(p))
        flat = flat[n:]


def _device():
    return torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")


def child_env():
    """The environment of a child run (a missing stage built first): one process, not a rank,
    with all the CPU's threads (torchrun gives each rank one: OMP_NUM_THREADS=1)."""
    threads = ("OMP_NUM_THREADS",) if world() > 1 and os.environ.get("OMP_NUM_THREADS") == "1" \
        else ()
    return {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV + threads
            and not k.startswith("TORCHELASTIC_")}
