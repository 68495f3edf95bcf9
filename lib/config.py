"""lib/config.py: a run's flags, seed, device and precision (common.py re-exports it).

A Config dataclass becomes --flags (range-checked: a bad value ends the run with one line before
anything is written); setup() seeds everything, picks the device and the precision, and says
them in the run's first line; autocast() is bf16 where setup() chose it, else fp32.
"""
import argparse, dataclasses, inspect, math, os, random, re, subprocess, sys

import numpy as np
import torch

from lib import parallel
from lib.process import die


def parse_config(cls, doc, choices=None, argv=None, check=None):
    """Config dataclass → argparse: one --flag per field, its trailing comment as the help. Every
    value is range-checked (RANGES, _out_of_range), then check(cfg), the script's own rules on
    settings that make its formula degenerate: '--flag value: why', or None. A bad value ends
    the run at once, with one line and exit code 2, before anything is written."""
    helps = {name: text.replace("%", "%%")  # argparse would read a bare % as a format
             for name, text in re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls),
                                          re.M)}
    parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.error = bad_value  # argparse's own errors (a bad choice, an unknown flag): one line
    choices = {"precision": PRECISIONS, **(choices or {})}
    for f in dataclasses.fields(cls):
        flag, kind = "--" + f.name.replace("_", "-"), type(f.default)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=helps.get(f.name))
        else:
            parser.add_argument(flag, type=kind, default=f.default, help=helps.get(f.name),
                                choices=choices.get(f.name))
    cfg = cls(**vars(parser.parse_args(argv)))
    for name, value in vars(cfg).items():
        problem = _out_of_range(name, value) or (name == "out" and _unwritable(value))
        if problem:
            bad_value(f"--{name.replace('_', '-')} {value}: {problem}")
    problem = parallel.check_divides(cfg) or _heads_split(cfg) or (check(cfg) if check else None)
    if problem:
        bad_value(problem)
    return cfg


def _heads_split(cfg):
    """What keeps a from-scratch model's width from splitting into its heads, or None."""
    width, heads = getattr(cfg, "n_embd", None), getattr(cfg, "n_head", None)
    if width and heads and width % heads:
        return (f"--n-embd {width} is not divisible by --n-head {heads}: each attention head"
                " takes an equal share of the width; pick a width that is a multiple of it")
    return None


def bad_value(msg):
    """A flag's value that cannot work: one line, exit code 2 (argparse's code for bad flags)."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def _unwritable(out):
    """What keeps a run from writing into the directory `out`, or None."""
    parent = out
    while not os.path.exists(parent):  # the nearest existing ancestor is where it gets created
        parent = os.path.dirname(os.path.abspath(parent))
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a directory; give a directory"
    if parallel.rank() > 0:  # rank 0 makes it (under torchrun rank 0 alone writes)
        return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable"
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        return f"cannot create it ({e.strerror}); give a directory you can write to"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"{out} is not writable; give a directory you can write to"
    return None


MAY_BE_ZERO = {"seed", "warmup", "n_pairs", "rounds"}  # integer flags that may be 0 (others ≥ 1)
# floats that must be > 0: a learning rate or a loss weight of 0 freezes what it scales
MUST_BE_POSITIVE = {"lr", "muon_lr", "vf_coef", "temperature", "clip", "vf_clip", "max_kl"}
HELD_OUT = 1000  # reviews in each of data.py's held-out splits ('valid', 'eval')
RANGES = {  # flags whose value has bounds of its own: (lowest, highest, why)
    "gamma": (0, 1, "a discount above 1 weighs later rewards more and more"),
    "lam": (0, 1, "GAE's λ above 1 weighs later TD errors more and more"),
    "n_ranks": (256, 50256, "GPT-2's BPE has 50256 ranks, the first 256 being the bytes"),
    "n_eval_prompts": (2, HELD_OUT, f"the held-out split has {HELD_OUT} prompts, and a standard"
                       " error needs 2"),
    "n_val_prompts": (1, HELD_OUT, f"the validation split has {HELD_OUT} prompts"),
    "bon_prompts": (2, HELD_OUT, f"the held-out split has {HELD_OUT} prompts"),
}


def _out_of_range(name, value):
    """What is wrong with a flag's value, or None: floats finite and ≥ 0 (> 0 where zero makes no
    sense), counts ≥ 1, and within RANGES."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    low, high, why = RANGES.get(name, (-math.inf, math.inf, ""))
    if not low <= value <= high:
        return f"must be in [{low}, {high}]: {why}"
    if name in MUST_BE_POSITIVE and value <= 0:
        return "must be > 0"
    if isinstance(value, int) and name not in MAY_BE_ZERO and value < 1:
        return "must be at least 1"
    if value < 0:
        return "must not be negative"
    return None


