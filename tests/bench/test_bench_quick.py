"""CI smoke of the benchmark suite: `python -m bench.run_all --quick` on a subset runs end to end,
writes numbers, keeps the GPU section, and reports a missing or failing benchmark instead of dying.
Asserts only that it runs and writes numbers: performance claims live in BENCHMARKS.md, not here."""
import re
import subprocess
import sys

from bench.common import section, with_section

from tests.conftest import REPO

# gpu: its CPU logic check (tiny model); loss: the tiled-loss benchmark (needs no peer install); convert_urls:
# 40 downloads from a loopback server (~10 s; img2dataset's row only where it is installed, Flickr8k's photos
# where present, else a "skipped" row); common: not a benchmark (no run()), so it must FAIL and be reported;
# not_written_yet: MISSING.
SUBSET = ["gpu", "loss", "convert_urls"]


def test_run_all_quick_writes_table(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    # an earlier BENCHMARKS.md: run_all's own parts, then parts other tools write (their prose kept too)
    out.write_text("# old\n\n## Results\n\nold rows\n\n## GPU\n\n" + with_section("", "gpu", "H100 figures from an earlier run")
                   + "\n## Learning\n\nhow the peers ran\n\n" + with_section("", "learning", "side-by-side figures of make bench-learning")
                   + "\n## Downloads\n\n" + with_section("", "downloads", "written by bench.convert_urls"))
    names = SUBSET + ["common", "not_written_yet"]
    proc = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick", "--only", ",".join(names),
                           "--out", str(out), "--timeout", "400"],
                          cwd=REPO, capture_output=True, text=True, timeout=410 * len(names))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()

    # machine line: CPU model and cores, date
    assert re.search(r"- machine: .+, \d+ cores usable", text)
    assert re.search(r"- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC; mode: quick", text)
    # every benchmark that ran wrote a row whose clipforge value is a number
    results = text.split("## Results")[1].split("## Runs")[0]
    for name in SUBSET:
        row = next(ln for ln in results.splitlines() if ln.startswith(f"| {name}"))
        assert re.match(r"\| [\w-]+ \| [^|]+ \| [\d,.]+(e[-+]?\d+)? \|", row), row
    runs = text.split("## Runs")[1].split("## GPU")[0]
    for name in SUBSET:
        assert re.search(rf"\| {name} \| ok \| [\d.]+ \| [\d,.]+ \|", runs), runs
    assert re.search(r"\| common \| failed: exit 1: .*has no attribute 'run'", runs), runs
    assert "| not_written_yet | missing: bench/not_written_yet.py does not exist yet |" in runs
    # the GPU section from another machine survives the rewrite
    assert section(text, "gpu") == "H100 figures from an earlier run\n"
    assert section(text, "learning") == "side-by-side figures of make bench-learning\n"  # hours: kept too
    assert section(text, "downloads") == "written by bench.convert_urls\n"
    assert "how the peers ran" in text and "# old" not in text and "old rows" not in text

    # --only X --keep-others: other benchmarks' last results stay listed, marked with their date
    proc = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick", "--only", "not_written_yet",
                           "--keep-others", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    assert re.search(r"\| loss \| ok \(kept from the run of \d{4}-\d\d-\d\d \d\d:\d\d UTC\) \|", text)
    assert "| loss-time |" in text and "| not_written_yet | missing" in text


def test_strict_fails_on_missing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick", "--strict",
                           "--only", "not_written_yet", "--out", str(tmp_path / "B.md")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "0/1 benchmarks ran" in proc.stdout
