"""Every example printed by every `--help` runs, collected from the help text itself (so they cannot drift).

The examples run in a folder laid out as `clipforge demo` leaves it, made by the `clipforge demo` example
itself at test size (tests/example_runner.py: the folder, the stand-ins for a user's own inputs, the
test-size rewrites, the dry runs for other hosts / slurm). An example no rule covers fails the test: a new
example must be made runnable here.
"""
import re
import shutil
import sys

import pytest

from ..example_runner import DEMO, check, help_examples, known_broken, make_layout, runnable, sh

EXAMPLES = help_examples()

# examples that fail as printed for a reason outside this test (strict xfail: a fix makes them XPASS -> drop
# the entry). None today.
BROKEN = {}


@pytest.fixture(scope="module")
def demo_layout(tmp_path_factory):
    """A working folder after the `clipforge demo` example (a 2-step run in runs/demo/run)."""
    return make_layout(tmp_path_factory.mktemp("user") / "work")


def test_every_help_has_examples_and_each_is_rewritten_to_a_command():
    assert len(EXAMPLES) >= 20 and DEMO in EXAMPLES
    for example in EXAMPLES:
        assert all(c.startswith(sys.executable) for c in runnable(example)), example
    assert set(BROKEN) <= set(EXAMPLES), f"no longer printed (fixed?), drop from BROKEN: {set(BROKEN) - set(EXAMPLES)}"


@pytest.mark.multiprocess
@pytest.mark.parametrize("example", [known_broken(e, BROKEN) for e in EXAMPLES])
def test_example_runs_as_printed(demo_layout, example):
    if example == DEMO:
        return   # demo_layout ran it (and checked its results table)
    # shards/ is what the convert examples write and the eval / verify examples read
    shards = demo_layout / "shards"
    if re.match(r"clipforge convert (?!--merge-only)", example):
        for out in (shards, demo_layout / "flickr30k-test"):
            shutil.rmtree(out, ignore_errors=True)
    elif not shards.exists():
        shutil.copytree(demo_layout / "runs" / "demo" / "shards-val", shards)
    for command in runnable(example):
        check(sh(command, demo_layout), example, command)
