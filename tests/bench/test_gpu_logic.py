"""bench.gpu's logic on CPU (tiny model): batch search, MFU arithmetic, rows, GPU-section render.

The CUDA figures themselves are only measured on a GPU machine (bench/gpu.py writes them)."""
import pytest

from bench.common import fmt, section, with_section
from bench.gpu import largest_batch, measure, render, rows


def _search(limit_ok, start=64, limit=1 << 16, granularity=64):
    calls = []

    def fits(b):
        calls.append(b)
        return b <= limit_ok
    return largest_batch(fits, start, limit, granularity), calls


def test_largest_batch_bisects_to_granularity():
    b, calls = _search(1000)
    assert b == 960                      # largest multiple of 64 that is <= 1000
    assert calls[:6] == [64, 128, 256, 512, 1024, 768]
    assert len(calls) <= 10              # doubling + bisection, not a linear scan


def test_largest_batch_edges():
    assert _search(63)[0] == 0                       # not even the start fits
    assert _search(10 ** 9, limit=4096)[0] == 4096   # everything fits: the cap
    assert _search(5000, limit=4096)[0] == 4096
    assert _search(100, start=100, granularity=1)[0] == 100


@pytest.fixture(scope="module")
def cpu_run():
    return measure(quick=True)


def test_cpu_logic_check_reports_numbers(cpu_run):
    assert cpu_run["cuda"] is False
    (t,) = cpu_run["train"]
    assert t["batch"] == 16 and t["samples_per_s"] > 0 and t["params"] > 1_000_000
    # MFU is exactly model FLOPs x throughput over the measured peak
    assert t["mfu"] == pytest.approx(t["train_flops_per_sample"] * t["samples_per_s"] / cpu_run["peak"])
    assert 0 < t["mfu"] < 1 and 0 <= t["data_wait_fraction"] < 0.05
    for r in cpu_run["loss"]:
        assert r["tiled_status"] == "ok" and r["naive_status"] == "ok" and r["tiled_s"] > 0


def test_the_loader_runs_both_decodes_over_whole_epochs(cpu_run):
    # on CPU the device path decodes on the CPU (data.decode=gpu with device "cpu"): the same code as on CUDA
    assert [r["decode"] for r in cpu_run["loader"]] == ["cpu", "gpu"]
    for r in cpu_run["loader"]:
        assert r["samples"] == 96 and r["workers"] == 1 and r["batch"] == 32
        assert r["samples_per_s"] == pytest.approx(r["samples"] / r["seconds"])


def test_rows_are_labelled_and_section_renders(cpu_run):
    out = rows(cpu_run)
    assert [r["name"] for r in out] == ["gpu-train", "gpu-loss", "gpu-loader"]
    assert all("CPU logic check" in r["metric"] for r in out)
    assert out[1]["ratio"] == pytest.approx(out[1]["peer_value"] / out[1]["clipforge"])
    gpu, cpu = cpu_run["loader"][1]["samples_per_s"], cpu_run["loader"][0]["samples_per_s"]
    assert (out[2]["clipforge"], out[2]["peer_value"]) == (gpu, cpu) and out[2]["ratio"] == pytest.approx(gpu / cpu)
    trainer = cpu_run["train"][0]["samples_per_s"]
    assert out[2]["notes"].endswith("goal loader >= trainer " + ("met" if gpu >= trainer else "not met"))
    body = render(cpu_run)
    assert "| tiny-vit | 16 |" in body and "| 1,024 |" in body
    assert f"| gpu | 1 | 32 | {fmt(gpu)} | {gpu / trainer:.2f}x |" in body
    text = with_section("# clipforge benchmarks\n", "gpu", body)
    assert section(text, "gpu").strip() == body.strip()
