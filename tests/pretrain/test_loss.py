"""Single-process loss semantics: parity with open_clip's ClipLoss / SigLipLoss (value and gradient),
exact gradient accumulation with feature caching, config-driven errors."""
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from clipforge.modeling.config import LossConfig
from clipforge.pretrain.loss import build_loss, per_micro_batch, splice_micro_batch


def _features(n: int, d: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    text = F.normalize(image + 0.5 * torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return image.requires_grad_(), text.requires_grad_()


def _grads(loss_fn, image, text, scale, bias=None):
    params = [image, text, scale] + ([bias] if bias is not None else [])
    loss = loss_fn(image, text, scale, bias)
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("with_bias", [False, True])
def test_infonce_matches_open_clip(with_bias):
    image, text = _features(24, 16, seed=0)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True) if with_bias else None
    ours, our_grads = _grads(build_loss(LossConfig(), 0, 1), image, text, scale, bias)
    ref, ref_grads = _grads(ClipLoss(), image, text, scale, bias)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    for mine, theirs in zip(our_grads, ref_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_siglip_matches_open_clip():
    image, text = _features(24, 16, seed=1)
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    ours, our_grads = _grads(build_loss(LossConfig(kind="siglip"), 0, 1), image, text, scale, bias)
    ref, ref_grads = _grads(SigLipLoss(), image, text, scale, bias)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    for mine, theirs in zip(our_grads, ref_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
def test_logit_scale_cap_keeps_only_a_gradient_that_lowers_the_scale(aligned):
    """Past the cap the value is the cap's. Random pairs want a softer temperature (gradient > 0): it
    passes, so a capped scale can come back down (torch.clamp would cut it to 0 for good). Matched
    pairs want a still sharper one (gradient < 0): it is cut, so the parameter cannot drift upwards."""
    image, text = _features(8, 4, seed=2)
    if aligned:
        text = image.detach().clone()
    loss_fn = build_loss(LossConfig(max_logit_scale=100.0), 0, 1)
    too_big = torch.tensor(150.0, dtype=torch.float64, requires_grad=True)
    at_max = torch.tensor(100.0, dtype=torch.float64, requires_grad=True)
    below = torch.tensor(99.0, dtype=torch.float64, requires_grad=True)
    loss, ref = loss_fn(image, text, too_big), loss_fn(image, text, at_max)
    assert loss.item() == ref.item()
    loss.backward()
    ref.backward()
    loss_fn(image, text, below).backward()
    assert (below.grad.item() < 0) == aligned  # the direction each case wants
    if aligned:
        assert too_big.grad.item() == at_max.grad.item() == 0.0
    else:
        assert too_big.grad.item() == at_max.grad.item() > 0.0


@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_bf16_features_give_the_fp32_loss_under_autocast(kind):
    image, text = (t.detach().bfloat16().requires_grad_() for t in _features(16, 8, seed=6))
    scale, bias = torch.tensor(30.0, dtype=torch.bfloat16), torch.tensor(-5.0)
    loss_fn = build_loss(LossConfig(kind=kind), 0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(image, text, scale, bias)
    ref = loss_fn(image.detach().float(), text.detach().float(), scale.float(), bias)
    assert loss.dtype == torch.float32 and loss.item() == ref.item()
    loss.backward()
    assert image.grad.dtype == torch.bfloat16


def test_empty_global_batch_is_refused():
    empty = torch.zeros(0, 4)
    with pytest.raises(ValueError, match="global batch is empty"):
        build_loss(LossConfig(), 0, 1)(empty, empty, torch.tensor(10.0))


def test_world_size_mismatch_is_refused():
    image, text = _features(4, 4, seed=3)
    with pytest.raises(RuntimeError, match="built for world_size=2"):
        build_loss(LossConfig(), 0, 2)(image, text, torch.tensor(10.0))


def _towers(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Linear(12, 8).double(), torch.nn.Linear(10, 8).double()


@pytest.mark.parametrize("kind,impl", [("infonce", "naive"), ("infonce", "tiled"), ("siglip", "naive")])
def test_accumulated_micro_batches_equal_the_full_batch(kind, impl):
    """4 micro-batches (unequal sizes) with feature caching = one full batch of 22 (grad to 1e-6 rel)."""
    g = torch.Generator().manual_seed(4)
    images, texts = torch.randn(22, 12, generator=g, dtype=torch.float64), torch.randn(22, 10, generator=g,
                                                                                       dtype=torch.float64)
    cfg = LossConfig(kind=kind, impl=impl, tile_size=5)
    loss_fn = build_loss(cfg, 0, 1)
    log_scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)

    def encode(towers, i, t):
        return F.normalize(towers[0](i), dim=-1), F.normalize(towers[1](t), dim=-1)

    full = _towers(0)
    full_loss = loss_fn(*encode(full, images, texts), log_scale.exp(), bias)
    full_loss.backward()
    expected = [p.grad.clone() for p in full[0].parameters()] + [p.grad.clone() for p in full[1].parameters()]
    expected += [log_scale.grad.clone(), bias.grad.clone()]
    log_scale.grad, bias.grad = None, None

    acc = _towers(0)
    splits = [7, 5, 6, 4]
    micro = list(zip(images.split(splits), texts.split(splits)))
    with torch.no_grad():
        cached = [encode(acc, i, t) for i, t in micro]
    for j, (i, t) in enumerate(micro):
        image_j, text_j = encode(acc, i, t)
        loss = loss_fn(splice_micro_batch([c[0] for c in cached], image_j, j),
                       splice_micro_batch([c[1] for c in cached], text_j, j),
                       per_micro_batch(log_scale.exp(), len(micro)), per_micro_batch(bias, len(micro)))
        torch.testing.assert_close(loss, full_loss.detach(), rtol=1e-12, atol=0)
        loss.backward()
    got = [p.grad for p in acc[0].parameters()] + [p.grad for p in acc[1].parameters()]
    got += [log_scale.grad, bias.grad]
    for mine, ref in zip(got, expected):
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-12)


def test_splice_refuses_a_different_micro_batch():
    with pytest.raises(ValueError, match="micro-batch 1"):
        splice_micro_batch([torch.zeros(3, 2), torch.zeros(4, 2)], torch.zeros(5, 2), 1)


def test_per_micro_batch_keeps_value_and_divides_gradient():
    p = torch.tensor(3.7, requires_grad=True)
    shared = per_micro_batch(p, 4)
    assert shared.item() == p.item()
    shared.backward()
    assert p.grad.item() == 0.25
    assert per_micro_batch(None, 4) is None
