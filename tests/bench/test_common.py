"""bench.common: the helpers every benchmark relies on measure what they claim."""
import json

from bench.common import (PeakRSS, cli, fmt, markdown_table, machine_info, result, section,
                          time_calls, with_section)


def test_result_ratio_direction():
    fast = result("loader", "open_clip", "samples/s", 300.0, 100.0)
    assert fast["ratio"] == 3.0
    small = result("loss", "naive", "peak MB", 50.0, 200.0, higher_is_better=False)
    assert small["ratio"] == 4.0
    assert result("loss", "naive", "peak MB", 50.0, None)["ratio"] is None
    assert set(fast) == {"name", "peer", "metric", "clipforge", "peer_value", "ratio", "notes"}


def test_peak_rss_sees_a_short_allocation():
    n = 200 * 2**20
    with PeakRSS() as mem:
        buf = bytearray(n)  # zero-filled pages: touched, so resident
        buf[::4096] = b"\1" * len(buf[::4096])
        del buf
    # freed before the block ends: only a high-water mark (or sampling) sees it
    assert 0.9 * n <= mem.extra <= 1.5 * n, mem.extra


def test_time_calls_counts_repeats():
    calls = []
    t = time_calls(lambda: calls.append(1), repeat=3, warmup=2)
    assert len(calls) == 5 and len(t["runs"]) == 3 and t["best"] <= t["median"]


def test_machine_info_names_cpu_and_cores():
    info = machine_info()
    assert info["cpu"] and info["cores"] >= 1 and info["date"].endswith("UTC")


def test_markdown_and_sections():
    table = markdown_table(["a", "b"], [[1234567, 0.012345], [None, "x|y"]])
    assert "| 1,234,567 | 0.0123 |" in table and "| — | x\\|y |" in table
    assert fmt(2.0) == "2" and fmt(1500.4) == "1,500" and fmt(12.345) == "12.3"
    assert fmt(999.7) == "1,000" and fmt(123.4) == "123" and fmt(99.96) == "100" and fmt(0.01234) == "0.0123"
    text = with_section("# T\n", "gpu", "first")
    assert section(text, "gpu") == "first\n"
    text = with_section(text + "tail\n", "gpu", "second")
    assert section(text, "gpu") == "second\n" and text.startswith("# T") and "tail" in text
    assert "first" not in text


def test_cli_prints_and_saves_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli(lambda quick: result("x", "y", "z", 1.0 if quick else 2.0, 1.0), ["--quick", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["clipforge"] == 1.0
    assert '"ratio": 1.0' in capsys.readouterr().out
