"""The README and docs/ say what the committed data says: every figure and page they embed or
link exists, each page stays short, and every table they quote equals the table recomputed from
the data file it names (fast: reads files, trains nothing)."""
import glob, json, os, re, sys

import pytest

from conftest import ROOT
from experiments import frontier, goodhart

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


def assert_quoted(lines, page):
    """Every data row of a recomputed table (its header and rule excluded) is on the page."""
    missing = [line for line in lines[2:] if line not in table_lines(read(page))]
    assert not missing, f"{os.path.basename(page)} lacks (or misquotes) {missing}"


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
    assert_quoted(lines, os.path.join(DOCS, "results.md"))


def test_seeds_and_goodhart_tables_match_their_files():
    groups = frontier.seed_groups([r for r in rows("results.jsonl") if "kl" in r])
    assert_quoted(frontier.seeds_table(groups), os.path.join(DOCS, "results.md"))
    page = os.path.join(DOCS, "goodhart.md")
    for table in (goodhart.table(rows("goodhart.jsonl")), goodhart.at_kl_table(
            rows("goodhart.jsonl")), goodhart.bon_table(rows("best_of_n.jsonl"))):
        assert_quoted(table, page)


def test_reward_ladder_table_matches_its_file():
    assert_quoted(reward_ladder.table(rows("reward_ladder.jsonl")),
                  os.path.join(DOCS, "results.md"))


def test_readme_defaults_table_matches_the_default_runs():
    data = rows("results.jsonl")
    final = {r["run"]: r for r in data if r.get("final")}
    s = final["sft"]
    lines = ["header", "rule",
             f"| `python sft.py` | `sft` | {s['gold']:.3f} ± {s['gold_se']:.3f} | – | 0 |"]
    for script, run in [("ppo", "ppo-rm"), ("rloo", "rloo-rm"), ("grpo", "grpo-rm"),
                        ("dpo", "dpo-sigmoid")]:
        f = final[run]
        lines.append(f"| `python {script}.py` | `{run}` | {f['gold']:.3f} ± {f['gold_se']:.3f} |"
                     f" {f['proxy']:.3f} | {f['kl']:.1f} |")
    assert_quoted(lines, PAGES[0])


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
