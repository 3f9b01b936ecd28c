import numpy as np
import pandas as pd
import pytest
import torch

from gliofed.data.dataset import CaseDataset
from gliofed.federated.payload import Payload, state_to_arrays
from gliofed.federated.site import Site
from gliofed.federated.site.condense import condense
from gliofed.federated.site.policy import SitePolicy
from gliofed.federated.strategies.distill import (
    DistillFederation,
    DistillSettings,
    distillation_kl,
    symmetric_kl,
)
from gliofed.model import MultiTaskUNet
from tests.federated.helpers import site_settings, small_model


def test_symmetric_kl_is_zero_for_equal_and_positive_for_different_distributions():
    p = torch.tensor([0.2, 0.8])
    assert float(symmetric_kl(p, p)) == pytest.approx(0.0, abs=1e-6)
    assert float(symmetric_kl(p, torch.tensor([0.6, 0.4]))) > 0.1


def test_kl_term_gradient_reaches_the_model():
    torch.manual_seed(0)
    model = small_model()
    outputs = model(torch.randn(3, 4, 3, 16, 16))
    labels = torch.tensor([[0, 0, 1, 2], [1, -1, 0, 1], [1, 0, -1, 2]])
    soft = {m: torch.full((k, k), 1.0 / k) for m, k in (("idh", 2), ("codeletion", 2), ("mgmt", 2), ("grade", 3))}
    soft["idh"] = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    kl = distillation_kl(outputs, labels, soft, temperature=2.0)
    assert float(kl) > 0
    kl.backward()
    assert model.heads["idh"].weight.grad.abs().sum() > 0
    assert model.down_3.convs.conv_0.conv.weight.grad.abs().sum() > 0  # through the encoder too


def _site_payload(tiny_cache, init="class_stats", steps=2):
    site = Site("brats21", tiny_cache, policy=SitePolicy.teaching())  # the audit is shown, not enforced
    model = small_model()
    outgoing = Payload("model", state_to_arrays(model), {})
    return site, site.handle("distill", outgoing, site_settings(model, distill={"steps": steps, "init": init}))


