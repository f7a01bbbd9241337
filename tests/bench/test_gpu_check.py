"""The GPU kit's logic on CPU (issue 19): bench/gpu_check.sh's arguments, exit codes and output layout, run
with a fake `python` (no CUDA, or a pretend CUDA whose pytest / bench.gpu / pip only record how they were
called), and the `gpu` marker skipping tests/gpu with its reason, without importing DeepSpeed."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
REASON = "needs CUDA (make gpu-check on a GPU node)"

FAKE_PYTHON = r"""#!/usr/bin/env bash
# A stand-in interpreter: logs its arguments (and the kit's environment) one call a line.
echo "ARGS $* | GPU_CHECK_OUT=${GPU_CHECK_OUT:-} CLIPFORGE_BENCHMARKS=${CLIPFORGE_BENCHMARKS:-} DS_ACCELERATOR=${DS_ACCELERATOR:-}" >> "$FAKE_LOG"
if [ "$1" = "-c" ]; then
    [ "${FAKE_CUDA:-0}" = 1 ] || exit 1          # torch.cuda.is_available() is false
    case "$2" in *get_device_name*) echo "python 3.12.0"; echo "torch 2.11.0 cuda 13.0"; echo "device FakeGPU" ;; esac
    exit 0
fi
case "$1 $2" in
    "-m pytest") [ -n "${FAKE_SLEEP:-}" ] && exec sleep "$FAKE_SLEEP"; echo "fake pytest"; exit "${FAKE_PYTEST_RC:-0}" ;;
    "-m bench.gpu") shift 2; [ "$1" = "--quick" ] && shift; [ "$1" = "--json" ] && echo '{"fake": true}' > "$2"; echo "fake bench"; exit 0 ;;
    "-m pip") echo "fake pip"; exit 0 ;;
