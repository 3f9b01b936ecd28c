import torch
import torch.nn.functional as F

from gliofed.losses import MultiTaskLoss
from gliofed.model import HEADS


def _outputs(batch=3, shape=(2, 5, 6), requires_grad=True):
    torch.manual_seed(0)
    out = {"seg": torch.randn(batch, 4, *shape, requires_grad=requires_grad)}
    out.update({k: torch.randn(batch, n, requires_grad=requires_grad) for k, n in HEADS.items()})
    return out


def test_unknown_labels_are_ignored():
    out = _outputs()
    seg = torch.zeros(3, 1, 2, 5, 6, dtype=torch.long)
    labels = torch.tensor([[1, -1, 0, 2], [-1, -1, 1, -1], [0, -1, -1, 1]])
    _, parts = MultiTaskLoss()(out, seg, torch.tensor([True, False, True]), labels)
    expected_idh = F.cross_entropy(out["idh"][[0, 2]], torch.tensor([1, 0]))
    assert abs(parts["idh"] - float(expected_idh)) < 1e-6
    assert parts["codeletion"] == 0.0


def test_batch_without_any_known_label_or_mask_is_zero_not_nan_and_backpropagates():
    out = _outputs()
    seg = torch.zeros(3, 1, 2, 5, 6, dtype=torch.long)
    total, parts = MultiTaskLoss()(out, seg, torch.zeros(3, dtype=torch.bool), torch.full((3, 4), -1))
    assert float(total) == 0.0 and all(v == 0.0 for v in parts.values())
    total.backward()
    assert out["seg"].grad is not None and torch.all(out["seg"].grad == 0)


def test_seg_loss_only_uses_cases_with_a_mask():
    out = _outputs()
    seg = torch.randint(0, 4, (3, 1, 2, 5, 6))
    loss = MultiTaskLoss()
    _, with_third = loss(out, seg, torch.tensor([True, False, True]), torch.full((3, 4), -1))
    seg_changed = seg.clone()
    seg_changed[1] = 3  # the unmasked case's (zero) target must not matter
    _, again = loss(out, seg_changed, torch.tensor([True, False, True]), torch.full((3, 4), -1))
    assert with_third["seg"] == again["seg"] and with_third["seg"] > 0


def test_task_and_class_weights_and_focal():
    out = _outputs()
    seg = torch.zeros(3, 1, 2, 5, 6, dtype=torch.long)
    labels = torch.tensor([[1, 0, 0, 2], [0, 1, 1, 0], [1, 0, 1, 1]])
    mask = torch.zeros(3, dtype=torch.bool)
    plain, parts = MultiTaskLoss()(out, seg, mask, labels)
    halved, _ = MultiTaskLoss(task_weights={"idh": 0.5})(out, seg, mask, labels)
    assert abs(float(plain - halved) - 0.5 * parts["idh"]) < 1e-5
    _, weighted = MultiTaskLoss(class_weights={"idh": [1.0, 10.0]})(out, seg, mask, labels)
    expected = F.cross_entropy(out["idh"], labels[:, 0], weight=torch.tensor([1.0, 10.0]))
    assert abs(weighted["idh"] - float(expected)) < 1e-6
    _, focal = MultiTaskLoss(focal_gamma=2.0)(out, seg, mask, labels)
    assert 0 < focal["idh"] < parts["idh"]
