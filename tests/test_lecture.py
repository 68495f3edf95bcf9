"""docs/lecture.md and its five deck pages (docs/lecture_000.md … lecture_004.md): one row per
claim of each deck, in slide order, each with a verdict of the stated vocabulary; every test and
function a row names exists; every number a row quotes equals its data (fast: reads files only).

A deck page's rows are the lines of its table that start with `| NNN.k |`. A row's *measured*
cell (the fifth) quotes numbers followed by their source in brackets:
  [results.jsonl `run key`]   a data file under docs/ and the run (or reward-ladder name) whose
                              rows hold the number (any numeric field, rounded as quoted);
  [frontier.md]               a page of docs/ whose tables test_docs checks against their data:
                              the number is quoted from it as it stands there.
Numbers after β, τ, λ, γ, ε, "lr" or "clip" are settings, not measurements; integers are not
checked (counts of steps, seeds and pairs).
"""
import glob, json, math, os, re

import pytest

from conftest import ROOT

DOCS = os.path.join(ROOT, "docs")
PAGE = os.path.join(DOCS, "lecture.md")
DECKS = sorted(glob.glob(os.path.join(DOCS, "lecture_0*.md")))
# rows per deck: a row dropped (or two merged) fails here, so a change to the count is a decision
ROWS = {"000": 39, "001": 84, "002": 157, "003": 46, "004": 124}
VERDICTS = ("shown", "partly", "contradicted", "not shown", "not implemented", "out of scope")
SETTING = re.compile(r"(β|τ|λ|γ|ε|\blr|\bclip)\s*(=|≤|≥|<|>)?\s*$")
SOURCE = re.compile(r"\[([\w/-]+\.(?:jsonl|md))((?:\s*`[^`]+`,?)*)\]")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def table_rows(path):
    """{row id: its cells} of a deck page, in page order."""
    rows = {}
    for line in read(path).splitlines():
        if m := re.match(r"\|\s*(\d{3}\.\d+)\s*\|", line):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[m.group(1)] = cells
    return rows


def all_rows():
    return {rid: cells for path in DECKS for rid, cells in table_rows(path).items()}


