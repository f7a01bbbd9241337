"""`python -m clipforge.pretrain --config FILE [dotted.key=value ...]` (= `clipforge pretrain`)."""
import sys

from clipforge.pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
