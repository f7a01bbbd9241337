"""`python -m clipforge.pretrain.torchrun TORCHRUN_ARGS`: torchrun (`python -m torch.distributed.run`), except that a
rank failing with a user error (a bad config or path it found, exit 2) ends the job with that rank's one
line and its exit code, instead of torchrun's ~25-line ChildFailedError dump and exit 1.

What `clipforge launch local` runs (launch itself imports no torch; this runs in the child interpreter).
Ranks write such errors into a folder named by CLIPFORGE_RANK_ERRORS (see pretrain.cli.report_error);
every other failure is torchrun's own, unchanged.
"""
import os
import sys
import tempfile
from typing import List, Optional

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from clipforge.pretrain.cli import ERRORS_ENV


def first_reported(folder: str) -> Optional[tuple]:
    """(exit code, line) of the lowest rank that reported a user error, or None."""
    reports = sorted(os.listdir(folder), key=lambda name: int(name[4:-4]) if name[4:-4].isdigit() else 1 << 30)
    for name in reports:
        with open(os.path.join(folder, name)) as f:
            code, _, line = f.read().partition("\n")
        if code.strip().isdigit():
            return int(code), line.strip()
    return None


def main(argv: List[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="clipforge-rank-errors-") as folder:
        os.environ[ERRORS_ENV] = folder   # inherited by the agent's workers
        try:
            torchrun_main(argv)
        except ChildFailedError:
            reported = first_reported(folder)
            if reported is None:
                raise
            code, line = reported
            print(line, file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
