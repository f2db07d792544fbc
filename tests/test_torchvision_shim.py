import torch

from pipeline.torchvision_shim import ensure_torchvision, nms_reference


def _brute_force_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            x1 = max(boxes[i][0], boxes[j][0]); y1 = max(boxes[i][1], boxes[j][1])  # noqa: E702
            x2 = min(boxes[i][2], boxes[j][2]); y2 = min(boxes[i][3], boxes[j][3])  # noqa: E702
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_reference_nms_matches_brute_force_on_random_boxes():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * 50
        wh = torch.rand(n, 2, generator=gen) * 30 + 1
        boxes = torch.cat([xy, xy + wh], 1)
        scores = torch.rand(n, generator=gen)
        got = nms_reference(boxes, scores, 0.4).tolist()
        assert got == _brute_force_nms(boxes.tolist(), scores.tolist(), 0.4)


def test_torchvision_ops_work_after_ensure():
    ensure_torchvision()
    from torchvision.ops import batched_nms, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1, 2]
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).numel() == 0


def test_shim_does_nothing_when_native_ops_load(monkeypatch):
    import pipeline.torchvision_shim as shim

    monkeypatch.setattr(shim, "_state", {"done": False, "shimmed": False})
    monkeypatch.setattr(shim, "_native_ops_load", lambda: True)
    monkeypatch.delitem(__import__("sys").modules, "torchvision", raising=False)
    assert shim.ensure_torchvision() is False