PRECISIONS = ["auto", "fp32", "bf16"]
PRECISION_ENV = "RLHF_PRECISION"  # the precision of a run; its child runs inherit it
_bf16 = {}  # device type → True for bf16 autocast, False for fp32; chosen once by setup()


def native_bf16(device):
    """(does this device compute bf16 natively, in words why): CUDA with bf16 units (Ampere and
    later); a CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and far slower than fp32
    (measured on an AVX2-only CPU: 1.5 against 65 GFLOP/s), so such devices train in fp32."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, torch.cuda.get_device_name(device) + ("" if ok else " has no bf16 units")
    caps = torch.cpu.get_capabilities()  # AVX-512 alone is not enough: it emulates bf16
    found = [name.upper().replace("_", "-") for name in ("avx512_bf16", "amx_bf16")
             if caps.get(name)]
    return bool(found), " and ".join(found) if found else "no native bf16"


def machine():
    """Where this process runs, for a stage's record: the device and its name (a CPU's with what
    decides its precision), the precision, ranks and threads, and the code's commit (None
    outside a git checkout; "-dirty" when tracked files differ from it)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "a CPU"
    if device.type == "cpu" and os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), name)
        name += f" ({native_bf16(device)[1]})"
    root, commit = os.path.dirname(os.path.dirname(os.path.abspath(__file__))), None
    try:
        git = ["git", "-C", root]
        commit = subprocess.run(git + ["rev-parse", "--short=7", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        if subprocess.run(git + ["diff", "--quiet", "HEAD"], timeout=10).returncode:
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"device": device.type, "name": name, "precision": os.environ.get(PRECISION_ENV),
            "ranks": parallel.world(), "threads": torch.get_num_threads(), "commit": commit}


def setup(seed, precision="auto"):
    """Seed everything (every rank alike: parallel.py); pick the device (CUDA if present, else
    CPU; a rank's own under torchrun) and the precision (bf16 autocast where native, else fp32;
    RLHF_PRECISION in the environment overrides 'auto'); say them in the run's first line.
    Returns the device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_float32_matmul_precision("high")
    device = parallel.init(seed)
    if precision == "auto":
        precision = os.environ.get(PRECISION_ENV) or "auto"
    if precision not in PRECISIONS:
        die(f"{PRECISION_ENV}={precision}: use one of {', '.join(PRECISIONS)}")
    native, why = native_bf16(device)
    if precision == "bf16" and not native:
        die(f"--precision bf16: this {device.type} has no native bf16 ({why}), so bf16 would be"
            " emulated and many times slower than fp32; use --precision fp32 or auto")
    _bf16[device.type] = native if precision == "auto" else precision == "bf16"
    os.environ[PRECISION_ENV] = "bf16" if _bf16[device.type] else "fp32"
    if _bf16[device.type]:
        said = f"bf16 autocast (native: {why})"
    else:
        said = f"fp32 (as asked; native bf16: {why})" if native else f"fp32 ({why})"
    ranks = f" × {parallel.world()} ranks" if parallel.world() > 1 else ""
    print(f"device {device.type}{ranks}, {said}", flush=True)
    return device


def autocast(device):
    """bf16 autocast where setup() chose it (native bf16 only), else a no-op: fp32. Parameters
    and optimiser state stay fp32 either way."""
    if device.type not in _bf16:  # setup() not called (unit tests): the automatic choice
        env = os.environ.get(PRECISION_ENV, "auto")
        _bf16[device.type] = native_bf16(device)[0] if env == "auto" else env == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16[device.type])
