"""Hard negatives (data.hard_negatives, NegCLIP): the loss against a naive per-sample reference on hand-made
batches -- one caption per image, several captions, an image drawn twice, and on 2 gloo ranks (global and local
loss) -- and each image's negatives are scored against that image only."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipforge.modeling.config import LossConfig
from clipforge.pretrain.loss import ContrastiveLoss, build_loss
from tests.pretrain.test_gather_dist import spawn_gloo


def naive_negclip(image, text, negatives, scale, bias, image_ids, text_ids):
    """Term by term, in plain Python. Image i's row: each positive pair's CE over itself, the row's non-positive
    captions and image i's own H negatives; a caption's row: over itself and its non-positive images (no negatives)."""
    z = [[scale * (image[i] @ text[j]) + bias for j in range(len(text_ids))] for i in range(len(image_ids))]
    image_terms, text_terms = [], []
    for i, owner in enumerate(image_ids):
        own = [scale * (image[i] @ negatives[i, h]) + bias for h in range(negatives.shape[1])]
        others = [z[i][k] for k, c in enumerate(text_ids) if c != owner]
        for j, c in enumerate(text_ids):
            if c == owner:
                image_terms.append(torch.logsumexp(torch.stack([z[i][j], *others, *own]), 0) - z[i][j])
    for j, c in enumerate(text_ids):
        others = [z[i][j] for i, owner in enumerate(image_ids) if owner != c]
        for i, owner in enumerate(image_ids):
            if owner == c:
                text_terms.append(torch.logsumexp(torch.stack([z[i][j], *others]), 0) - z[i][j])
    return (sum(image_terms) / len(image_terms) + sum(text_terms) / len(text_terms)) / 2


def features(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def batch(image_ids, captions_per_image, hard, seed=0):
    image = features(len(image_ids), 8, seed=seed)
    text = F.normalize(image.repeat_interleave(captions_per_image, 0)
                       + 0.7 * features(len(image_ids) * captions_per_image, 8, seed=seed + 1), dim=-1)
    negatives = F.normalize(image[:, None] + features(len(image_ids), hard, 8, seed=seed + 2), dim=-1)  # hard: near
    return image, text, negatives


@pytest.mark.parametrize("image_ids,captions_per_image,hard", [
    ([0, 1, 2, 3, 4], 1, 3),      # the plain loss's path (no ids passed)
    ([10, 11, 12], 2, 2),         # two captions of each image (data.captions_per_sample=2)
    ([10, 11, 10, 12], 1, 1),     # image 10 drawn twice: the several-positives path
])
def test_equals_the_naive_reference(image_ids, captions_per_image, hard):
    image, text, negatives = (t.requires_grad_() for t in batch(image_ids, captions_per_image, hard))
    scale = torch.tensor(math.exp(2.5), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor(image_ids)
    text_ids = ids.repeat_interleave(captions_per_image)
    given = {} if len(set(image_ids)) == len(image_ids) and captions_per_image == 1 else \
        {"image_ids": ids, "text_ids": text_ids}
    got = ContrastiveLoss(LossConfig())(image, text, scale, bias, negative_features=negatives, **given)
    want = naive_negclip(image, text, negatives, scale, bias, ids.tolist(), text_ids.tolist())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, (image, text, negatives, scale, bias)),
                    torch.autograd.grad(want, (image, text, negatives, scale, bias))):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    without = ContrastiveLoss(LossConfig())(image, text, scale, bias, **given)
    assert got > without  # hard negatives near their image make its row harder


def test_negatives_meet_their_own_image_only():
    """d loss / d N_ih is a multiple of I_i: no other image is scored against image i's negatives."""
    image, text, negatives = batch([0, 1, 2, 3], 1, 2)
    negatives.requires_grad_()
    loss = ContrastiveLoss(LossConfig())(image, text, torch.tensor(10.0, dtype=torch.float64), None,
                                         negative_features=negatives)
    (grad,) = torch.autograd.grad(loss, negatives)
    along = (grad * image[:, None]).sum(-1, keepdim=True) * image[:, None]  # the part along the own image
    assert along.abs().max() > 1e-3
    torch.testing.assert_close(grad, along, rtol=0, atol=1e-15)


@pytest.mark.parametrize("cfg", [LossConfig(impl="tiled"), LossConfig(kind="siglip")], ids=["tiled", "siglip"])
def test_losses_without_hard_negatives_refuse_them(cfg):
    image, text, negatives = batch([0, 1], 1, 1)
    with pytest.raises(ValueError, match="hard negatives need loss.kind=infonce loss.impl=naive"):
        ContrastiveLoss(cfg)(image, text, torch.tensor(10.0, dtype=torch.float64), None, negative_features=negatives)


def _mean_over_ranks(t, world):
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world


def _ranks_worker(rank: int, world: int, sizes: list) -> None:
    """Each rank holds its images' rows and their negatives; the reference sees the whole batch. Convention
    (pretrain/loss.py): mean over ranks of the losses = the full loss; rank r's gradients / world = its rows'."""
    start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
    for local_loss, captions in ((False, 1), (True, 1), (False, 2)):
        image_ids = list(range(sum(sizes)))
        full = [t.requires_grad_() for t in batch(image_ids, captions, 2, seed=3)]
        scale = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
        ids = torch.tensor(image_ids)
        text_ids = ids.repeat_interleave(captions)
        want = naive_negclip(*full, scale, 0.0, image_ids, text_ids.tolist())
        want_grads = torch.autograd.grad(want, full + [scale])

        rows = [(start, stop), (start * captions, stop * captions), (start, stop)]  # image, text, negatives
        mine = [t.detach()[a:b].clone().requires_grad_() for t, (a, b) in zip(full, rows)]
        given = {} if captions == 1 else {"image_ids": ids[start:stop], "text_ids": text_ids[rows[1][0]:rows[1][1]]}
        loss_fn = build_loss(LossConfig(local_loss=local_loss), rank, world)
        got = loss_fn(mine[0], mine[1], scale, None, negative_features=mine[2], **given)
        grads = torch.autograd.grad(got, mine + [scale])
        case = f"local_loss={local_loss} captions={captions} rank {rank}"
        torch.testing.assert_close(_mean_over_ranks(got, world), want.detach(), rtol=0, atol=1e-12, msg=case)
        for g, w, (a, b) in zip(grads, want_grads, rows):
            torch.testing.assert_close(g / world, w[a:b], rtol=0, atol=1e-12, msg=case)
        torch.testing.assert_close(_mean_over_ranks(grads[3], world), want_grads[3], rtol=0, atol=1e-12, msg=case)


@pytest.mark.multiprocess
def test_two_ranks_equal_the_reference():
    spawn_gloo(_ranks_worker, 2, [2, 3])