esac
exit 99
"""


@pytest.fixture
def fake(tmp_path):
    py = tmp_path / "bin" / "python"
    py.parent.mkdir()
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_CHECK_OUT", "CLIPFORGE_BENCHMARKS")}
    env.update(PYTHON=str(py), FAKE_LOG=str(log))

    def run(*args, cuda=False, timeout=60, **extra_env):
        e = dict(env, FAKE_CUDA="1" if cuda else "0", **extra_env)
        proc = subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=e, cwd=tmp_path, capture_output=True,
                              text=True, timeout=timeout)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, calls
    return run


def test_without_cuda_one_line_exit_2_nothing_written(fake, tmp_path):
    out = tmp_path / "out"
    proc, calls = fake("--out", out)
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and "needs CUDA" in lines[0] and "make gpu-check on a GPU node" in lines[0]
    assert proc.stderr == ""
    assert not out.exists()
    assert len(calls) == 1 and calls[0].startswith("ARGS -c ")   # only the CUDA probe ran
    # the --wheels install never happens on a machine without CUDA
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    proc, calls = fake("--wheels", wheels)
    assert proc.returncode == 2 and len(proc.stdout.splitlines()) == 1 and not any("pip" in c for c in calls)


def test_make_gpu_check_without_cuda_says_so_in_one_line(tmp_path):
    py = tmp_path / "python"
    py.write_text("#!/bin/sh\nexit 1\n")
    py.chmod(0o755)
    proc = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={py}"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout.count("\n") == 1 and "needs CUDA" in proc.stdout


def test_help_and_bad_arguments(fake):
    proc, calls = fake("--help")
    assert proc.returncode == 0 and calls == []
    for opt in ("--out DIR", "--wheels DIR", "--bench-quick", "--time-limit SECONDS", "--skip-tests", "--skip-bench", "GPU_CHECK_OUT",
                "--no-index --find-links DIR"):
        assert opt in proc.stdout, opt
    assert fake("-h")[0].stdout == proc.stdout
    for bad in (["--bogus"], ["--out"], ["--time-limit", "abc"], ["--time-limit", "3"], ["--wheels", "/nonexistent/w"]):
        proc, calls = fake(*bad)
        assert proc.returncode == 64, bad
        assert proc.stderr.startswith("gpu_check: ") and "usage:" in proc.stderr and calls == [], bad


def _summary(out: Path):
    return [line.split()[:2] for line in (out / "summary.txt").read_text().splitlines()]


def test_on_cuda_runs_pytest_then_bench_with_everything_under_the_output_folder(fake, tmp_path):
    out = tmp_path / "o u t"   # a space in the path survives
    proc, calls = fake("--out", out, cuda=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _summary(out) == [["pytest-gpu", "rc=0"], ["bench-gpu", "rc=0"]]
    o = str(out.resolve())
    pytest_call = next(c for c in calls if c.startswith("ARGS -m pytest"))
    assert "-m pytest -m gpu tests/gpu" in pytest_call and f"--basetemp={o}/tmp" in pytest_call
    assert f"--junitxml={o}/pytest.xml" in pytest_call and "DS_ACCELERATOR=cuda" in pytest_call
    assert f"GPU_CHECK_OUT={o}" in pytest_call
    bench_call = next(c for c in calls if c.startswith("ARGS -m bench.gpu"))
    assert f"--json {o}/bench-gpu.json" in bench_call and f"CLIPFORGE_BENCHMARKS={o}/BENCHMARKS.md" in bench_call
    assert calls.index(pytest_call) < calls.index(bench_call)
    # the layout: logs, env, the bench JSON, the BENCHMARKS.md copy bench.gpu rewrites (never the repo's own)
    for name in ("summary.txt", "env.txt", "pytest.log", "bench-gpu.log", "bench-gpu.json", "BENCHMARKS.md"):
        assert (out / name).is_file(), name
    assert (out / "gpu-tests").is_dir()
    assert "fake pytest" in (out / "pytest.log").read_text() and "fake bench" in (out / "bench-gpu.log").read_text()
    assert "device FakeGPU" in (out / "env.txt").read_text()
    assert (out / "BENCHMARKS.md").read_text() == (REPO / "BENCHMARKS.md").read_text()
    assert not any("pip" in c for c in calls)                     # no --wheels: nothing installed
    assert proc.stdout.rstrip().splitlines()[-1].endswith(f"results in {o}")


def test_output_folder_from_the_environment_and_skips(fake, tmp_path):
    out = tmp_path / "from-env"
    proc, calls = fake("--skip-bench", cuda=True, GPU_CHECK_OUT=str(out))
    assert proc.returncode == 0 and _summary(out) == [["pytest-gpu", "rc=0"]]
    assert not any("bench.gpu" in c for c in calls)
    proc, calls = fake("--skip-tests", cuda=True, GPU_CHECK_OUT=str(out))
    assert proc.returncode == 0 and _summary(out) == [["bench-gpu", "rc=0"]]
    assert not any("-m pytest" in c for c in calls)
    proc, calls = fake("--skip-tests", "--bench-quick", cuda=True, GPU_CHECK_OUT=str(out))
    assert proc.returncode == 0 and any(f"-m bench.gpu --quick --json {out}/bench-gpu.json" in c for c in calls)
    assert (out / "bench-gpu.json").is_file()
    proc, _ = fake("--skip-tests", "--skip-bench", cuda=True)      # default folder: runs/gpu-check (in cwd)
    assert proc.returncode == 0 and (tmp_path / "runs" / "gpu-check" / "summary.txt").read_text() == ""


def test_wheels_install_from_the_folder_without_a_registry(fake, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    out = tmp_path / "out"
    proc, calls = fake("--wheels", wheels, "--out", out, "--skip-bench", cuda=True)
    assert proc.returncode == 0
    pips = [c.split(" | ")[0] for c in calls if c.startswith("ARGS -m pip")]
    assert pips == [f"ARGS -m pip install --no-index --find-links {wheels} --no-deps -e ."]
    assert _summary(out) == [["install-clipforge", "rc=0"], ["pytest-gpu", "rc=0"]]
    (wheels / "requirements.txt").write_text("omegaconf\n")
    proc, calls = fake(f"--wheels={wheels}", "--out", out, "--skip-bench", cuda=True)
    pips = [c.split(" | ")[0] for c in calls if c.startswith("ARGS -m pip")]
    assert pips == [f"ARGS -m pip install --no-index --find-links {wheels} -r {wheels}/requirements.txt",
                    f"ARGS -m pip install --no-index --find-links {wheels} --no-deps -e ."]
    assert "fake pip" in (out / "install.log").read_text()
    assert _summary(out)[0] == ["install-deps", "rc=0"]


def test_a_failing_step_exits_1_and_the_bench_still_runs(fake, tmp_path):
    out = tmp_path / "out"
    proc, calls = fake("--out", out, cuda=True, FAKE_PYTEST_RC="1")
    assert proc.returncode == 1
    assert _summary(out) == [["pytest-gpu", "rc=1"], ["bench-gpu", "rc=0"]]


def test_the_wall_time_bound_stops_a_hung_step_with_124(fake, tmp_path):
    out = tmp_path / "out"
    proc, _ = fake("--out", out, "--time-limit", "10", "--skip-bench", cuda=True, FAKE_SLEEP="120", timeout=90)
    assert proc.returncode == 124
    (name, rc), = _summary(out)
    assert name == "pytest-gpu" and rc == "rc=124"
    seconds = int((out / "summary.txt").read_text().split("seconds=")[1].split()[0])
    assert seconds <= 15


def _pytest(*args, **env):
    e = dict(os.environ, CUDA_VISIBLE_DEVICES="", **env)   # no CUDA, even on a GPU machine
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=300)


def test_gpu_marker_skips_every_cuda_test_with_the_reason():
    proc = _pytest("tests/gpu", "-m", "gpu", "-q", "-rs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "passed" not in proc.stdout and "failed" not in proc.stdout
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all(REASON in line for line in skipped)
    n = int(proc.stdout.strip().splitlines()[-1].split()[0])          # "10 skipped in 1.2s"
    assert n >= 10 and "skipped" in proc.stdout.strip().splitlines()[-1]
    # and deselected (not skipped) by the CPU suites' usual selection
    proc = _pytest("tests/gpu", "-m", "not gpu", "-q")
    assert proc.returncode == 5 and "deselected" in proc.stdout     # 5: no tests ran


def test_collecting_the_gpu_tests_imports_no_deepspeed():
    code = ("import sys, pytest; rc = pytest.main(['-q', '--co', '-p', 'no:cacheprovider', 'tests/gpu']); "
            "bad = [m for m in ('deepspeed', 'clipforge.pretrain.run', 'open_clip') if m in sys.modules]; "
            "print('IMPORTED', bad); sys.exit(rc or bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "IMPORTED []" in proc.stdout