def numbers_of(path, keys):
    """Every number in the rows of docs/<path> whose run (or name) is one of keys."""
    found = []

    def walk(x):
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)) and math.isfinite(x):
            found.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    with open(os.path.join(DOCS, path), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("run", r.get("name")) in keys:
                walk(r)
    return found


def measured_numbers(text):
    """The decimal numbers of a text that are measurements (not settings after β, lr, …)."""
    return [n.group(0) for n in re.finditer(r"(?<![\w.])−?\d+\.\d+", text)
            if not SETTING.search(text[:n.start()])]


def quoted(cell):
    """[(number as written, the source it names, its keys)] of a measured cell: each number
    belongs to the first source after it; and the numbers after the last source (unsourced)."""
    out, start = [], 0
    for m in SOURCE.finditer(cell):
        keys = re.findall(r"`([^`]+)`", m.group(2))
        out += [(n, m.group(1), keys) for n in measured_numbers(cell[start:m.start()])]
        start = m.end()
    return out, measured_numbers(cell[start:])


def test_five_deck_pages_in_slide_order_with_the_stated_row_counts():
    assert [os.path.basename(p) for p in DECKS] == [f"lecture_{d}.md" for d in ROWS]
    for path, (deck, n) in zip(DECKS, ROWS.items()):
        ids = list(table_rows(path))
        assert ids == [f"{deck}.{k}" for k in range(1, len(ids) + 1)], \
            f"{os.path.basename(path)}: rows out of order or missing: {ids}"
        assert len(ids) == n, f"deck {deck}: {len(ids)} rows, ROWS says {n}"


def test_every_row_has_a_slide_a_claim_and_a_verdict_of_the_vocabulary():
    for rid, cells in all_rows().items():
        assert len(cells) == 6, f"{rid}: {len(cells)} cells, not 6 (# | slide | claim | code ·" \
            " test | measured | verdict)"
        assert cells[1] and cells[2], f"{rid}: no slide title or claim"
        verdict = re.match(r"\*([a-z ]+)\*", cells[5])
        assert verdict and verdict.group(1) in VERDICTS, \
            f"{rid}: the verdict {cells[5][:40]!r} is not one of {VERDICTS}"
    text = read(PAGE)
    for v in VERDICTS:  # the hub states the rule for each
        assert f"*{v}*" in text, f"docs/lecture.md does not define *{v}*"


def test_the_hubs_index_counts_each_pages_rows_and_verdicts():
    index = {m.group(1): [int(x) for x in m.group(2).split(" | ")]
             for m in re.finditer(r"^\| deck (\d{3}) \|[^\n]*?\| (\d+(?: \| \d+){6}) \|$",
                                  read(PAGE), re.M)}
    assert list(index) == list(ROWS)
    for path, deck in zip(DECKS, ROWS):
        verdicts = [re.match(r"\*([a-z ]+)\*", cells[5]).group(1)
                    for cells in table_rows(path).values()]
        counts = [len(verdicts), *(verdicts.count(v) for v in VERDICTS)]
        assert index[deck] == counts, f"docs/lecture.md's index row of deck {deck} does not" \
            f" count its page: it should end | {' | '.join(map(str, counts))} |"


def test_every_quoted_number_equals_its_data():
    wrong, unsourced = [], []
    for rid, cells in all_rows().items():
        pairs, rest = quoted(cells[4])
        unsourced += [f"{rid}: {n}" for n in rest]
        for number, source, keys in pairs:
            value = float(number.replace("−", "-"))
            decimals = len(number.split(".")[1])
            if source.endswith(".md"):
                ok = number in read(os.path.join(DOCS, source))
            else:
                assert keys, f"{rid}: [{source}] names no run"
                data = numbers_of(source, set(keys))
                assert data, f"{rid}: {source} has no rows of {keys}"
                ok = any(abs(round(x, decimals) - value) < 10 ** -decimals / 10 for x in data)
            if not ok:
                wrong.append(f"{rid}: {number} is not in {source} {keys}")
    assert not unsourced, f"numbers with no [source] after them: {unsourced}"
    assert not wrong, "\n".join(wrong)


def test_every_named_test_exists():
    text = "\n".join(read(p) for p in [PAGE, *DECKS])
    named = set(re.findall(r"(tests/\w+\.py)::(\w+)", text))
    assert len(named) > 40
    missing = [f"{path}::{name}" for path, name in sorted(named) if not defined(path, name)]
    assert not missing, f"the lecture pages name tests that do not exist: {missing}"


def defined(path, name):
    return re.search(rf"^\s*def {name}\(", read(os.path.join(ROOT, path)), re.M) is not None


def test_every_named_function_exists():
    text = "\n".join(read(p) for p in [PAGE, *DECKS])
    # `file.py: name`, `file.py: name`, `other` (a list after one file), and `common.name`
    named = set()
    for m in re.finditer(r"`([\w/]+\.py): (\w+)`((?:,\s+`\w+`)*)", text):
        named |= {(m.group(1), n) for n in [m.group(2), *re.findall(r"`(\w+)`", m.group(3))]}
    for module, name in re.findall(r"`(common|sampler)\.(\w+)`", text):
        named.add(("lib/sampler.py" if module == "sampler" else "common.py", name))
    assert len(named) > 30
    # common re-exports lib/; a name it names may live in any of lib's files
    lib = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "lib", "*.py")))
    missing = [f"{p}: {n}" for p, n in sorted(named)
               if not any(defined(q, n) for q in ([p] if p != "common.py" else
                                                  ["common.py", *lib]))]
    assert not missing, f"the lecture pages name code that does not exist: {missing}"


@pytest.mark.parametrize("cell, expected", [
    ("0.311 at KL 1.02 [results.jsonl `sft`]; β 0.1 gives 0.5 [frontier.md]",
     [("0.311", "results.jsonl", ["sft"]), ("1.02", "results.jsonl", ["sft"]),
      ("0.5", "frontier.md", [])]),
    ("lr 3e-4, clip 0.4: 0.246 [measured.jsonl `a`, `b`]",
     [("0.246", "measured.jsonl", ["a", "b"])]),
])
def test_quoted_numbers_are_paired_with_the_source_after_them(cell, expected):
    assert quoted(cell)[0] == expected
