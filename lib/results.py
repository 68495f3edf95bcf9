"""lib/results.py: the shared results file of every run's evaluation points (common.py
re-exports it).

Rows that say what they are (run_key), checked when read, published from a run's record only
when it has finished (finish_run, publish), every update atomic and under a lock, so concurrent
runs lose nothing.
"""
import dataclasses, json, math, os, shutil, sys, time

from lib import parallel
from lib.process import die
from lib.stages import FileLock, finish_stage, read_record, record_id, writing_dir


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


def has(*keys):
    """A check for read_jsonl: a row without one of keys is not one of this file's rows."""
    def check(row):
        missing = [k for k in keys if k not in row]
        return f"no {', '.join(missing)}" if missing else None
    return check


def _not_a_point(row):
    """What keeps a row from being an evaluation point of the results file, or None."""
    if not isinstance(row.get("run"), str):
        return "no run key"
    if not isinstance(row.get("algo"), str):
        return "no algo"
    number = (int, float)
    for key, kinds in (("step", int), ("kl", number), ("gold", number)):
        if isinstance(row.get(key), bool) or not isinstance(row.get(key), kinds):
            return f"no {key}" if key not in row else f"{key} is not a number"
    return None


def read_results(path):
    """The evaluation points of a results file (run, algo, step, kl, gold present; a missing
    variant is the plain one, ""); a row that is not one is skipped with a warning, so a bad line
    never stops a run after its training."""
    return [{"variant": "", **r} for r in read_jsonl(path, _not_a_point)]


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


def read_json(path, **needs):
    """A JSON object with the keys `needs` names, each of its type; else one line saying what is
    wrong with the file (cut off mid-write, or of another shape) and what to do."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except ValueError:
        die(f"{path} is not JSON (cut off mid-write?); delete it and rerun what wrote it")
    wrong = [k for k, kind in needs.items() if not isinstance(obj, dict)
             or not isinstance(obj.get(k), kind)]
    if wrong:
        die(f"{path} lacks {', '.join(wrong)} (or holds another kind of value there); delete it"
            " and rerun what wrote it")
    return obj


def write_jsonl(path, rows):
    """All rows at once: a temporary file, then renamed (an interruption leaves the old file)."""
    with open(str(path) + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(str(path) + ".tmp", path)


def replace_rows(path, run_key, rows):
    """Put a run's rows into the shared results file in place of its earlier ones, atomically
    and under a lock, so concurrent runs lose nothing."""
    with FileLock(path):
        kept = [r for r in read_jsonl(path) if r.get("run") != run_key]  # rows of any kind
        write_jsonl(path, kept + rows)


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
    with FileLock(path):
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
    first four samples to eval_samples.jsonl); finish_run publishes them into the shared results
    file when the run has finished. Rank 0 alone writes them. Creating one first publishes what
    an interrupted earlier run of the stage left unpublished (publish)."""

    def __init__(self, path, run_dir, fields):
        self.path, self.fields, self.rows = path, fields, []
        if parallel.rank() == 0:
            publish(run_dir)
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

# ---------------------------------------------------------------- publishing a finished run
#
# A run's points and its stage become visible together: the stage's record (run.json) is the
# commit point. finish_run writes it first, naming the results file and the run's key, then
# publish() puts the run's points.jsonl into the results file, each row tagged with the record's
# id, the ids of the stages it was built from and its pipeline's short id (pipeline_of). An
# interruption between the two leaves a record whose points are not yet published: the next
# Results of that stage, and the experiments' run loop, publish them (publish is idempotent).
# Points of a run whose π_SFT was rebuilt while it ran are not published: they belong to another
# π_ref than the file's.


def finish_run(stage_dir, cfg, inputs, points=None, new_sft=False):
    """Finish a stage whose run has points: its record (naming them), then publish them.
    new_sft: sft.py's own run, a new π_ref: publish moves the rows of earlier ones aside."""
    if parallel.rank() > 0:
        return
    results = {"file": os.path.relpath(points.path, stage_dir), "run": points.fields["run"],
               "new_sft": new_sft} if points else None
    finish_stage(stage_dir, cfg, inputs, results=results)
    publish(stage_dir, say=True)


def pipeline_of(record):
    """The short id of the pipeline a stage's run came from: its π_SFT's record id (sft.py's own
    run: its own), first 8 hex digits. docs/pipelines.md gives each pipeline's recipe."""
    return (record["inputs"].get("sft") or record["id"])[:8]


def pipeline_at(out):
    """The pipeline of <out>'s π_SFT now (pipeline_of), or None if out/sft is unfinished: for the
    rows an experiment or benchmark writes outside publish()."""
    sft = read_record(os.path.join(out, "sft"))
    return pipeline_of(sft) if sft else None


def publish(stage_dir, say=False):
    """Put a finished stage's points into its results file unless they are there (rows tagged
    with its record's id). Returns whether they are there now."""
    record = read_record(stage_dir)
    spec = (record or {}).get("results")
    if not spec:
        return False
    path = os.path.normpath(os.path.join(stage_dir, spec["file"]))
    sft = os.path.join(os.path.dirname(os.path.normpath(stage_dir)), "sft")
    if "sft" in record["inputs"] and record["inputs"]["sft"] != record_id(sft):
        if say:
            print(f"warning: {sft} was rebuilt (or removed) while this run trained against the one"
                  f" before; its points stay in {stage_dir}/points.jsonl, out of {path}",
                  flush=True)
        return False
    tag = {"record": record["id"], "inputs": record["inputs"], "pipeline": pipeline_of(record)}
    rows = [{**r, **tag} for r in read_jsonl(os.path.join(stage_dir, "points.jsonl"))]
    if not rows:  # (its points file gone: nothing to publish, and nothing published is undone)
        return False
    with FileLock(path):
        now = read_jsonl(path)
        if any(r.get("run") == spec["run"] and r.get("record") == record["id"] for r in now):
            return True  # published already
        if spec.get("new_sft"):  # rows of earlier π_SFTs: not comparable with the new ones
            ours = [(r.get("inputs") or {}).get("sft") == record["id"] for r in now]
            old = [r for r, mine in zip(now, ours) if not mine]
            now = [r for r, mine in zip(now, ours) if mine]
            if old:
                stem, n = os.path.splitext(path)[0] + time.strftime("-before-sft-%Y%m%d-%H%M%S"), 1
                aside = f"{stem}.jsonl"
                while os.path.exists(aside):  # two in one second: a file each
                    aside, n = f"{stem}-{n}.jsonl", n + 1
                write_jsonl(aside, old)
                print(f"new SFT model: earlier results moved to {aside}", flush=True)
        write_jsonl(path, [r for r in now if r.get("run") != spec["run"]] + rows)
    return True
