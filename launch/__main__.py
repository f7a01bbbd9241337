"""`python -m clipforge.launch local|slurm ...` (= `clipforge launch`) and `python -m clipforge.launch demo` (= `clipforge demo`)."""
import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["demo"]:
        from clipforge.launch.demo import main as demo_main
        sys.exit(demo_main(sys.argv[2:]))
    from clipforge.launch.commands import main
    sys.exit(main(sys.argv[1:]))
