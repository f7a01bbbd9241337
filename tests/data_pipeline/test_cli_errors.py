"""`clipforge convert` and `clipforge verify` catch user errors only (clipforge.errors.UserError: one line,
exit 2); a bug inside them -- of any type, ValueError, KeyError and OSError included, which verify used to turn
into "not a readable shard dataset" -- raises with its traceback (exit 1)."""
import json

import pytest

from clipforge.errors import UserFileNotFound
from clipforge.data_pipeline.convert import cli as convert_cli
from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline import verify

from .convert_inputs import caption_table

BUGS = [RuntimeError("bug: step 3 of 2"), ValueError("bug: shape (8, 64) vs (8, 32)"), KeyError("bug_key"),
        OSError("bug: fd closed twice")]


def _raise(error: Exception):
    def broken(*args, **kwargs):
        raise error
    return broken


@pytest.fixture()
def dataset(tmp_path):
    convert([caption_table(tmp_path / "raw", count=2)], str(tmp_path / "out"), image_size=24, progress=False)
    return tmp_path / "out"


@pytest.mark.parametrize("bug", BUGS, ids=lambda error: type(error).__name__)
def test_a_bug_inside_convert_raises_with_its_traceback(bug, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("clipforge.data_pipeline.convert.api.make_plan", _raise(bug))
    with pytest.raises(type(bug)) as raised:
        convert_cli.main([caption_table(tmp_path / "raw", count=2), "--out", str(tmp_path / "out"),
                          "--no-progress"])
    assert raised.value is bug
    assert "clipforge convert: error" not in capsys.readouterr().err


def test_any_user_error_inside_convert_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    # not only ConvertError: every UserError subclass is the user's to fix
    monkeypatch.setattr("clipforge.data_pipeline.convert.api.make_plan", _raise(UserFileNotFound("x.csv: no such file")))
    assert convert_cli.main([caption_table(tmp_path / "raw", count=2), "--out", str(tmp_path / "out"),
                             "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["clipforge convert: error: x.csv: no such file"]


@pytest.mark.parametrize("bug", BUGS, ids=lambda error: type(error).__name__)
def test_a_bug_inside_verify_raises_with_its_traceback(bug, dataset, monkeypatch, capsys):
    monkeypatch.setattr(verify, "check_sample", _raise(bug))
    with pytest.raises(type(bug)) as raised:
        verify.main([str(dataset), "--no-progress"])
    assert raised.value is bug
    assert "is not a readable shard dataset" not in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    (lambda manifest: "{not json", "Expecting property name"),
    (lambda manifest: json.dumps([manifest]), "manifest.json: expected a JSON object"),
    (lambda manifest: json.dumps({**manifest, "format": "webdataset"}), "format is 'webdataset'"),
    (lambda manifest: json.dumps({k: v for k, v in manifest.items() if k != "shards"}), "no 'shards' field"),
    (lambda manifest: json.dumps({**manifest, "shards": [{"name": "shard-000000.tar"}]}),
     "'shards' must be a list of {name, bytes, sha256, samples}"),
], ids=["not-json", "a-list", "other-format", "no-shards", "shard-fields-missing"])
def test_a_damaged_manifest_is_one_line_exit_2(damage, message, dataset, capsys):
    path = dataset / "manifest.json"
    path.write_text(damage(json.loads(path.read_text())))
    assert verify.main([str(dataset), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"clipforge verify: error: {dataset} is not a readable shard dataset")
    assert message in err[0]


def test_a_damaged_parquet_or_sizes_json_is_one_line_exit_2(dataset, capsys):
    (dataset / "sizes.json").write_text("{truncated")
    assert verify.main([str(dataset), "--no-progress"]) == 2
    assert "is not a readable shard dataset" in capsys.readouterr().err
    (dataset / "shard-000000.parquet").write_bytes(b"not a parquet file")
    assert verify.main([str(dataset), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard-000000.parquet" in err[0]
