"""`python -m clipforge.data_pipeline convert|verify|curate ...` (= `clipforge convert|verify|curate`)."""
import importlib
import sys

MODULES = {"convert": "clipforge.data_pipeline.convert.cli", "verify": "clipforge.data_pipeline.verify",
           "curate": "clipforge.data_pipeline.curate.cli"}

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in MODULES:
        sys.exit(importlib.import_module(MODULES[sys.argv[1]]).main(sys.argv[2:]))
    print("usage: python -m clipforge.data_pipeline convert|verify|curate [options]  (see --help of each)", file=sys.stderr)
    sys.exit(2)
