"""Run a clipforge entry point in a child process and report which heavy libraries it had imported when it
exited: "decided before DeepSpeed is imported" asserted as a fact, not as a wall-time budget (a 2 s budget
failed on a loaded machine while the behaviour was right)."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "deepspeed", "open_clip")
# at exit (sys.exit included) the child writes the heavy modules it holds to $CLIPFORGE_TEST_MODULES
_PROBE = ("import atexit, importlib, json, os, sys\n"
          "atexit.register(lambda: open(os.environ['CLIPFORGE_TEST_MODULES'], 'w').write(json.dumps("
          "[m for m in %r if m in sys.modules])))\n"
          "sys.argv = [%r] + sys.argv[1:]\n"
          "sys.exit(importlib.import_module(%r).main(sys.argv[1:]))\n")


def run_entry(module: str, args: Sequence[str], env=None, cwd=None,
              timeout: float = 120) -> Tuple[subprocess.CompletedProcess, Set[str]]:
    """`module.main(args)` as `python -m` would run it -> (the finished process, heavy modules it imported)."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "modules.json")
        full_env["CLIPFORGE_TEST_MODULES"] = out
        result = subprocess.run([sys.executable, "-c", _PROBE % (HEAVY, module, module), *args], cwd=cwd,
                                env=full_env, capture_output=True, text=True, timeout=timeout)
        with open(out) as f:
            return result, set(json.load(f))
