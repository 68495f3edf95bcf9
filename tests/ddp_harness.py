"""Runs a training script as `python SCRIPT ARGS` would, under torchrun or alone, with checks that
tests/test_parallel.py reads:
- before every gradient average, and once the script's main() is over, the parameters are the
  same, bit for bit, on every rank (else the run fails with one line), and there was at least
  one gradient average;
- on ranks other than 0, an audit hook refuses any write under --out (rank 0 alone writes);
- DDP_FIXED_SAMPLES=1: c.sample draws each response with its own seed (the sampling call and the
  row's place in the global batch) and cuts it to a length of its own, so that one process and
  N ranks get the same samples, and the ranks' shares hold different numbers of tokens;
- DDP_FAIL_AT=k: rank 1 fails at its k-th gradient average (the other ranks must end too).
Rank 0 ends with one line: "harness: N gradient averages, parameters identical on all ranks".
Usage: torchrun --standalone --nproc_per_node 2 tests/ddp_harness.py rloo.py --out DIR …
"""
import hashlib, importlib, itertools, os, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import common as c  # noqa: E402
from lib import parallel, process, sampler  # noqa: E402


def digest(params):
    flat = torch.cat([p.detach().float().flatten().cpu() for p in params])
    return hashlib.sha1(flat.numpy().tobytes()).hexdigest()


def fixed_sampler():
    """c.sample's stand-in: each response drawn with its own seed (the call, and the row's place
    in the global batch) and cut to a length of its own, the same on one process and N ranks."""
    calls = itertools.count()

    def fixed_sample(model, prompt_ids, max_new_tokens, temperature=1.0, generator=None):
        call, first = next(calls), parallel.rank() * len(prompt_ids)
        device = model.lm_head.weight.device
        responses = []
        for i, p in enumerate(prompt_ids):
            noise = torch.Generator(device).manual_seed(100_000 * call + first + i)
            tokens, mask = sampler.sample(model, [p], max_new_tokens, temperature, noise)
            response = tokens[0, tokens.shape[1] - mask.shape[1]:][mask[0]].tolist()
            keep = 1 + (first + i) * 5 % max_new_tokens  # lengths that differ from row to row
            responses.append(response[:keep])
        tokens, mask = c.collate(prompt_ids, responses, model.config.pad_token_id)
        return tokens.to(device), mask.to(device)
    return fixed_sample


def main():
    script, args = sys.argv[1], sys.argv[2:]
    out = os.path.abspath(args[args.index("--out") + 1])
    if parallel.rank() > 0:
        def refuse(event, hook_args):
            path, writes = None, False
            if event == "open":
                path, mode, flags = hook_args
                writes = (mode and any(ch in mode for ch in "wax+")) or \
                    (mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate",
                           "shutil.rmtree", "os.symlink"):
                path, writes = hook_args[0], True
            if writes and isinstance(path, (str, bytes, os.PathLike)) and \
                    os.path.abspath(os.fsdecode(path)).startswith(out):
                raise RuntimeError(f"rank {parallel.rank()} wrote under --out: {event} {path}")
        sys.addaudithook(refuse)

    count, seen = itertools.count(1), {}
    average = c.average_gradients

    def checked_average(params, weight=1.0):
        params = list(params)
        n = next(count)
        seen["params"], seen["n"] = params, n
        if len(set(parallel.gather([digest(params)]))) > 1:
            c.die(f"harness: the parameters differ between ranks before gradient average {n}")
        if os.environ.get("DDP_FAIL_AT") == str(n) and parallel.rank() == 1:
            c.die(f"harness: rank 1 fails on purpose at gradient average {n}")
        return average(params, weight)
    c.average_gradients = checked_average

    if os.environ.get("DDP_FIXED_SAMPLES"):
        c.sample = fixed_sampler()

    sys.argv = [os.path.join(ROOT, script), *args]
    process.run(importlib.import_module(script[:-3]).main)
    if "params" not in seen:
        c.die("harness: the script never averaged its gradients")
    if len(set(parallel.gather([digest(seen["params"])]))) > 1:
        c.die("harness: the parameters differ between ranks at the end")
    if parallel.rank() == 0:
        print(f"harness: {seen.get('n', 0)} gradient averages, parameters identical on all"
              " ranks", flush=True)


if __name__ == "__main__":
    main()
