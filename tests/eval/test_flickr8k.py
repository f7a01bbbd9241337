"""Real photos and human captions: a raw Flickr8k caption table given to --data is converted on the fly
(the converter's own code, into a temp dir) and evaluates exactly like the shards `clipforge convert`
makes from it."""
import json
import tempfile

import pytest

from clipforge.data_pipeline.convert.api import convert
from clipforge.eval.cli import main


@pytest.mark.flickr8k
def test_raw_flickr8k_is_converted_on_the_fly(flickr8k_dir, tiny_model, tmp_path, monkeypatch):
    root, _ = tiny_model
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    table = flickr8k_dir / "originals" / "captions.csv"
    convert([str(table)], str(tmp_path / "shards"), image_size=256, progress=False)
    results = []
    for data in (table, tmp_path / "shards"):
        out = tmp_path / f"{len(results)}.json"
        assert main(["--model", str(root / "export"), "--data", str(data), "--task", "retrieval", "--out", str(out),
                     "--quiet"]) == 0
        results.append(json.loads(out.read_text()))
    raw, shards = results
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary conversion is removed
    kept = tmp_path / "kept"
    assert main(["--model", str(root / "export"), "--data", str(table), "--task", "retrieval", "--quiet",
                 "--convert-dir", str(kept), "--out", str(tmp_path / "kept.json")]) == 0
    assert (kept / "manifest.json").is_file()
    assert json.loads((tmp_path / "kept.json").read_text())["metrics"] == raw["metrics"]
    assert raw["metrics"] == shards["metrics"]
    assert raw["clipforge"]["counts"] == {"images": 300, "captions": 1500}
    # 5 captions per image: chance image->text R@1 = 1 - (1495/1500) = 1/300; text->image R@1 = 1/300
    assert raw["clipforge"]["chance"]["text_retrieval_recall@1"] == pytest.approx(5 / 1500)
    assert raw["clipforge"]["chance"]["image_retrieval_recall@1"] == pytest.approx(1 / 300)