def test_condensed_set_is_low_resolution_with_labels_masks_and_soft_labels(tiny_cache):
    _, payload = _site_payload(tiny_cache)
    images, masks = payload.arrays["syn_images"], payload.arrays["syn_masks"]
    depth, height, width = payload.meta["shape"]
    assert images.shape == (3, 4, int(np.ceil(depth / 4)), height // 4, width // 4) and images.dtype == np.float16
    assert masks.shape == (3, *images.shape[2:]) and set(np.unique(masks)) <= {0, 1, 2, 3} and masks.max() > 0
    assert payload.arrays["syn_labels"].shape == (3, 4)
    soft = payload.arrays["soft:grade"]
    seen = payload.arrays["counts:grade"] > 0
    assert soft.shape == (3, 3) and np.allclose(soft[seen].sum(1), 1, atol=1e-5)


def test_soft_labels_are_class_averaged_tempered_softmax(tiny_cache):
    model = small_model().eval()
    dataset = CaseDataset(tiny_cache, split="train", sites=["tcga_lgg"])
    payload = condense(model, dataset, DistillSettings(steps=0, temperature=3.0), seed=0, site="tcga_lgg")
    with torch.no_grad():
        rows = [torch.softmax(model(dataset[i]["image"][None])["grade"][0] / 3.0, 0).numpy()
                for i in range(len(dataset)) if int(dataset[i]["labels"][3]) == 0]
    np.testing.assert_allclose(payload.arrays["soft:grade"][0], np.mean(rows, 0), atol=1e-5)
    assert payload.arrays["counts:grade"][0] == len(rows)


def test_condensation_reduces_the_matching_loss_it_optimises(tiny_cache):
    """More steps move the synthetic bottleneck features towards the real ones."""
    site_dataset = CaseDataset(tiny_cache, split="train", sites=["brats21"])
    torch.manual_seed(0)
    model = small_model().eval()

    def gap(steps):
        p = condense(model, site_dataset, DistillSettings(steps=steps, init="noise", perturb=0.0, lr=0.1), 3, "brats21")
        from gliofed.federated.strategies.distill import upsample_synthetic
        images, _ = upsample_synthetic(torch.from_numpy(p.arrays["syn_images"].astype(np.float32)),
                                       torch.from_numpy(p.arrays["syn_masks"].astype(np.int64)), p.meta["shape"])
        with torch.no_grad():
            syn = model(images, return_features=True)["bottleneck"].mean(0)
            real = torch.stack([model(site_dataset[i]["image"][None], return_features=True)["bottleneck"][0]
                                for i in range(len(site_dataset))]).mean(0)
        return float(((syn - real) ** 2).sum())

    assert gap(25) < 0.5 * gap(0)


def test_server_training_changes_the_model(tiny_cache):
    _, payload = _site_payload(tiny_cache)
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = DistillFederation({"server_epochs": 2}).aggregate(model, {"brats21": payload}, rnd=1)
    assert np.isfinite(info["server_loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_privacy_audit_flags_real_initialisation_not_noise(tiny_cache):
    site, noise = _site_payload(tiny_cache, init="noise", steps=1)
    _, real = _site_payload(tiny_cache, init="real_unsafe", steps=1)
    noise_report, real_report = site.privacy_audit(noise), site.privacy_audit(real)
    assert not noise_report["flagged"].any()
    assert real_report["flagged"].all()
    assert (real_report["nn_corr"] > noise_report["nn_corr"].max()).all()
    assert isinstance(real_report, pd.DataFrame) and set(real_report["init"]) == {"real_unsafe"}


def test_distillation_upload_is_at_most_a_quarter_of_fedavg_at_default_settings(tmp_path):
    """Measured on serialised payloads: the seed's model and a full-size site (4 x 155 x 128 x 128)."""
    from tests.fake_cache import write_fake_cache

    cache = write_fake_cache(tmp_path, cases=2, shape=(4, 155, 128, 128))
    model = MultiTaskUNet()
    dataset = CaseDataset(cache)
    distilled = condense(model, dataset, DistillSettings(steps=0), seed=0, site="s0")
    fedavg = Payload("weights_update", state_to_arrays(model), {"site": "s0", "n_cases": 2, "loss": 0.0})
    assert 5.5e6 < fedavg.nbytes < 5.7e6
    assert distilled.nbytes <= 0.25 * fedavg.nbytes


def test_joint_labels_are_real_label_vectors_covering_every_seen_class():
    from gliofed.federated.site.condense import joint_labels

    real = np.array([[1, 0, -1, 0], [1, 1, -1, 0], [0, 0, -1, 2], [0, 0, -1, 2], [0, -1, -1, 2], [1, 0, -1, 1],
                     [0, 0, -1, 2]])
    drawn = joint_labels(real, 5, np.random.default_rng(3), cover=True)
    assert drawn.shape == (5, 4)
    assert all(any((row == r).all() for r in real) for row in drawn)  # whole real vectors: joint distribution kept
    for j in range(4):
        assert set(real[:, j][real[:, j] >= 0]) <= set(drawn[:, j])  # every seen class appears (1p/19q 1 is rare)
    assert (drawn[:, 2] == -1).all()  # a marker the site never records stays unknown


def test_joint_labels_by_default_follow_the_real_joint_distribution():
    from gliofed.federated.site.condense import joint_labels

    real = np.array([[1, 0, -1, 0], [0, -1, -1, 2], [0, 0, -1, 2], [1, 1, -1, 1], [0, 0, 1, 2]])
    drawn = joint_labels(real, 5, np.random.default_rng(1))  # n = N: every real vector exactly once
    assert sorted(map(tuple, drawn)) == sorted(map(tuple, real))
    twice = joint_labels(real, 10, np.random.default_rng(1))
    assert sorted(map(tuple, twice)) == sorted(map(tuple, np.concatenate([real, real])))


def test_joint_labels_never_pair_classes_the_site_never_pairs():
    """Independent cycling paired grade II with IDH-wildtype; drawn vectors only pair what real cases pair."""
    from gliofed.federated.site.condense import joint_labels

    real = np.array([[1, -1, -1, 0]] * 4 + [[0, -1, -1, 2]] * 5)  # grade II always IDH-mutant here
    drawn = joint_labels(real, 7, np.random.default_rng(0))
    assert not ((drawn[:, 0] == 0) & (drawn[:, 3] == 0)).any()
    assert not ((drawn[:, 0] == 1) & (drawn[:, 3] == 2)).any()


def test_real_bn_statistics_are_the_mean_of_each_case_batch_statistics(tiny_cache):
    from gliofed.federated.site.condense import real_bn_statistics

    torch.manual_seed(0)
    model = small_model().eval()
    dataset = CaseDataset(tiny_cache, split="train", sites=["tcga_lgg"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = real_bn_statistics(model, dataset, [0, 1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not changed
    inputs = []
    hook = model.conv_0.conv_0.adn.N.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    with torch.no_grad():
        for i in (0, 1):
            model(dataset[i]["image"][None])
    hook.remove()
    expected = torch.stack([x.mean((0, 2, 3, 4)) for x in inputs]).mean(0).numpy()
    np.testing.assert_allclose(stats["conv_0.conv_0.adn.N.running_mean"], expected, rtol=1e-4, atol=1e-5)


def test_server_uses_the_sites_real_bn_statistics_and_keeps_them(tiny_cache):
    _, payload = _site_payload(tiny_cache)
    key = "conv_0.conv_0.adn.N.running_mean"
    assert f"bn:{key}" in payload.arrays
    model = small_model()
    DistillFederation({"server_epochs": 1}).aggregate(model, {"brats21": payload}, rnd=1)
    np.testing.assert_allclose(model.state_dict()[key].numpy(), payload.arrays[f"bn:{key}"], rtol=1e-6)


def test_server_keeps_earlier_rounds_sets_for_memory_rounds(tiny_cache):
    _, payload = _site_payload(tiny_cache, steps=0)
    server = DistillFederation({"server_epochs": 1, "memory_rounds": 2})
    model = small_model()
    infos = [server.aggregate(model, {"brats21": payload}, rnd=r) for r in (1, 2, 3, 4)]
    assert [i["memory_sets"] for i in infos] == [0, 1, 2, 2]
    assert sorted(r for r, _, _ in server.memory) == [3, 4]
    restored = DistillFederation({"memory_rounds": 2})
    restored.load_state_dict(server.state_dict())
    assert [(r, s) for r, s, _ in restored.memory] == [(r, s) for r, s, _ in server.memory]


def test_condensation_reduces_the_classifier_branch_matching_loss(tiny_cache):
    from gliofed.federated.site.condense import matching_loss, real_targets

    dataset = CaseDataset(tiny_cache, split="train", sites=["tcga_lgg"])
    torch.manual_seed(0)
    model = small_model().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    settings = dict(init="noise", perturb=0.0, lr=0.1, models=1)
    targets = real_targets(model, dataset, range(len(dataset)))

    def loss_after(steps):
        p = condense(model, dataset, DistillSettings(steps=steps, **settings), 3, "tcga_lgg")
        images = torch.from_numpy(p.arrays["syn_images"].astype(np.float32))
        labels = torch.from_numpy(p.arrays["syn_labels"].astype(np.int64))
        empty = torch.zeros((len(images), 1, *p.meta["shape"]), dtype=torch.int64)
        return float(matching_loss(model, images, empty, labels, p.meta["shape"], targets))

    assert loss_after(30) < 0.5 * loss_after(0)


class _TwoClassSite:
    """A site of 8 cases: IDH-mutant grade II tumours (bright in contrast 0, no enhancing rim) and IDH-wildtype
    grade IV ones (dark in contrast 0, with an enhancing rim); only what ``init_synthetic`` reads."""

    def __init__(self):
        self.items = []
        for i in range(8):
            mutant = i % 2 == 0
            seg = torch.zeros(8, 12, 12, dtype=torch.long)
            seg[2:6, 3:9, 3:9] = 2
            seg[3:5, 5:7, 5:7] = 1
            if not mutant:
                seg[3:5, 4:8, 4] = 3
            image = torch.randn(4, 8, 12, 12) * 0.1
            image[0][seg > 0] += 2.0 if mutant else -2.0
            labels = torch.tensor([1 if mutant else 0, -1, -1, 0 if mutant else 2])
            self.items.append({"image": image, "seg": seg, "has_mask": torch.tensor(True), "labels": labels})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_class_stats_initialisation_follows_each_volumes_labels():
    from gliofed.federated.site.condense import _case_statistics, _class_fractions, _synthetic_masks, init_synthetic

    site = _TwoClassSite()
    cases = _case_statistics(site, range(len(site)))
    labels = np.array([[1, -1, -1, 0], [0, -1, -1, 2]])  # mutant grade II, wildtype grade IV
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(_synthetic_masks((8, 12, 12), _class_fractions(cases, labels), 2, rng))
    assert int((masks[0] == 3).sum()) == 0  # grade II cases have no enhancing rim: neither has its volume
    assert int((masks[1] == 3).sum()) > 0
    images = init_synthetic(site, "class_stats", masks, (8, 12, 12), rng, torch.Generator().manual_seed(0),
                            labels=labels, cases=cases)
    tumour = [float(images[i, 0][masks[i] > 0].mean()) for i in range(2)]
    assert tumour[0] > 1.0 and tumour[1] < -1.0  # each starts with the intensities of its own class's tumours
    # without labels every volume gets the site's average (the old behaviour): no class signal
    plain = init_synthetic(site, "class_stats", masks, (8, 12, 12), rng, torch.Generator().manual_seed(0),
                           cases=cases)
    assert abs(float(plain[0, 0][masks[0] > 0].mean())) < 0.5


def test_a_label_no_case_shares_falls_back_to_the_site_statistics():
    from gliofed.federated.site.condense import _case_statistics, _matching_cases

    site = _TwoClassSite()
    cases = _case_statistics(site, range(len(site)))
    assert len(_matching_cases(cases, np.array([1, -1, -1, 0]))) == 4
    assert len(_matching_cases(cases, np.array([1, -1, -1, 2]))) == len(cases)  # no mutant grade IV case
