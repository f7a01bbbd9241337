"""Print the tables of docs/scaling.md, or refresh them in place:

    python -m bench.sizing                         # print every table
    python -m bench.sizing --write docs/scaling.md # refresh the generated sections in place

The formulas are bench/sizing_formulas.py, the tables bench/sizing_tables.py.
"""
import argparse

from bench import sizing_tables
from bench.common import with_section, write_atomic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="print the sizing tables, or refresh them in a doc")
    ap.add_argument("--write", metavar="DOC", help="markdown file whose <!-- sizing-NAME --> sections to refresh")
    args = ap.parse_args(argv)
    tables = {name: fn() for name, fn in sizing_tables.SECTIONS.items()}
    if not args.write:
        for name, table in tables.items():
            print(f"## {name}\n\n{table}")
        return 0
    with open(args.write) as f:
        text = f.read()
    for name, table in tables.items():
        text = with_section(text, f"sizing-{name}", table)
    write_atomic(args.write, text)
    print(f"refreshed {len(tables)} tables in {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
