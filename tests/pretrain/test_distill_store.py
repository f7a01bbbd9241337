"""Reinforced shards: `clipforge embed` writes a teacher's image and caption embeddings beside the shards, the loader
hands them out (loss.distill.stored=true), and they equal what the live teacher computes in training (1e-6) and
what open_clip's own load of the export computes one sample at a time; a missing, partial or stale store is
refused with one line naming the `clipforge embed` command that rewrites it. Real tars, a real tiny teacher."""
import io
import os
import shutil

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.data_pipeline import embeddings
from clipforge.data_pipeline.shards import open_shards
from clipforge.data_pipeline.stream import build_train_loader
from clipforge.modeling.config import load_config
from clipforge.modeling.model import resolve_model_config, tokenizer_for
from clipforge.pretrain.distill import setup_distillation
from clipforge.pretrain.embed import main as embed_main
from tests.data_pipeline.conftest import write_dataset
from tests.pretrain.teachers import TINY, write_teacher

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards_and_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-store")
    write_dataset(root / "shards", num_shards=2, per_shard=6, captions_per_sample=3)
    teacher = write_teacher(root / "teacher")
    assert embed_main(["--model", teacher, "--data", str(root / "shards"), "--batch-size", "5"]) == 0
    return root, teacher


def distillation(data, teacher: str, stored: bool):
    cfg = load_config(None, [f"model.name={TINY}", f"data.sources=[{{path: '{data}'}}]", "data.workers=0",
                             "data.captions_per_sample=2", "train.steps=1", "train.global_batch_size=6",
                             f"loss.distill.teacher={teacher}", f"loss.distill.stored={str(stored).lower()}"])
    return cfg, setup_distillation(cfg, CPU)


def loader(cfg, distill):
    return build_train_loader(cfg.data, seed=0, global_batch_size=6, rank=0, world_size=1, image_size=64,
                              tokenizer=tokenizer_for(resolve_model_config(str(TINY))), teacher=distill.inputs)


def test_stored_embeddings_equal_the_live_teacher(shards_and_teacher):
    root, teacher = shards_and_teacher
    cfg, stored = distillation(root / "shards", teacher, stored=True)
    _, live = distillation(root / "shards", teacher, stored=False)
    compared = 0
    for from_store, from_teacher in zip(loader(cfg, stored), loader(cfg, live)):
        assert from_store["keys"] == from_teacher["keys"]
        assert torch.equal(from_store["caption_index"], from_teacher["caption_index"])
        # the teacher sees its own 48-px val view; the student its 64-px train crop
        assert from_teacher["teacher_images"].shape == (6, 3, 48, 48) and from_teacher["images"].shape == (6, 3, 64, 64)
        assert from_store["teacher_text_features"].shape == (12, 64) and "teacher_images" not in from_store
        for key, value in stored.features(from_store, CPU).items():
            torch.testing.assert_close(value, live.features(from_teacher, CPU)[key], rtol=0, atol=1e-6)
        compared += 1
    assert compared == 2


def test_the_store_holds_what_open_clip_computes_one_sample_at_a_time(shards_and_teacher):
    root, teacher = shards_and_teacher
    model, _, preprocess = open_clip.create_model_and_transforms(teacher)
    tokenizer = open_clip.get_tokenizer(teacher)
    _, distill = distillation(root / "shards", teacher, stored=True)
    stored = embeddings.load_shard(embeddings.shard_files(str(root / "shards"), distill.inputs.store[0],
                                                          ["shard-000001.tar"])[0])
    samples = list(open_shards(str(root / "shards" / "shard-000001.tar")).iter_samples())
    assert sorted(stored.rows) == sorted(s["key"] for s in samples) and len(samples) == 6
    with torch.no_grad():
        for sample in samples:
            image = preprocess(Image.open(io.BytesIO(sample["image_bytes"])).convert("RGB"))[None]
            expected = F.normalize(model.eval().encode_image(image), dim=-1)[0].numpy()
            np.testing.assert_allclose(stored.image_vector(sample["key"]), expected, rtol=0, atol=1e-6)
            for c, caption in enumerate(sample["captions"]):
                expected = F.normalize(model.encode_text(tokenizer([caption])), dim=-1)[0].numpy()
                np.testing.assert_allclose(stored.vector(sample["key"], c), expected, rtol=0, atol=1e-6)


def _refusal(cfg, distill) -> str:
    with pytest.raises(embeddings.StaleEmbeddings) as err:
        loader(cfg, distill)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_missing_partial_or_stale_store_is_refused_in_one_line(shards_and_teacher, tmp_path, capsys):
    root, teacher = shards_and_teacher
    data = tmp_path / "shards"
    shutil.copytree(root / "shards", data)  # with its store: this test damages it
    cfg, distill = distillation(data, teacher, stored=True)
    loader(cfg, distill)  # current
    fix = f"run `clipforge embed --model {teacher} --data {data}`"

    other = write_teacher(tmp_path / "other", seed=2)  # another teacher: its store was never written
    assert _refusal(*distillation(data, other, stored=True)).endswith(
        f"no manifest.json (missing or partial store); run `clipforge embed --model {other} --data {data}`")

    directory = embeddings.store_dir(str(data), distill.inputs.store[0])
    os.remove(os.path.join(directory, "shard-000001.npz"))
    assert _refusal(cfg, distill) == f"{directory}: shard-000001.npz is missing (partial store); {fix}"
    capsys.readouterr()
    assert embed_main(["--model", teacher, "--data", str(data)]) == 0
    assert "embedding" in capsys.readouterr().err
    assert embed_main(["--model", teacher, "--data", str(data)]) == 0
    assert "is current" in capsys.readouterr().err

    manifest = data / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")  # the shard dataset changed after the store was written
    assert _refusal(cfg, distill) == f"{directory}: computed for other shards (the dataset's manifest changed); {fix}"


def test_a_sample_the_store_lacks_is_skipped_and_counted(shards_and_teacher, tmp_path):
    root, teacher = shards_and_teacher
    data = tmp_path / "shards"
    shutil.copytree(root / "shards", data)
    cfg, distill = distillation(data, teacher, stored=True)
    path = embeddings.shard_files(str(data), distill.inputs.store[0], ["shard-000000.tar"])[0]
    full = embeddings.load_shard(path)
    keys = sorted(full.rows)[1:]  # the store loses its first sample of this shard
    embeddings.write_shard(os.path.dirname(path), "shard-000000.tar", keys, [full.counts[k] for k in keys],
                           np.concatenate([full.text[full.rows[k]:full.rows[k] + full.counts[k]] for k in keys]),
                           np.stack([full.image_vector(k) for k in keys]))
    train = loader(cfg, distill)
    seen = [key for batch in train for key in batch["keys"]]
    assert sorted(full.rows)[0] not in seen and len(seen) == 11
    assert train.counters == {"missing_stored_embedding": 1}
