"""Lovász hinge against brute-force definitions, the boundary band on drawn masks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.losses import (SegmentationLoss, boundary_band, jaccard_increments, lovasz_hinge, lovasz_hinge_flat,
                             lovasz_jaccard_gradient)


def jaccard_loss_of_errors(wrong: set[int], labels: list[int]) -> float:
    """Δ_J(M) = |M| / |positives ∪ M| (0 for the empty set), straight from the paper."""
    positives = {i for i, y in enumerate(labels) if y == 1}
    union = positives | wrong
    return len(wrong) / len(union) if union else 0.0


def lovasz_extension_by_integral(errors: list[float], labels: list[int]) -> float:
    """f(m) = ∫_0^∞ Δ({i : m_i >= t}) dt for m >= 0, integrated exactly between breakpoints."""
    levels = sorted({0.0, *[max(e, 0.0) for e in errors]})
    total = 0.0
    for low, high in zip(levels[:-1], levels[1:]):
        above = {i for i, e in enumerate(errors) if e >= high}
        total += (high - low) * jaccard_loss_of_errors(above, labels)
    return total


def lovasz_extension_by_permutations(errors: list[float], labels: list[int]) -> float:
    """For a submodular Δ the extension is the max over orderings of the greedy sum."""
    m = [max(e, 0.0) for e in errors]
    best = -np.inf
    for order in itertools.permutations(range(len(m))):
        value, chosen, previous = 0.0, set(), 0.0
        for i in order:
            chosen.add(i)
            current = jaccard_loss_of_errors(chosen, labels)
            value += m[i] * (current - previous)
            previous = current
        best = max(best, value)
    return best


def hinge_errors(logits, labels):
    return [1.0 - z * (2 * y - 1) for z, y in zip(logits, labels)]


@pytest.mark.parametrize("seed", range(12))
def test_lovasz_hinge_matches_brute_force_extension(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 5))
    labels = rng.integers(0, 2, size=n).tolist()
    logits = rng.normal(0, 1.5, size=n).tolist()
    got = lovasz_hinge_flat(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels)).item()
    errors = hinge_errors(logits, labels)
    assert got == pytest.approx(lovasz_extension_by_integral(errors, labels), abs=1e-9)
    assert got == pytest.approx(lovasz_extension_by_permutations(errors, labels), abs=1e-9)


def test_lovasz_equals_jaccard_loss_on_binary_predictions():
    labels = [1, 1, 0, 0, 1, 0]
    wrong = {1, 2}
    # logit = label sign where right (hinge error 0), 0 where wrong (hinge error 1): m = indicator of M
    logits = [0.0 if i in wrong else (1.0 if y else -1.0) for i, y in enumerate(labels)]
    got = lovasz_hinge_flat(torch.tensor(logits), torch.tensor(labels)).item()
    assert got == pytest.approx(2 / 4)  # |M| = 2, positives {0,1,4} ∪ M = {0,1,2,4}
    # confident (±inf-like) predictions scale the same set function by the margin
    big = [(-50.0 if y else 50.0) if i in wrong else (50.0 if y else -50.0) for i, y in enumerate(labels)]
    got_big = lovasz_hinge_flat(torch.tensor(big), torch.tensor(labels)).item()
    assert got_big == pytest.approx(51.0 * 2 / 4)
    perfect = [50.0 if y else -50.0 for y in labels]
    assert lovasz_hinge_flat(torch.tensor(perfect), torch.tensor(labels)).item() == 0.0


def test_jaccard_gradient_sums_to_loss_of_all_errors():
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    grad = lovasz_jaccard_gradient(labels)
    assert grad.sum().item() == pytest.approx(jaccard_loss_of_errors(set(range(5)), labels.int().tolist()))
    assert (grad >= -1e-12).all()  # Δ_J is monotone: increments never negative


def test_gradient_pushes_logits_towards_the_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 6, requires_grad=True)
    masks = (torch.rand(2, 6, 6) > 0.5).float()
    lovasz_hinge(logits, masks).backward()
    g = logits.grad
    assert (g[masks == 1] <= 1e-12).all()  # raising a person logit never increases the loss
    assert (g[masks == 0] >= -1e-12).all()
    assert g.abs().sum() > 0


def test_valid_restricts_the_loss_to_those_pixels():
    scores = torch.tensor([[[5.0, -5.0], [-3.0, 2.0]]])
    masks = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    valid = torch.tensor([[[True, False], [True, False]]])  # only the two right pixels
    expected = lovasz_hinge_flat(torch.tensor([5.0, -3.0]), torch.tensor([1.0, 0.0]))
    assert lovasz_hinge(scores, masks, valid).item() == pytest.approx(expected.item())
    empty = torch.zeros_like(valid)
    assert lovasz_hinge(scores, masks, empty).item() == 0.0


def test_boundary_band_of_a_square_is_the_exact_ring():
    mask = torch.zeros(1, 11, 11)
    mask[0, 3:8, 3:8] = 1  # 5x5 square
    band = boundary_band(mask, 3)[0].numpy()
    expected = np.zeros((11, 11), dtype=bool)
    expected[2:9, 2:9] = True  # dilation: 7x7
    expected[4:7, 4:7] = False  # minus erosion: 3x3
    assert np.array_equal(band, expected)
    assert band.sum() == 40
    band7 = boundary_band(mask, 7)[0].numpy()
    expected7 = np.zeros((11, 11), dtype=bool)
    expected7[0:11, 0:11] = True  # dilation by 3 reaches 0..10; erosion by 3 of a 5x5 is empty
    assert np.array_equal(band7, expected7)


def test_boundary_band_ignores_the_image_frame_and_batches():
    masks = torch.zeros(2, 8, 8)
    masks[0] = 1  # person fills the frame: no outline inside the image
    masks[1, :, :4] = 1  # left half: band is the two columns each side of x = 4
    band = boundary_band(masks, 3)
    assert not band[0].any()
    assert band[1].sum() == 8 * 2
    assert band[1, :, 3].all() and band[1, :, 4].all()
    with pytest.raises(ValueError, match="odd"):
        boundary_band(masks, 4)


def test_segmentation_loss_one_and_two_channels_agree_for_lovasz():
    torch.manual_seed(1)
    scores = torch.randn(2, 1, 10, 10)
    masks = (torch.rand(2, 10, 10) > 0.4).float()
    loss = SegmentationLoss("lovasz", boundary_weight=0.5, boundary_kernel=3)
    two = torch.cat([torch.zeros_like(scores), scores], dim=1)
    assert loss(scores, masks).item() == pytest.approx(loss(two, masks).item(), rel=1e-6)
    main, edge = loss.parts(scores, masks)
    assert loss(scores, masks).item() == pytest.approx(main.item() + 0.5 * edge.item(), rel=1e-6)


def test_ce_boundary_term_only_sees_the_band():
    masks = torch.zeros(1, 12, 12)
    masks[0, 4:8, 4:8] = 1
    band = boundary_band(masks, 3)
    logits = torch.where(masks > 0, 4.0, -4.0).unsqueeze(1)
    wrong_far = logits.clone()
    wrong_far[0, 0, 0, 0] = 9.0  # a corner pixel, far from the outline
    loss = SegmentationLoss("ce", boundary_weight=1.0, boundary_kernel=3)
    main_a, edge_a = loss.parts(logits, masks)
    main_b, edge_b = loss.parts(wrong_far, masks)
    assert edge_a.item() == pytest.approx(edge_b.item())
    assert main_b.item() > main_a.item()
    assert not band[0, 0, 0]
    two_channel = torch.cat([-logits / 2, logits / 2], dim=1)  # softmax CE of ±s/2 == BCE of s
    assert SegmentationLoss("ce", 1.0, 3)(two_channel, masks).item() == pytest.approx(loss(logits, masks).item(),
                                                                                     rel=1e-5)


def test_loss_upsamples_low_resolution_logits_and_rejects_bad_settings():
    loss = SegmentationLoss("lovasz", 0.5, 7)
    value = loss(torch.zeros(1, 1, 4, 4, requires_grad=True), torch.ones(1, 8, 8))
    value.backward()
    with pytest.raises(ValueError):
        SegmentationLoss("dice")
    with pytest.raises(ValueError):
        SegmentationLoss("lovasz", boundary_kernel=6)


def test_the_teacher_loss_is_cross_entropy_plus_weighted_dice():
    from pipeline.losses import cross_entropy_dice

    torch.manual_seed(0)
    logit = torch.randn(2, 1, 8, 8)
    masks = (torch.rand(2, 8, 8) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit[:, 0], masks)
    assert torch.isclose(cross_entropy_dice(logit, masks, 0.0), bce)
    prob = torch.sigmoid(logit[:, 0])
    dice = 1 - (2 * (prob * masks).sum(dim=(1, 2)) + 1) / (prob.sum(dim=(1, 2)) + masks.sum(dim=(1, 2)) + 1)
    assert torch.isclose(cross_entropy_dice(logit, masks, 0.5), bce + 0.5 * dice.mean())
    # two classes with logits (0, z) are the one-logit case z: softmax of class 1 = sigmoid(z)
    two = torch.cat([torch.zeros_like(logit), logit], dim=1)
    assert torch.isclose(cross_entropy_dice(two, masks, 0.5), cross_entropy_dice(logit, masks, 0.5), atol=1e-6)


# ---------------------------------------------------------------- the fused (batched) Lovász terms


def drawn_masks(n: int, size: int, seed: int) -> torch.Tensor:
    """Blobs of random size and place, one image empty and one full (no band, no negatives)."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size)
    for i in range(n):
        y0, x0 = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        h, w = torch.randint(2, size // 2, (2,), generator=generator).tolist()
        masks[i, y0:y0 + h, x0:x0 + w] = 1
    masks[0] = 0
    masks[-1] = 1
    return masks


@pytest.mark.parametrize("seed", range(4))
def test_fused_lovasz_terms_equal_the_per_image_loop_in_value_and_gradient(seed):
    masks = drawn_masks(5, 20, seed)
    logits = torch.randn(5, 1, 20, 20, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    plain = SegmentationLoss("lovasz", 0.5, 5)
    fused = SegmentationLoss("lovasz", 0.5, 5, fused=True)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    main_a, edge_a = plain.parts(a, masks)
    main_b, edge_b = fused.parts(b, masks)
    assert main_b.item() == pytest.approx(main_a.item(), rel=1e-6)
    assert edge_b.item() == pytest.approx(edge_a.item(), rel=1e-6)
    assert edge_a.item() > 0  # the band term is really exercised
    (main_a + 0.5 * edge_a).backward()
    (main_b + 0.5 * edge_b).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)  # continuous logits: no ties, the same subgradient


def test_jaccard_increments_of_the_valid_pixels_are_those_of_the_pixels_alone():
    labels = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]])
    valid = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]])
    grad = jaccard_increments(labels, valid)[0]
    alone = lovasz_jaccard_gradient(labels[0][valid[0] > 0])
    assert torch.allclose(grad[valid[0] > 0], alone) and (grad[valid[0] == 0] == 0).all()
    assert torch.allclose(jaccard_increments(labels)[0], lovasz_jaccard_gradient(labels[0]))
    assert (jaccard_increments(labels, torch.zeros_like(valid)) == 0).all()  # no valid pixel: nothing to add


