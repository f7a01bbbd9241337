"""`python -m clipforge.data_pipeline.curate ...` (= `clipforge curate`)."""
import sys

from .cli import main

sys.exit(main())
