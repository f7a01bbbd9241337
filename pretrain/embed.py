"""`clipforge embed --model TEACHER --data SHARDS ...`: a distillation teacher's embeddings of every image and
caption of shard datasets, written once beside the shards ("reinforced shards") and read by training with
loss.distill.stored=true (pretrain/distill.py) instead of running the teacher at every step.

    SHARDS/embeddings/teacher-<hash>/   manifest.json (the teacher's identity, the shard manifest's sha256; written
                                        last) + one .npz per shard: per key, its image's embedding and one per
                                        caption (line c of KEY.txt), L2-normalised float32 (data_pipeline/embeddings.py)

Each image goes through the teacher's own val transform, as the live teacher sees it in training
(pretrain/teacher.py); samples without a decodable image are left out (the loader skips them too). Under torchrun
every rank embeds its share of the shards (rank r: shards r, r + W, ...). A store already current for this teacher
and these shards is kept.
"""
import argparse
import sys
import time
from typing import List, Optional

from clipforge.errors import UserError

EPILOG = """examples:
  clipforge embed --model runs/demo/run --data runs/demo/shards-train
  torchrun --standalone --nproc_per_node=2 -m clipforge.pretrain.embed --model runs/demo/run --data runs/demo/shards-train

Then train with loss.distill.teacher=runs/demo/run loss.distill.stored=true (the same teacher: the store is
named after its weights, so any path to them finds it). Exit codes: 0 done, 2 a user error (one line)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipforge embed", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the teacher: anything `clipforge eval --model` accepts "
                                                  "(local-dir:DIR, an export dir, a run dir, a checkpoint dir, ...)")
    p.add_argument("--data", required=True, nargs="+", help="shard dataset folder(s) (`clipforge convert --out`)")
    p.add_argument("--batch-size", type=int, default=64, help="images per teacher forward (default: 64)")
    return p


def encode_shard(teacher, shard_path: str, batch_size: int):
    """-> (keys, captions per key, text float32 [sum captions, D], image float32 [keys, D]) of one tar."""
    import numpy as np
    import torch

    from clipforge.data_pipeline.shards import open_shards
    from clipforge.data_pipeline.stream.decode import DecodeError

    keys, counts, images, texts, views, captions = [], [], [], [], [], []

    def flush():
        image, text = teacher.encode(torch.stack(views), teacher.tokenizer(captions) if captions else
                                     torch.zeros(0, 1, dtype=torch.long))
        images.append(image.cpu().numpy())
        texts.append(text.cpu().numpy())
        views.clear()
        captions.clear()

    for sample in open_shards(shard_path).iter_samples():
        if sample["image_bytes"] is None:
            continue
        try:
            views.append(teacher.view(sample["image_bytes"]))
        except DecodeError:
            continue
        keys.append(sample["key"])
        counts.append(len(sample["captions"]))
        captions.extend(sample["captions"])
        if len(views) == batch_size:
            flush()
    if views:
        flush()
    empty = np.zeros((0, teacher.dim), np.float32)
    return keys, counts, np.concatenate(texts) if texts else empty, np.concatenate(images) if images else empty


def _join():
    """(rank, world, device): the torchrun / srun job's process group (pretrain's one start-up), else a world of one."""
    from clipforge.modeling.distributed import env_from_srun
    from clipforge.pretrain.distributed import init_distributed

    env_from_srun()
    info = init_distributed("auto")
    return info.rank, info.world_size, info.device


def embed(model: str, data: List[str], batch_size: int) -> None:
    import torch.distributed as dist

    from clipforge.data_pipeline import embeddings
    from clipforge.data_pipeline.shards import open_shards
    from clipforge.pretrain.teacher import Teacher
    from clipforge.pretrain.text_cache import build_store

    rank, world, device = _join()
    teacher = Teacher.load(model, device)
    for spec in data:
        tars = [s.name for s in open_shards(spec).shards]
        directory = embeddings.store_dir(spec, teacher.store_name)
        try:
            embeddings.check_store(spec, teacher.store_name, teacher.identity, tars)
            if rank == 0:
                print(f"clipforge embed: {directory} is current (teacher {model})", file=sys.stderr)
            continue
        except embeddings.StaleEmbeddings as why:
            reason = str(why).split(";")[0]
        if dist.is_initialized():
            dist.barrier()  # every rank has checked before rank 0 may delete a stale store
        start = time.perf_counter()
        if rank == 0:
            print(f"clipforge embed: embedding {spec} with {model} ({reason})", file=sys.stderr)
        build_store(spec, teacher.store_name, teacher.identity, lambda path: encode_shard(teacher, path, batch_size),
                    rank, world, teacher.dim, tower="image+text")
        if rank == 0:
            print(f"clipforge embed: wrote {directory} ({len(tars)} shards) in {time.perf_counter() - start:.1f} s; "
                  f"train with loss.distill.teacher={model} loss.distill.stored=true", file=sys.stderr)
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.batch_size < 1:
        print(f"clipforge embed: error: --batch-size {args.batch_size}: must be >= 1", file=sys.stderr)
        return 2
    try:
        embed(args.model, args.data, args.batch_size)
    except UserError as err:  # anything else is a bug: its traceback, exit 1
        print(f"clipforge embed: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
