"""clipforge.atomic: the one atomic write (temp beside the target, fsync, rename) every package uses."""
import os
import subprocess

import pytest

from clipforge.atomic import atomic_path, leftover_temporaries, temporary_name, write_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_write_atomic_text_bytes_and_mode(tmp_path):
    write_atomic(str(tmp_path / "a.json"), '{"x": "é"}')
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{"x": "é"}'
    write_atomic(str(tmp_path / "b.bin"), b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    write_atomic(str(tmp_path / "s.sh"), "#!/bin/sh\n", mode=0o755)
    assert os.stat(tmp_path / "s.sh").st_mode & 0o777 == 0o755
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin", "s.sh"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


def test_temporaries_are_hidden_from_shard_globs_and_found_again(tmp_path):
    path = str(tmp_path / "shard-000000.tar")
    tmp = temporary_name(path)
    assert os.path.basename(tmp).startswith(".") and os.path.dirname(tmp) == str(tmp_path)
    open(tmp, "w").close()
    assert leftover_temporaries(path) == [tmp]


def test_no_second_copy_of_the_atomic_write():
    """Every os.replace of a file lives in clipforge/atomic.py (pretrain/checkpoint.py renames a
    checkpoint folder into place)."""
    packages = ["clipforge", "data_pipeline", "modeling", "pretrain", "eval", "launch"]
    out = subprocess.run(["git", "grep", "-n", "--untracked", "os.replace", "--", *packages], cwd=REPO,
                         capture_output=True, text=True).stdout.splitlines()
    places = sorted(line.split(":")[0] for line in out)
    assert places == ["clipforge/atomic.py", "pretrain/checkpoint.py"], out
