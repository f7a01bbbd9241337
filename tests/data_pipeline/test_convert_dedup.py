"""--dedup: the first item in input order wins, across shards, with any worker count, and after a resume."""
import os

import pyarrow.parquet as pq

from clipforge.data_pipeline.convert import convert

from .convert_inputs import jpeg, write, write_csv


def _dataset(root):
    # 12 rows over 5 distinct images: copies under other names in later shards.
    distinct = [jpeg(60, 40, seed=i) for i in range(5)]
    order = [0, 1, 2, 0, 3, 1, 4, 2, 0, 3, 4, 4]
    rows = []
    for row, which in enumerate(order):
        write(os.path.join(root, f"f{row}.jpg"), distinct[which])
        rows.append((f"f{row}.jpg", f"row {row}"))
    return write_csv(os.path.join(root, "t.csv"), rows), order


def _statuses(out):
    rows = [r for name in sorted(os.listdir(out)) if name.endswith(".parquet")
            for r in pq.read_table(os.path.join(out, name)).to_pylist()]
    return [r["status"] for r in rows], rows


def test_first_copy_in_input_order_wins_across_shards_and_workers(tmp_path):
    table, order = _dataset(tmp_path)
    expected = ["success" if order.index(which) == row else "duplicate" for row, which in enumerate(order)]
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        summary = convert([table], str(out), dedup=True, workers=workers, samples_per_shard=3, image_size=16,
                          progress=False)
        statuses, rows = _statuses(out)
        assert statuses == expected and summary["written"] == 5 and summary["rejected"] == {"duplicate": 7}
        assert "key 000000000" in rows[3]["error_message"]  # f3 is a copy of f0
        outputs.append({n: (out / n).read_bytes() for n in sorted(os.listdir(out))})
    assert outputs[0] == outputs[1]


def test_resume_remembers_what_complete_shards_hold(tmp_path):
    table, order = _dataset(tmp_path)
    out = tmp_path / "out"
    convert([table], str(out), dedup=True, samples_per_shard=3, image_size=16, progress=False)
    reference = _statuses(out)[0]
    for lost in ((2, 3), (1,)):  # as if killed before shards 2 and 3 were written; as if shard 1 were deleted
        for index in lost:
            for suffix in (".tar", ".parquet", "_stats.json"):
                os.remove(out / f"shard-{index:06d}{suffix}")
        os.remove(out / "manifest.json")
        summary = convert([table], str(out), dedup=True, samples_per_shard=3, image_size=16, progress=False)
        assert summary["skipped_shards"] == 4 - len(lost) and _statuses(out)[0] == reference


def test_without_dedup_copies_are_kept(tmp_path):
    table, order = _dataset(tmp_path)
    summary = convert([table], str(tmp_path / "out"), samples_per_shard=3, image_size=16, progress=False)
    assert summary["written"] == len(order)
