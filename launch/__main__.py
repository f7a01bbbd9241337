"""`python -m launch local|slurm ...` (= `clipforge launch`) and `python -m launch demo` (= `clipforge demo`)."""
import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["demo"]:
        from launch.demo import main as demo_main
        sys.exit(demo_main(sys.argv[2:]))
    from launch.commands import main
    sys.exit(main(sys.argv[1:]))