def test_fused_loss_runs_in_float32_under_a_bf16_forward():
    masks = drawn_masks(3, 32, 7)
    logits = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    reference = SegmentationLoss("lovasz", 0.5, 7, fused=True)(logits, masks)
    low = SegmentationLoss("lovasz", 0.5, 7, fused=True)(logits.to(torch.bfloat16), masks)
    assert low.dtype == torch.float32
    # only the logits were rounded to bf16 (8 mantissa bits), not the sums over 1,024 pixels
    assert low.item() == pytest.approx(reference.item(), rel=2e-2)


@pytest.mark.parametrize("soft", [False, True])
def test_the_boundary_band_by_two_passes_equals_the_square_morphology(soft):
    masks = torch.rand(3, 24, 11) if soft else drawn_masks(6, 24, 11)
    for k in (1, 3, 7, 41):  # 41: a window wider than the image
        pad = k // 2
        m = masks.unsqueeze(1)
        dilated = torch.nn.functional.max_pool2d(m, k, stride=1, padding=pad)
        eroded = -torch.nn.functional.max_pool2d(-m, k, stride=1, padding=pad)
        assert torch.equal(boundary_band(masks, k), (dilated - eroded).squeeze(1) > 0.5)


def test_a_window_wider_than_the_image_reaches_its_far_edge():
    for person in ((slice(None), slice(-1, None)), (slice(-1, None), slice(None))):  # last column, last row
        masks = torch.zeros(1, 5, 11)
        masks[(0, *person)] = 1
        assert boundary_band(masks, 41).all()  # every window holds the whole image: both classes
