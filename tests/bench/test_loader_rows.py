"""bench.loader's rows from its measurements (no loader run: _measure_all is stubbed): the open_clip,
MosaicML Streaming and HTTP rows, and the Streaming row skipped with its reason when the peer is not installed."""
import bench.loader as loader


def fake_runs(epochs, rounds, streaming):
    def m(per_cpu, per_wall, **extra):
        return {"samples": 300 * (epochs - 1), "per_cpu_s": per_cpu, "per_wall_s": per_wall, **extra}
    return {"clipforge": [m(900.0, 450.0), m(1000.0, 480.0)], "http": [m(400.0, 200.0, server_ms=1.2)],
            "peer": [m(250.0, 130.0)], "streaming": [m(200.0, 100.0)] if streaming else []}


def rows(monkeypatch, tmp_path, installed: bool):
    (tmp_path / "originals").mkdir()
    (tmp_path / "originals" / "captions.csv").write_text("")
    (tmp_path / "wds" / "webdataset").mkdir(parents=True)
    (tmp_path / "st" / "streaming").mkdir(parents=True)
    monkeypatch.setattr(loader, "FLICKR", tmp_path)
    monkeypatch.setattr(loader, "PEER_PATH", tmp_path / "wds")
    # the skip message names the folder relative to the checkout
    absent = loader.REPO / ".venv-peers" / "absent"  # the skip message names it relative to the checkout
    monkeypatch.setattr(loader, "STREAMING_PATH", tmp_path / "st" if installed else absent)
    monkeypatch.setattr(loader, "_measure_all", fake_runs)
    return {r["name"]: r for r in loader.run(quick=True)}


def test_rows_take_each_loaders_best_round(monkeypatch, tmp_path):
    got = rows(monkeypatch, tmp_path, installed=True)
    assert list(got) == ["loader", "loader-streaming", "loader-http"]
    assert (got["loader"]["clipforge"], got["loader"]["peer_value"], got["loader"]["ratio"]) == (1000.0, 250.0, 4.0)
    assert got["loader-streaming"]["ratio"] == 5.0 and "Streaming 100" in got["loader-streaming"]["notes"]
    http = got["loader-http"]
    assert (http["clipforge"], http["peer_value"], http["ratio"]) == (400.0, 1000.0, 0.4)
    assert "1.20 CPU-ms per sample" in http["notes"]


def test_streaming_row_is_skipped_with_its_reason(monkeypatch, tmp_path):
    row = rows(monkeypatch, tmp_path, installed=False)["loader-streaming"]
    assert row["peer_value"] is None and row["ratio"] is None
    assert row["notes"].startswith("skipped: mosaicml-streaming is not installed in .venv-peers/absent")
