"""In-memory, seeded, resumable batches with the loader's interface (tests only): global batch i is a
pure function of (seed, i); rank r gets rows [r*b, (r+1)*b) of it."""
import torch


class SyntheticLoader:
    def __init__(self, seed: int, global_batch_size: int, rank: int, world_size: int, image_size: int,
                 context_length: int, steps_per_epoch: int = 1000, state=None):
        self.seed, self.global_batch, self.rank, self.world = seed, global_batch_size, rank, world_size
        self.image_size, self.context, self.steps_per_epoch = image_size, context_length, steps_per_epoch
        self.position = 0 if state is None else state["position"]
        self.counters = {"synthetic_skipped": 0}

    def global_batch_at(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        images = torch.randint(0, 256, (self.global_batch, 3, self.image_size, self.image_size), generator=g,
                               dtype=torch.uint8)
        tokens = torch.randint(1, 1000, (self.global_batch, self.context), generator=g)
        tokens[:, -1] = 49407  # an end-of-text token: open_clip pools at argmax(token id)
        return images, tokens

    def __iter__(self):
        b = self.global_batch // self.world
        while self.position < self.steps_per_epoch:
            images, tokens = self.global_batch_at(self.position)
            self.position += 1
            rows = slice(self.rank * b, (self.rank + 1) * b)
            yield {"images": images[rows], "tokens": tokens[rows], "keys": [str(k) for k in range(b)]}

    def state_dict(self):
        return {"position": self.position}


def synthetic_factory(cfg, dist, bundle, state):
    return SyntheticLoader(cfg.train.seed, cfg.train.global_batch_size, dist.rank, dist.world_size,
                           bundle.image_size, bundle.tokenizer.context_length, state=state)
