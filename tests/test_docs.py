"""The README and docs/ say what the committed data says: every figure and page they embed or
link exists, each page stays short, every table they quote equals the table recomputed from
the data file it names, and every row of data, figure and table names the pipeline (π_SFT and
reward model) it came from, one of docs/pipelines.md (fast: reads files, trains nothing)."""
import glob, json, os, re, sys

import pytest

from conftest import ROOT
from experiments import defaults, frontier, gao, goodhart

sys.path.insert(0, os.path.join(ROOT, "bench"))
import reward_ladder  # noqa: E402

DOCS = os.path.join(ROOT, "docs")
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(DOCS, "*.md")))]


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rows(name):
    return [json.loads(line) for line in open(os.path.join(DOCS, name)) if line.strip()]


def table_lines(md):
    """The markdown table rows of a page, stripped."""
    return {line.strip() for line in md.splitlines() if line.strip().startswith("|")}


def assert_quoted(lines, page, data, several=False):
    """Every data row of a recomputed table (its header and rule excluded) is on the page, and
    the lines just above the table name the pipelines of its data rows: one pipeline, unless
    the table is about several (the defaults' means over three; the reward ladder's two)."""
    assert several or len(pipelines_of(data)) == 1, f"a table of {page} mixes pipelines"
    missing = [line for line in lines[2:] if line not in table_lines(read(page))]
    assert not missing, f"{os.path.basename(page)} lacks (or misquotes) {missing}"
    text = [line.strip() for line in read(page).splitlines()]
    at = text.index(lines[2].strip())
    while at > 0 and text[at - 1].startswith("|"):
        at -= 1
    assert pipelines_of(data) <= named("\n".join(text[max(at - 8, 0):at])), \
        f"{os.path.basename(page)}: the table of {lines[2]!r} does not say its pipeline(s)" \
        f" {sorted(pipelines_of(data))} in the lines above it"


PIPELINES = os.path.join(DOCS, "pipelines.md")
DATA = sorted(glob.glob(os.path.join(DOCS, "**", "*.jsonl"), recursive=True) +
              glob.glob(os.path.join(DOCS, "**", "*.json"), recursive=True))
# each embedded figure → the data file it is drawn from
FIGURES = {"frontier.png": "results.jsonl", "proxy_and_gold.png": "results.jsonl",
           "dpo_epochs.png": "results.jsonl", "online_offline.png": "results.jsonl",
           "epyc-204/online_offline.png": "epyc-204/results.jsonl",
           "seeds.png": "results.jsonl", "full/frontier_full.png": "full/results.jsonl",
           "full/proxy_and_gold_full.png": "full/results.jsonl",
           "goodhart.png": "goodhart.jsonl", "mitigation.png": "goodhart.jsonl",
           "best_of_n.png": "best_of_n.jsonl", "loss_family.png": "measured.jsonl",
           "tax.png": "tax.jsonl", "iterative.png": "measured.jsonl",
           "reward_ladder.png": "reward_ladder.jsonl", "gao_panel.png": "gao.jsonl",
           "gao_family.png": "gao.jsonl", "gao_far.png": "gao_far.jsonl",
           "gao_mitigation.png": "gao_mitigation.jsonl", "gao_stop.png": "gao_stop.jsonl"}


def pipeline_ids():
    """The ids of docs/pipelines.md's table (in backticks, first column)."""
    return set(re.findall(r"^\| `([^`]+)` \|", read(PIPELINES), re.M))


def named(text):
    """The pipelines a text names (their ids in backticks)."""
    return set(re.findall(r"`([^`\s]+)`", text)) & pipeline_ids()


def pipelines_of(data):
    return {r.get("pipeline") for r in data}


def data_rows(path):
    if path.endswith(".json"):
        with open(path) as f:
            return [json.load(f)]
    return rows(os.path.relpath(path, DOCS))


def test_every_data_row_names_a_pipeline_of_the_table():
    ids = pipeline_ids()
    assert DATA and len(ids) >= 4
    for path in DATA:
        unknown = pipelines_of(data_rows(path)) - ids
        assert not unknown, f"{os.path.relpath(path, DOCS)}: rows of pipelines {unknown} that" \
            " docs/pipelines.md does not list"


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_every_figure_draws_one_pipeline_and_its_caption_says_which(page):
    """A figure's data hold one pipeline (the reward ladder two, docs/pipelines.md says why), and
    its caption (the lines around it) names them."""
    lines = read(page).splitlines()
    for i, line in enumerate(lines):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", line):
            png = os.path.relpath(os.path.normpath(os.path.join(os.path.dirname(page), target)),
                                  DOCS)
            shown = pipelines_of(rows(FIGURES[png]))
            assert len(shown) == 1 or png == "reward_ladder.png", \
                f"{png} draws several pipelines: {shown}"
            assert shown <= named("\n".join(lines[max(i - 6, 0):i + 7])), \
                f"{os.path.basename(page)}: the caption of {png} does not name {sorted(shown)}"


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_every_embedded_figure_and_linked_page_exists(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(page)):
        if "://" not in target:
            path = os.path.normpath(os.path.join(os.path.dirname(page), target))
            assert os.path.exists(path), f"{os.path.basename(page)} links {target}: missing"


def test_pages_are_short_and_the_first_figure_is_on_the_first_screen():
    readme = read(PAGES[0]).splitlines()
    assert len(readme) <= 200
    assert any(line.startswith("![") for line in readme[:40])
    for page in PAGES[1:]:
        assert len(read(page).splitlines()) <= 400, page


