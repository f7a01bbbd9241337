"""pretrain/checkpoint_integrity.py on hand-made checkpoint folders: checksums written, a flipped byte or a
truncated file named, the newest intact checkpoint found past a damaged latest (the trainer's own use of
it, with real DeepSpeed checkpoints: tests/pretrain/test_checkpoint_faults.py)."""
import json
import os

from clipforge.pretrain.checkpoint_integrity import CHECKSUMS, newest_intact, problem, sha256_of, write_checksums


def fake_checkpoint(root, tag: str, payload: bytes = b"weights" * 1000) -> str:
    folder = os.path.join(root, tag)
    os.makedirs(os.path.join(folder, "rng"))
    with open(os.path.join(folder, "mp_rank_00_model_states.pt"), "wb") as f:
        f.write(payload)
    with open(os.path.join(folder, "rng", "rank0.json"), "w") as f:
        f.write("[1, 2, 3]")
    with open(os.path.join(folder, "trainer_state.json"), "w") as f:
        json.dump({"step": int(tag[4:])}, f)
    write_checksums(folder)
    return folder


def test_checksums_list_every_file_with_size_and_sha256(tmp_path):
    folder = fake_checkpoint(tmp_path, "step00000001")
    files = json.loads((tmp_path / "step00000001" / CHECKSUMS).read_text())["files"]
    assert sorted(files) == ["mp_rank_00_model_states.pt", "rng/rank0.json", "trainer_state.json"]
    assert files["rng/rank0.json"] == {"bytes": 9, "sha256": sha256_of(os.path.join(folder, "rng", "rank0.json"))}
    assert problem(folder) is None


def test_a_flipped_byte_is_named_as_a_failed_checksum(tmp_path):
    folder = fake_checkpoint(tmp_path, "step00000001")
    path = os.path.join(folder, "mp_rank_00_model_states.pt")
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"X")
    assert problem(folder) == f"{path}: fails its sha256 checksum (corrupted)"


def test_a_truncated_file_is_named_by_its_size(tmp_path):
    folder = fake_checkpoint(tmp_path, "step00000001")
    path = os.path.join(folder, "mp_rank_00_model_states.pt")
    os.truncate(path, 10)
    assert problem(folder) == f"{path}: 10 bytes, 7000 written (truncated or overwritten)"


def test_missing_files_and_unreadable_checksums_are_named(tmp_path):
    folder = fake_checkpoint(tmp_path, "step00000001")
    os.remove(os.path.join(folder, "rng", "rank0.json"))
    assert problem(folder) == f"{os.path.join(folder, 'rng', 'rank0.json')}: missing"
    with open(os.path.join(folder, CHECKSUMS), "w") as f:
        f.write('{"files": ')
    assert problem(folder).startswith(f"{os.path.join(folder, CHECKSUMS)}: unreadable")
    os.remove(os.path.join(folder, "trainer_state.json"))
    assert "trainer_state.json: missing (an incomplete checkpoint)" in problem(folder)


def test_a_checkpoint_from_before_checksums_is_trusted(tmp_path):
    folder = fake_checkpoint(tmp_path, "step00000001")
    os.remove(os.path.join(folder, CHECKSUMS))
    assert problem(folder) is None


def test_newest_intact_passes_over_a_damaged_latest_and_warns_naming_the_file(tmp_path):
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, f"step{step:08d}")
    bad = tmp_path / "step00000003" / "mp_rank_00_model_states.pt"
    os.truncate(bad, 1)
    path, warnings, cost = newest_intact(str(tmp_path), "step00000003")
    assert path == str(tmp_path / "step00000002")
    assert warnings == [f"checkpoint step00000003 passed over: {bad}: 1 bytes, 7000 written (truncated or overwritten)"]
    assert cost.startswith("3 files, 0.0 MB in ") and cost.endswith(" MB/s)")


def test_newest_intact_never_picks_a_checkpoint_newer_than_latest_and_none_when_all_are_bad(tmp_path):
    for step in (1, 2):
        fake_checkpoint(tmp_path, f"step{step:08d}")
    assert newest_intact(str(tmp_path), "step00000001")[0] == str(tmp_path / "step00000001")
    os.remove(tmp_path / "step00000001" / "trainer_state.json")
    path, warnings, _ = newest_intact(str(tmp_path), "step00000001")
    assert path is None and len(warnings) == 1
    assert newest_intact(str(tmp_path), None) == (None, [], "")
    assert newest_intact(str(tmp_path / "absent"), "step00000001") == (None, [], "")
