"""README.md's code runs as written (issue 18: its ``marginalize`` snippet used an undefined name).

Every ```python block of README.md is executed; ```bash blocks are not. The blocks run **in
order, in one shared namespace**, as a reader copies them down the page: the Quickstart defines
``lgssm``, ``ssm`` and ``y`` that later sections use. A block whose fence is preceded by the line
``<!-- readme-test: slow -->`` (invisible on the rendered page) runs only in the slow tier, so
no block of the default run may depend on one: the default test runs the other blocks in order,
the slow test all of them. They run in JAX's default float32, as a user's script does.
Tracebacks point at README.md's own line numbers. The oracle is the README itself: a block must
run without error; the numbers it prints are checked elsewhere in the suite.
"""

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SLOW_MARK = "<!-- readme-test: slow -->"


def python_blocks():
    """[(first line number of the code, code, slow)] for every ```python block, in order."""
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            slow = i > 0 and lines[i - 1].strip() == SLOW_MARK
            blocks.append((i + 2, "\n".join(lines[i + 1:j]), slow))
            i = j
        i += 1
    return blocks


def run_blocks(blocks):
    namespace = {"__name__": "readme"}
    for line, code, _ in blocks:
        # Leading newlines: a traceback's line numbers are README.md's.
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)
    return namespace


def test_every_python_block_is_found():
    text = README.read_text()
    blocks = python_blocks()
    assert len(blocks) == len(re.findall(r"^```python$", text, flags=re.M)) >= 5
    # a slow mark always sits right above a python fence (a mark anywhere else would be ignored)
    assert text.count(SLOW_MARK) == sum(slow for *_, slow in blocks)


def test_readme_fast_blocks_run_in_order(x32):
    fast = [b for b in python_blocks() if not b[2]]
    assert len(fast) >= 3  # the Quickstart among them
    namespace = run_blocks(fast)
    # the Quickstart's round trip: sample's emissions are the model's own shape and filter back
    assert namespace["y"].shape == (100, 10) and namespace["states"].shape == (100, 2)


@pytest.mark.slow
def test_readme_all_blocks_run_in_order(x32):
    run_blocks(python_blocks())


def test_demo_help_says_what_the_model_is(capsys):
    """The CLI help and the README name the demo's model, not the seed task it came from."""
    from ssmppl.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "2-d rotating state" in help_text and "10 noisy channels" in help_text and "T = 100" in help_text
    for text in (help_text, README.read_text()):
        assert not re.search(r"seed[ -]?003", text, flags=re.I)
