"""`python -m clipforge.eval --model M --data D --task retrieval|classification` (= `clipforge eval`)."""
import sys

from clipforge.eval.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
