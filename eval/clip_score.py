"""CLIP scores of a shard dataset with any model `clipforge eval --model` loads: what `clipforge curate --scores`
(--min-score / --top-fraction) and `--embeddings` (near-duplicate removal) read.

    scored = clip_scores(model, tokenizer, transform, "shards/", batch_size=256)
    write_scores("clip_scores.parquet", scored, {"model": "runs/demo/run"})

clip_score is DataComp's definition: the cosine similarity of the image's embedding with its first caption's
(line 1 of KEY.txt, the primary one), both from the model's own towers, L2-normalised, in float32. Embedding is
eval's (api.embed_share: fixed global batches, every rank embeds its share under torchrun/srun); the scores and
image embeddings are gathered in rank order, which is the dataset's sample order, and rank 0 writes the file.
Every rank holds the gathered [samples, dim] image embeddings for that moment: 2 KB a sample at dim 512.
"""
import json
from dataclasses import dataclass, field
from typing import Dict, List

import torch

from clipforge.atomic import atomic_path
from clipforge.eval.api import embed_share, gather_skips
from clipforge.eval.distributed import comm_for_world
from clipforge.eval.errors import EvalDataError

# the columns `clipforge curate` reads by default (--score-column, --embedding-column)
SCORE_COLUMN, EMBEDDING_COLUMN = "clip_score", "embedding"
DEFINITION = "cosine(image embedding, first caption's embedding), both L2-normalised (DataComp's CLIP score)"


@dataclass
class ClipScores:
    keys: List[str]  # dataset order
    scores: torch.Tensor  # [samples] float32
    image_emb: torch.Tensor  # [samples, dim] float32, unit rows
    skipped: Dict[str, int] = field(default_factory=dict)  # reason -> count: samples with no row
    skipped_examples: Dict[str, str] = field(default_factory=dict)  # reason -> first "shard:key"


def clip_scores(model, tokenizer, transform, data, batch_size: int, device: str = "cpu", precision: str = "fp32",
                workers: int = 0, progress: bool = False) -> ClipScores:
    """Every rank calls it and gets the same result; data is a shard spec or an opened ShardSet."""
    comm = comm_for_world()
    local = embed_share(model, tokenizer, transform, data, batch_size, device, precision, workers, "first_caption",
                        None, progress)
    # "first_caption" embeds exactly one caption per kept image, in the images' order
    assert torch.equal(local.text_to_image, torch.arange(len(local.image_emb))), "one caption per image expected"
    scores = (local.image_emb * local.text_emb).sum(dim=-1)
    keys = [key for part in comm.gather_objects(local.keys) for key in part]
    skipped, examples = gather_skips(comm, local)
    if not keys:
        raise EvalDataError(f"no usable image-caption pair to score (skipped: {skipped or 'none'})")
    return ClipScores(keys, comm.all_gather_cat(scores), comm.all_gather_cat(local.image_emb), skipped, examples)


def write_scores(path: str, scored: ClipScores, provenance: Dict[str, str]) -> None:
    """key, clip_score (float32), embedding (fixed-size list of float32); the definition and `provenance`
    (model, data, precision) in the parquet's metadata under "clipforge". Atomic: a reader never sees half."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    dim = scored.image_emb.shape[1]
    flat = pa.array(scored.image_emb.contiguous().numpy().reshape(-1), type=pa.float32())
    table = pa.table({"key": pa.array(scored.keys, pa.string()),
                      SCORE_COLUMN: pa.array(scored.scores.numpy(), pa.float32()),
                      EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(flat, dim)})
    meta = {"clip_score": DEFINITION, **provenance, "skipped": scored.skipped}
    table = table.replace_schema_metadata({"clipforge": json.dumps(meta)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
