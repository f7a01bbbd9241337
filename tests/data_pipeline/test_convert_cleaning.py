"""Caption cleaning and the size/aspect filters."""
import json

import pyarrow.parquet as pq

from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.convert.captions import clean_caption, clean_captions
from clipforge.data_pipeline.convert.cli import main

from .convert_inputs import jpeg, read_shards, write


def test_clean_caption_fixes_mojibake_and_whitespace():
    assert clean_caption("  a  cafÃ©\tby the\nsea  ") == "a café by the sea"
    assert clean_caption("cafe\u0301") == "café"  # combining accent -> one NFC code point
    assert clean_captions(["", " a dog ", "\t"]) == (["a dog"], "", "")
    assert clean_captions([" ", ""])[1] == "empty_caption"
    assert clean_captions([])[1] == "empty_caption"


def test_filters_reject_small_and_elongated_images_with_reasons(tmp_path):
    sizes = {"ok": (80, 60), "small": (30, 20), "long": (200, 40)}
    for name, size in sizes.items():
        write(tmp_path / "in" / f"{name}.jpg", jpeg(*size, seed=1))
        write(tmp_path / "in" / f"{name}.txt", f"a {name} picture".encode())
    summary = convert([str(tmp_path / "in")], str(tmp_path / "out"), min_size=32, max_aspect_ratio=3.0,
                      image_size=32, progress=False)
    assert summary["written"] == 1 and summary["rejected"] == {"filtered": 2}
    assert summary["reasons"] == {"filtered: under --min-size": 1, "filtered: over --max-aspect-ratio": 1}
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in pq.read_table(tmp_path / "out" / "shard-000000.parquet").to_pylist()}
    assert "ratio 5.00 > 3.0" in rows["long.jpg"]["error_message"]
    assert "shorter side < 32" in rows["small.jpg"]["error_message"]
    (sample,) = read_shards(tmp_path / "out").values()
    assert json.loads(sample["json"])["captions"] == ["a ok picture"]


def test_image_without_sidecar_is_recorded_not_lost(tmp_path):
    write(tmp_path / "in" / "lonely.jpg", jpeg(40, 30, seed=1))
    write(tmp_path / "in" / "ok.jpg", jpeg(40, 30, seed=2))
    write(tmp_path / "in" / "ok.txt", b"fine")
    summary = convert([str(tmp_path / "in")], str(tmp_path / "out"), image_size=16, progress=False)
    assert summary["written"] == 1 and summary["rejected"] == {"empty_caption": 1}


def test_cli_summary_lists_rejections_by_reason(tmp_path, capsys):
    write(tmp_path / "in" / "a.jpg", b"")
    write(tmp_path / "in" / "a.txt", b"empty image")
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress"]) == 1  # nothing written
    out = capsys.readouterr().out
    assert "1 input items -> 0 written, 1 rejected" in out and "1  failed_to_read: empty file" in out
    assert main(["--out", str(tmp_path / "o2")]) == 2
    assert "no INPUT given" in capsys.readouterr().err