@pytest.mark.parametrize("out, md", [("docs", "frontier.md"), ("docs/full", "frontier_full.md")])
def test_best_gold_table_is_the_sweeps_own(out, md, tmp_path):
    """frontier.md's table equals the one experiments/frontier.py computes from that folder's
    results.jsonl (the sweep's runs alone), and docs/results.md quotes it."""
    data = [r for r in frontier.c.read_jsonl(os.path.join(ROOT, out, "results.jsonl"))
            if {"algo", "kl", "gold"} <= r.keys()]
    sweep, full, source = frontier.sweep_runs(data, os.path.join(ROOT, out))
    assert full == (out == "docs/full")
    frontier.best_gold_table(sweep, tmp_path / md, source)
    lines = [line for line in read(tmp_path / md).splitlines() if line.startswith("|")]
    assert lines[2:] and set(lines) <= table_lines(read(os.path.join(ROOT, out, md)))
    assert_quoted(lines, os.path.join(DOCS, "results.md"), data)


def test_seeds_and_goodhart_tables_match_their_files():
    data = [r for r in rows("results.jsonl") if "kl" in r]
    assert_quoted(frontier.seeds_table(frontier.seed_groups(data)),
                  os.path.join(DOCS, "results.md"), data)
    page = os.path.join(DOCS, "goodhart.md")
    for table, data in ((goodhart.table(rows("goodhart.jsonl")), rows("goodhart.jsonl")),
                        (goodhart.at_kl_table(rows("goodhart.jsonl")), rows("goodhart.jsonl")),
                        (goodhart.bon_table(rows("best_of_n.jsonl")), rows("best_of_n.jsonl"))):
        assert_quoted(table, page, data)


def test_gao_tables_match_their_files():
    """docs/gao.md quotes the RL table recomputed from gao.jsonl, and best-of-n's from
    gao_best_of_n.jsonl once that part has landed (its own commit)."""
    page = os.path.join(DOCS, "gao.md")
    assert_quoted(gao.rl_table(rows("gao.jsonl")), page, rows("gao.jsonl"))
    if os.path.exists(os.path.join(DOCS, "gao_best_of_n.jsonl")):
        bon = rows("gao_best_of_n.jsonl")
        assert pipelines_of(bon) == pipelines_of(rows("gao.jsonl"))  # (one figure draws both)
        assert_quoted(gao.bon_table(bon), page, bon)
    if os.path.exists(os.path.join(DOCS, "gao_far.jsonl")):  # the design's §7, then §8
        far = rows("gao_far.jsonl")
        for table in (gao.rl_table(far), gao.far_kl_table(far)):
            assert_quoted(table, page, far)
        if os.path.exists(os.path.join(DOCS, "gao_mitigation.jsonl")):
            mit = rows("gao_mitigation.jsonl")
            assert_quoted(gao.mitigation_table(rows("gao.jsonl"), far, mit), page, mit + far)
        if os.path.exists(os.path.join(DOCS, "gao_stop.jsonl")):  # §10
            stop = rows("gao_stop.jsonl")
            table, summary = gao.stop_table(far, stop)
            assert_quoted(table, page, stop + far)
            assert all(line in read(page) for line in summary), summary


def test_reward_ladder_table_matches_its_file():
    assert_quoted(reward_ladder.table(rows("reward_ladder.jsonl")),
                  os.path.join(DOCS, "results.md"), rows("reward_ladder.jsonl"), several=True)


def test_readme_defaults_tables_are_the_default_runs_over_three_pipelines():
    data = rows("defaults.jsonl")
    assert len(defaults.pipelines(data)) == 3
    table = defaults.table(data)
    gap = table.index("")
    for part in (table[:gap], table[gap + 1:]):
        assert_quoted(part, PAGES[0], data, several=True)
    finals = defaults.finals(data)
    assert {"ppo", "rloo", "grpo", "dpo", "sft", "reward_model"} <= finals.keys()
    for algo, seeds in finals.items():  # every script's final point on each pipeline
        assert sorted(seeds) == [0, 1, 2], algo


def test_the_defaults_hold_their_floors():
    """Issue 44's floors, as means over the three pipelines: SFT's bits/byte, the reward model's
    accuracy against the gold order, PPO's final gold and KL."""
    held = defaults.floors(rows("defaults.jsonl"))
    assert all(ok for *_, ok in held.values()), held


def test_every_command_the_pages_give_runs_a_file_that_exists_with_flags_it_takes():
    """`python X.py …` names a file of the repo; `python -m experiments …` passes flags its Config
    takes (the layout moved the experiments: an old command fails here, not on a reader)."""
    import experiments.__main__ as entry
    from experiments.loop import Config
    from lib.config import parse_config
    seen = 0
    for page in PAGES:
        text = read(page)
        for path in re.findall(r"python3? ((?:[\w]+/)*\w+\.py)\b", text):
            assert os.path.exists(os.path.join(ROOT, path)), f"{os.path.basename(page)}: {path}"
        flat = re.sub(r"\s*\n\s*", " ", text)  # a command may wrap in prose
        for args in re.findall(r"python -m experiments([^`#)]*)", flat):
            args = args.split()
            if "…" in args or "NAME" in args or any("." in a and "/" not in a for a in args):
                continue  # an elided or prose command
            parse_config(Config, "", entry.CHOICES, argv=args)  # a bad flag exits: the test fails
            seen += 1
    assert seen >= 10
