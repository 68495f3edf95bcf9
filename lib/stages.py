"""lib/stages.py: one writer per directory, and each stage directory's record (common.py
re-exports it).

A stage (out/sft, out/reward_model, …) is finished when its record, run.json, is there: written
last, it names the config and the ids of the stages the run was built from. A rerun writes into
<stage>/.next and moves in when it finishes; require() builds a missing input stage by running
the earlier script as a child process.
"""
import dataclasses, fcntl, json, os, shutil, sys, time, uuid

from lib import parallel
from lib.config import machine
from lib.process import die, run_child

RECORD = "run.json"  # a stage directory's record, written last: its completion mark
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the scripts are

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


class FileLock:
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


def finish_stage(stage_dir, cfg, inputs=(), **extra):
    """Put the run's checkpoints and files in place of the old ones, then the completion mark,
    written last: config, the ids of the stages it was built from (as they were when loaded),
    and extra (results.finish_run: the points it publishes from it). Returns the record."""
    if parallel.rank() > 0:
        return None
    record = {**extra, "id": uuid.uuid4().hex, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
              "config": dataclasses.asdict(cfg), "machine": machine(),
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
    return record


def build_args(cfg):
    """The flags a script's require() passes to the earlier script it builds: its --out and, if
    not 0, its --seed: the pipeline's seed (`python ppo.py --seed 1` on an empty --out builds
    π_SFT and r_φ with seed 1 too)."""
    return ["--out", cfg.out] + (["--seed", str(cfg.seed)] if cfg.seed else [])


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
        if run_child([sys.executable, os.path.join(ROOT, script), *args],
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
