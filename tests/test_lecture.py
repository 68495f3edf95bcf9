"""docs/lecture.md names, for each claim of the decks, the code that says it and the test that
fails if that line is wrong: every one it names exists (fast: reads files only)."""
import glob, os, re

from conftest import ROOT

PAGE = os.path.join(ROOT, "docs", "lecture.md")


def defined(path, name):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return re.search(rf"^\s*def {name}\(", f.read(), re.M) is not None


def test_every_named_test_exists():
    text = open(PAGE, encoding="utf-8").read()
    named = set(re.findall(r"(tests/\w+\.py)::(\w+)", text))
    assert len(named) > 40
    missing = [f"{path}::{name}" for path, name in sorted(named) if not defined(path, name)]
    assert not missing, f"docs/lecture.md names tests that do not exist: {missing}"


def test_every_named_function_exists():
    text = open(PAGE, encoding="utf-8").read()
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
    assert not missing, f"docs/lecture.md names code that does not exist: {missing}"
