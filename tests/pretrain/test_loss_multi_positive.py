"""Several positives per image (data.captions_per_sample, an image drawn twice): the loss against a
naive per-pair reference on hand-made batches, and the plain loss where nothing repeats."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.modeling.config import LossConfig
from clipforge.pretrain.loss import ContrastiveLoss


def naive_multi_positive(image, text, scale, image_ids, text_ids):
    """Pair by pair, in plain Python: each positive pair's CE over itself and the row's negatives."""
    logits = scale * image @ text.T
    def side(z, row_ids, col_ids):
        terms = []
        for i in range(z.shape[0]):
            negatives = [z[i, k] for k in range(z.shape[1]) if col_ids[k] != row_ids[i]]
            for j in range(z.shape[1]):
                if col_ids[j] == row_ids[i]:
                    denominator = torch.logsumexp(torch.stack([z[i, j], *negatives]), dim=0)
                    terms.append(denominator - z[i, j])
        return torch.stack(terms).mean()
    return (side(logits, image_ids, text_ids) + side(logits.T, text_ids, image_ids)) / 2


def features(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("image_ids,captions_per_image", [
    ([10, 11, 12, 13], 3),          # three captions of each image
    ([10, 11, 10, 12, 11], 2),      # images 10 and 11 drawn twice (resampled mode / a source mixed in twice)
    ([7, 7, 7], 1),                 # one image three times: no negatives at all -> loss 0, finite gradient
])
def test_equals_the_naive_reference(image_ids, captions_per_image):
    image = features(len(image_ids)).requires_grad_()
    text = features(len(image_ids) * captions_per_image, seed=1).requires_grad_()
    ids = torch.tensor(image_ids)
    text_ids = ids.repeat_interleave(captions_per_image)
    scale = torch.tensor(math.exp(2.0), dtype=torch.float64, requires_grad=True)
    got = ContrastiveLoss(LossConfig())(image, text, scale, None, image_ids=ids, text_ids=text_ids)
    want = naive_multi_positive(image, text, scale, ids.tolist(), text_ids.tolist())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(got, (image, text, scale))
    want_grads = torch.autograd.grad(want, (image, text, scale))
    for g, w in zip(grads, want_grads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_own_captions_are_never_negatives():
    """Moving an image's second caption closer to the image lowers the loss (a negative would raise it)."""
    image = features(2)
    text = torch.cat([image[:1], features(1, seed=5), image[1:], features(1, seed=6)])  # 2 captions each
    ids, text_ids = torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1])
    loss = ContrastiveLoss(LossConfig())
    before = loss(image, text, torch.tensor(10.0, dtype=torch.float64), None, image_ids=ids, text_ids=text_ids)
    text[1] = F.normalize(image[0] + 0.1 * text[1], dim=-1)
    after = loss(image, text, torch.tensor(10.0, dtype=torch.float64), None, image_ids=ids, text_ids=text_ids)
    assert after < before


def test_distinct_single_captions_give_exactly_the_plain_loss():
    image, text = features(6), features(6, seed=3)
    ids = torch.arange(100, 106)
    scale = torch.tensor(20.0, dtype=torch.float64)
    loss = ContrastiveLoss(LossConfig())
    assert torch.equal(loss(image, text, scale, None, image_ids=ids, text_ids=ids), loss(image, text, scale))


def test_siglip_labels_every_positive_pair():
    image, text = features(3), features(6, seed=2)
    ids, text_ids = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1, 1, 2, 2])
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)
    got = ContrastiveLoss(LossConfig(kind="siglip"))(image, text, scale, bias, image_ids=ids, text_ids=text_ids)
    logits = scale * image @ text.T + bias
    signs = torch.where(ids[:, None] == text_ids[None, :], 1.0, -1.0).double()
    torch.testing.assert_close(got, -F.logsigmoid(signs * logits).sum() / 3, rtol=0, atol=1e-12)


def test_mismatched_rows_without_ids_are_refused():
    with pytest.raises(ValueError, match="image_ids/text_ids"):
        ContrastiveLoss(LossConfig())(features(2), features(4), torch.tensor(1.0), None)
