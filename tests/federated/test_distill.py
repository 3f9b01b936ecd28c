import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from gliofed.data.dataset import CaseDataset
from gliofed.federated.protocol.payload import Payload, state_to_arrays
from gliofed.federated.server.strategies.distill import (
    DistillFederation,
    DistillSettings,
    distillation_kl,
    symmetric_kl,
)
from gliofed.federated.site import Site
from gliofed.federated.site.condense import condense, soft_labels
from gliofed.federated.site.policy import SitePolicy
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
    payload = condense(model, dataset, DistillSettings(steps=0, temperature=3.0), seed=0, site="tcga_lgg",
                       min_group=1)
    with torch.no_grad():
        rows = [torch.softmax(model(dataset[i]["image"][None])["grade"][0] / 3.0, 0).numpy()
                for i in range(len(dataset)) if int(dataset[i]["labels"][3]) == 0]
    assert rows
    np.testing.assert_allclose(payload.arrays["soft:grade"][0], np.mean(rows, 0), atol=1e-5)
    assert payload.arrays["counts:grade"][0] == len(rows)


def test_a_soft_label_row_fewer_cases_than_the_minimum_back_is_sent_empty(tiny_cache):
    model = small_model().eval()
    dataset = CaseDataset(tiny_cache, split="train", sites=["brats21"])
    tables, counts = soft_labels(model, dataset, 2.0, min_group=1)
    seen = {m: counts[m].copy() for m in counts}
    assert any(((c > 0) & (c < 3)).any() for c in seen.values()), "fixture: no class with 1-2 cases"
    tables, counts = soft_labels(model, dataset, 2.0, min_group=3)
    for marker, before in seen.items():
        few = before < 3
        assert (counts[marker][few] == 0).all() and (tables[marker][few] == 0).all()
        assert (counts[marker][~few] == before[~few]).all()
        assert np.allclose(tables[marker][~few].sum(1), 1, atol=1e-5)


def test_condensation_reduces_the_matching_loss_it_optimises(tiny_cache):
    """More steps move the synthetic bottleneck features towards the real ones."""
    site_dataset = CaseDataset(tiny_cache, split="train", sites=["brats21"])
    torch.manual_seed(0)
    model = small_model().eval()

    def gap(steps):
        p = condense(model, site_dataset, DistillSettings(steps=steps, init="noise", perturb=0.0, lr=0.1), 3, "brats21",
                     min_group=3)
        from gliofed.federated.protocol.synthetic import upsample_synthetic
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
    distilled = condense(model, dataset, DistillSettings(steps=0), seed=0, site="s0", min_group=3)
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
    targets = real_targets(model, dataset, range(len(dataset)), 1)

    def loss_after(steps):
        p = condense(model, dataset, DistillSettings(steps=steps, **settings), 3, "tcga_lgg", min_group=1)
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
    from gliofed.federated.site.condense import case_statistics, class_fractions, init_synthetic, synthetic_masks

    site = _TwoClassSite()
    cases = case_statistics(site, range(len(site)))
    labels = np.array([[1, -1, -1, 0], [0, -1, -1, 2]])  # mutant grade II, wildtype grade IV
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(synthetic_masks((8, 12, 12), class_fractions(cases, labels, 1), 2, rng))
    assert int((masks[0] == 3).sum()) == 0  # grade II cases have no enhancing rim: neither has its volume
    assert int((masks[1] == 3).sum()) > 0
    images = init_synthetic(site, "class_stats", masks, (8, 12, 12), rng, torch.Generator().manual_seed(0),
                            labels=labels, cases=cases, min_group=1)
    tumour = [float(images[i, 0][masks[i] > 0].mean()) for i in range(2)]
    assert tumour[0] > 1.0 and tumour[1] < -1.0  # each starts with the intensities of its own class's tumours
    # without labels every volume gets the site's average (the old behaviour): no class signal
    plain = init_synthetic(site, "class_stats", masks, (8, 12, 12), rng, torch.Generator().manual_seed(0),
                           cases=cases, min_group=1)
    assert abs(float(plain[0, 0][masks[0] > 0].mean())) < 0.5


FULL = (8, 12, 12)  # the test sites' full-resolution grid


def _brain_site():
    """The two-class site with a brain: zero outside a box (as preprocessing leaves the background), an anatomy
    every case shares (contrast 2 bright in a fixed 'ventricle'), and tumours off the middle of the grid, towards
    the low corner."""
    site = _TwoClassSite()
    for item in site.items:
        item["image"] = torch.roll(item["image"], shifts=(-1, -1, -1), dims=(1, 2, 3))
        item["seg"] = torch.roll(item["seg"], shifts=(-1, -1, -1), dims=(0, 1, 2))
        outside = torch.ones(8, 12, 12, dtype=torch.bool)
        outside[1:7, 2:10, 2:10] = False
        item["image"][2][4:6, 6:8, 6:8] += 3.0
        item["image"][:, outside] = 0.0
        item["seg"][outside] = 0
    return site


def test_the_site_template_is_the_mean_anatomy_of_all_its_cases():
    from gliofed.federated.site.condense import site_template

    site = _brain_site()
    template, brain = site_template(site, range(len(site)), FULL, (4, 6, 6), min_group=3)
    expected = torch.stack([F.interpolate(item["image"][None], size=(4, 6, 6), mode="area")[0]
                            for item in site.items]).mean(0)
    torch.testing.assert_close(template[:, brain], expected[:, brain])
    assert brain.dtype == torch.bool and brain.shape == (4, 6, 6)
    assert brain[:, 1:5, 1:5].all() and not brain[:, 0].any() and not brain[:, 5].any() and not brain[:, :, 0].any()
    assert float(template[:, ~brain].abs().max()) == 0.0
    assert site_template(site, range(2), FULL, (4, 6, 6), min_group=3) is None  # two cases are no population


def test_the_template_leaves_out_where_fewer_than_min_group_patients_have_brain():
    """Background is 0 and the case count is public: a cell only one or two patients' heads reach would be
    their voxels over a known count. Such cells stay background, and are not brain; lesions go only where most
    patients have brain."""
    from gliofed.federated.site.condense import site_template

    site = _brain_site()
    for k, item in enumerate(site.items[:2]):  # two patients' heads reach one more slab of cells
        item["image"][:, 1:7, 10:12, 2:10] = 5.0 + k
    template, brain = site_template(site, range(len(site)), FULL, (4, 6, 6), min_group=3)
    assert not brain[:, 5].any() and float(template[:, :, 5].abs().max()) == 0.0  # h 10-11: only 2 patients there
    site.items[2]["image"][:, 1:7, 10:12, 2:10] = 7.0  # a third patient: now a population's
    template, brain = site_template(site, range(len(site)), FULL, (4, 6, 6), min_group=3)
    assert float(template[0, 1, 5, 2]) > 0.5  # sent: the mean of three heads over the eight cases
    assert not brain[:, 5].any()  # but 3 heads of 8 are no typical head: no lesion goes there
    site.items[3]["image"][:, 1:7, 10:12, 2:10] = 7.0  # half the patients
    assert site_template(site, range(len(site)), FULL, (4, 6, 6), min_group=3)[1][:, 5, 1:5].all()


@pytest.mark.parametrize("low", [(8, 12, 12), (4, 6, 6), (4, 7, 6), (3, 5, 5), (2, 3, 3)])
def test_no_grid_a_server_asks_for_lets_it_see_a_voxel_fewer_than_min_group_patients_cover(low):
    """A server picks the scale. Cells of a coarse grid that are mostly brain can hold a rim only two patients'
    heads reach (grid (4, 7, 6): the cell over rows 8-10), and templates at two scales could be differenced
    into it. The template at every grid must not depend on such voxels at all."""
    from gliofed.federated.site.condense import site_template

    site = _brain_site()
    for k, item in enumerate(site.items[:2]):  # two patients' heads reach rows 10-11
        item["image"][:, 1:7, 10:12, 2:10] = 5.0 + k
    before = site_template(site, range(len(site)), FULL, low, min_group=3)
    for item in site.items[:2]:
        item["image"][:, 1:7, 10:12, 2:10] *= 10.0  # only those voxels change
    after = site_template(site, range(len(site)), FULL, low, min_group=3)
    torch.testing.assert_close(before[0], after[0], rtol=0, atol=0)
    assert torch.equal(before[1], after[1])


def test_the_template_is_made_on_the_sites_full_grid_whatever_the_cases_depth():
    """Cases of other depths are resampled to the site's grid first; the template at any grid is the
    area average of that one full-resolution population image."""
    from gliofed.federated.site.condense import site_template

    site = _brain_site()
    for item in site.items[::2]:  # half the cases have 6 slices, not 8
        item["image"] = F.interpolate(item["image"][None], size=(6, 12, 12), mode="nearest")[0]
    full, brain_full = site_template(site, range(len(site)), FULL, FULL, min_group=3)
    for low in ((4, 6, 6), (3, 5, 5)):
        template, brain = site_template(site, range(len(site)), FULL, low, min_group=3)
        expected = F.interpolate(full[None], size=low, mode="area")[0]
        torch.testing.assert_close(template, expected)
        torch.testing.assert_close(brain, F.interpolate(brain_full[None, None].float(), size=low,
                                                        mode="area")[0, 0] >= 0.5)


def test_class_stats_paints_the_lesion_into_the_sites_anatomy_inside_the_brain():
    from gliofed.federated.site.condense import (
        case_statistics,
        class_fractions,
        init_synthetic,
        lesion_centres,
        site_template,
        synthetic_masks,
    )

    site = _brain_site()
    cases = case_statistics(site, range(len(site)))
    labels = np.array([[1, -1, -1, 0], [0, -1, -1, 2]])
    low = (8, 12, 12)
    template, brain = site_template(site, range(len(site)), FULL, low, 1)
    centres = lesion_centres(cases, labels, 3)
    true_centre = (torch.nonzero(site.items[0]["seg"] > 0).float().mean(0) / torch.tensor([7.0, 11.0, 11.0]) * 2 - 1)
    assert (true_centre < -0.15).all()  # off the middle of the grid
    np.testing.assert_allclose(centres[0], true_centre.numpy(), atol=0.03)  # where the group's tumours sit
    rng = np.random.default_rng(0)
    inside = brain.numpy()
    masks = torch.from_numpy(synthetic_masks(low, class_fractions(cases, labels, 3), 2, rng, centres=centres,
                                              brain=inside))
    assert int(masks.sum()) > 0 and not masks[:, ~torch.from_numpy(inside)].any()  # every lesion inside the brain
    for mask in masks:  # each lesion sits towards the group's tumours, not in the middle of the grid
        drawn = torch.nonzero(mask > 0).float().mean(0) / torch.tensor([7.0, 11.0, 11.0]) * 2 - 1
        assert (drawn < 0).all() and float((drawn - true_centre).abs().max()) < 0.3
    images = init_synthetic(site, "class_stats", masks, low, rng, torch.Generator().manual_seed(0), labels=labels,
                            cases=cases, min_group=3, template=template)
    background = (masks[0] == 0)
    # non-tumour voxels: the shared anatomy (the bright 'ventricle', zero outside the brain), a little noise
    assert float((images[0][:, background] - template[:, background]).abs().mean()) < 0.2
    ventricle = torch.zeros_like(background)
    ventricle[4:6, 6:8, 6:8] = True
    assert int((ventricle & background).sum()) >= 4 and float(images[0, 2][ventricle & background].mean()) > 2.0
    assert float(images[0][:, ~torch.from_numpy(inside)].abs().mean()) < 0.2
    tumour = [float(images[i, 0][masks[i] > 0].mean()) for i in range(2)]
    assert tumour[0] > 1.0 and tumour[1] < -1.0  # the lesion keeps its class's intensities


def test_condensation_starts_from_the_template_of_every_case_whatever_the_request(tiny_cache, monkeypatch):
    import gliofed.federated.site.condense as module

    seen = []
    original = module.site_template
    def spy(data, indices, reference, low, min_group):
        seen.append((frozenset(int(i) for i in indices), tuple(reference), min_group))
        return original(data, indices, reference, low, min_group)

    monkeypatch.setattr(module, "site_template", spy)
    dataset = CaseDataset(tiny_cache, split="train")
    shape = module.reference_shape(dataset, 4)[0]
    for seed, real_batch, scale in ((0, 3, 4), (1, 6, 2), (2, len(dataset), 3)):
        module.condense(small_model().eval(), dataset, DistillSettings(steps=0, real_batch=real_batch, scale=scale),
                        seed, "all", min_group=3)
    # every case, on the site's own full-resolution grid whatever the scale, pooled as the site's min_group says
    assert seen == [(frozenset(range(len(dataset))), shape, 3)] * 3
    module.condense(small_model().eval(), dataset, DistillSettings(steps=0), 0, "all", min_group=5)
    assert seen[-1][2] == 5
    module.condense(small_model().eval(), dataset, DistillSettings(steps=0, init="noise"), 0, "all", min_group=3)
    assert len(seen) == 4  # only class_stats uses it


def test_condensation_paints_its_lesions_inside_the_template_brain_onto_the_template(tiny_cache):
    """End to end: what ``condense`` sends (steps=0) is the template's anatomy with lesions inside its brain."""
    import gliofed.federated.site.condense as module

    dataset = CaseDataset(tiny_cache, split="train")
    payload = module.condense(small_model().eval(), dataset, DistillSettings(steps=0), 0, "all", min_group=3)
    images = torch.from_numpy(payload.arrays["syn_images"].astype(np.float32))
    masks = torch.from_numpy(payload.arrays["syn_masks"])
    shape = module.reference_shape(dataset, DistillSettings().scale)[0]
    template, brain = module.site_template(dataset, range(len(dataset)), shape, tuple(masks.shape[1:]), 3)
    assert int(masks.sum()) > 0 and not masks[:, ~brain].any()
    background = (masks == 0)[:, None].expand_as(images)
    difference = (images - template[None].expand_as(images))[background]
    assert float(difference.abs().mean()) < 0.2  # the template plus a little noise
    assert float(images[:, :, ~brain].abs().mean()) < 0.2  # nothing where fewer than 3 patients have brain


def test_summary_groups_are_disjoint_share_labels_and_fall_back_marker_by_marker():
    from gliofed.federated.site.condense import case_statistics, group_for, summary_groups

    site = _TwoClassSite()
    cases = case_statistics(site, range(len(site)))
    groups = summary_groups(cases, 3)
    assert sorted(len(g) for g in groups) == [4, 4]
    assert all(len({tuple(c["labels"]) for c in g}) == 1 for g in groups)
    # no IDH-mutant grade IV case: IDH, the stronger cue, picks the group
    assert all(int(c["labels"][0]) == 1 for c in group_for(groups, np.array([1, -1, -1, 2])))
    assert summary_groups(cases, 5) and all(len(g) >= 5 for g in summary_groups(cases, 5))
    assert summary_groups(cases, 9) == []  # 8 masked cases cannot make a group of 9
    for k in (1, 2, 3, 5):  # a partition: every case exactly once
        assert sorted(id(c) for g in summary_groups(cases, k) for c in g) == sorted(id(c) for c in cases)


def _one_rare_case_site():
    """The two-class site plus one IDH-mutant grade IV case whose tumour is very bright in contrast 1 and has no
    oedema at all: the only case with that label vector."""
    site = _TwoClassSite()
    seg = torch.zeros(8, 12, 12, dtype=torch.long)
    seg[2:6, 3:9, 3:9] = 1
    image = torch.randn(4, 8, 12, 12) * 0.1
    image[1][seg > 0] += 9.0
    site.items.append({"image": image, "seg": seg, "has_mask": torch.tensor(True),
                       "labels": torch.tensor([1, -1, -1, 2])})
    return site


def test_no_volume_starts_from_one_rare_patients_summary():
    from gliofed.federated.site.condense import case_statistics, class_fractions, init_synthetic, synthetic_masks

    site = _one_rare_case_site()
    cases = case_statistics(site, range(len(site)))
    rare = np.array([[1, -1, -1, 2]])
    masks_for = {}
    for min_group in (1, 3):
        rng = np.random.default_rng(0)
        fractions = class_fractions(cases, rare, min_group)
        masks = torch.from_numpy(synthetic_masks((8, 12, 12), fractions, 1, rng))
        images = init_synthetic(site, "class_stats", masks, (8, 12, 12), rng, torch.Generator().manual_seed(0),
                                labels=rare, cases=cases, min_group=min_group)
        masks_for[min_group] = (fractions[0], float(images[0, 1][masks[0] > 0].mean()))
    # alone (min_group=1) the volume is that patient's: all core, no oedema, contrast 1 at ~9
    assert masks_for[1][0][2] == 0 and masks_for[1][1] > 8
    # pooled over >= 3 cases (the IDH-mutant ones, grade no longer matched): oedema present, intensity diluted
    assert masks_for[3][0][2] > 0 and masks_for[3][1] < 4


def test_a_class_too_few_cases_of_the_group_show_is_not_summarised():
    from gliofed.federated.site.condense.init import _mean_stats, case_statistics

    site = _TwoClassSite()  # enhancing rim (class 3) only in the 4 wildtype cases
    cases = case_statistics(site, range(len(site)))
    mutant = [c for c in cases if int(c["labels"][0]) == 1]
    assert torch.isnan(_mean_stats(mutant, 4, 3)[3]).all()  # no mutant case shows class 3
    assert not torch.isnan(_mean_stats(cases, 4, 3)[3]).any()  # 4 cases do
    assert torch.isnan(_mean_stats(cases, 4, 5)[3]).all()  # but not 5
    assert torch.isnan(_mean_stats(cases[:2], 4, 3)).all()  # two cases summarise nothing at min 3


def test_no_two_released_summaries_differ_by_one_patient():
    """The differencing attack on per-label averages: a site of 3 mutant grade II cases, 4 wildtype grade IV
    cases and one mutant grade IV patient X. Whatever label vectors a server's seed draws, X's statistics are
    never one released average minus another: each volume's statistics are its disjoint group's."""
    from gliofed.federated.site.condense import case_statistics, group_for, summary_groups

    site = _one_rare_case_site()
    site.items.pop(0)  # 3 mutant grade II cases left
    cases = case_statistics(site, range(len(site)))
    groups = summary_groups(cases, 3)
    x = next(c for c in cases if tuple(int(v) for v in c["labels"]) == (1, -1, -1, 2))
    # X's own label vector picks the group X sits in, and that group is not X alone
    assert any(c is x for c in group_for(groups, x["labels"])) and len(group_for(groups, x["labels"])) >= 3
    vectors = {tuple(int(v) for v in c["labels"]) for c in cases} | {(1, -1, -1, 0), (0, -1, -1, 2), (1, 0, 0, 2)}
    members = {frozenset(id(c) for c in group_for(groups, np.array(v))) for v in vectors}
    assert all(len(m) >= 3 for m in members)
    assert all(a == b or len(a ^ b) >= 3 for a in members for b in members)


def _recording_condense(monkeypatch, dataset, min_group):
    """Run ``condense`` (0 steps and 2) over several seeds and real_batch sizes; return the index sets that the
    BatchNorm statistics, the matching targets and the image summaries were computed over."""
    import gliofed.federated.site.condense as module

    seen = {"bn": [], "targets": [], "summaries": []}
    for name, key in (("real_bn_statistics", "bn"), ("real_targets", "targets"), ("case_statistics", "summaries")):
        original = getattr(module, name)

        def record(net, data, indices, *rest, _original=original, _key=key, **kw):
            seen[_key].append(frozenset(int(i) for i in indices))
            return _original(net, data, indices, *rest, **kw)

        if name == "case_statistics":
            def record(data, indices, _original=original):  # noqa: F811 (a different signature)
                seen["summaries"].append(frozenset(int(i) for i in indices))
                return _original(data, indices)
        monkeypatch.setattr(module, name, record)
    model = small_model().eval()
    for seed in (0, 1, 2):
        for real_batch in (3, 4, 7, len(dataset)):
            settings = DistillSettings(steps=1 if real_batch == 4 else 0, real_batch=real_batch, models=1)
            module.condense(model, dataset, settings, seed, "all", min_group=min_group)
    return seen


def test_real_cases_are_averaged_in_whole_fixed_blocks_whatever_the_seed_and_real_batch(tiny_cache, monkeypatch):
    """The attack: request real_batch n, then n - 1 with the same seed and model, and subtract the BatchNorm
    statistics to get one patient's. Every average is over whole fixed blocks of >= min_group cases instead."""
    from gliofed.federated.site.condense import real_blocks

    dataset = CaseDataset(tiny_cache, split="train")
    n = len(dataset)
    blocks = [frozenset(int(i) for i in b) for b in real_blocks(n, 3)]
    assert n >= 12 and all(len(b) >= 3 for b in blocks) and sum(len(b) for b in blocks) == n
    assert len(frozenset().union(*blocks)) == n  # disjoint and covering
    seen = _recording_condense(monkeypatch, dataset, 3)
    averaged = seen["bn"] + seen["targets"]
    assert len(seen["targets"]) == 3 and len(set(seen["bn"])) > 1  # steps ran; seeds and sizes changed the set
    for used in averaged:
        assert used == frozenset().union(*[b for b in blocks if b <= used])  # a union of whole blocks
    assert all(a == b or len(a ^ b) >= 3 for a in averaged for b in averaged)
    assert all(len(used) >= 3 for used in averaged)
    assert set(seen["summaries"]) == {frozenset(range(n))}  # image summaries: all cases, never the seed's pick


def test_real_blocks_are_the_sites_own_and_do_not_depend_on_the_request():
    from gliofed.federated.site.condense import real_blocks, real_subset

    assert [b.tolist() for b in real_blocks(17, 3)] == [b.tolist() for b in real_blocks(17, 3)]
    assert sorted(len(b) for b in real_blocks(17, 3)) == [3, 3, 3, 4, 4]
    assert len(real_blocks(5, 3)) == 1 and len(real_blocks(5, 1)) == 5
    for seed in range(5):
        for real_batch in range(1, 20):
            subset = real_subset(17, real_batch, 3, np.random.default_rng(seed))
            assert min(real_batch, 17) <= len(subset) <= min(real_batch, 17) + 3


def test_matching_targets_fewer_cases_than_the_minimum_back_are_left_out(tiny_cache):
    from gliofed.federated.site.condense.matching import _levels, real_targets
    from gliofed.vocab import MARKER_CLASSES, MARKERS

    dataset = CaseDataset(tiny_cache, split="train", sites=["brats21", "tcga_lgg"])
    model = small_model().eval()
    labels = np.asarray(dataset.labels)
    everything = real_targets(model, dataset, range(len(dataset)), 1)
    pooled = real_targets(model, dataset, range(len(dataset)), 3)
    for j, marker in enumerate(MARKERS):
        for c in range(len(MARKER_CLASSES[marker])):
            count = int((labels[:, j] == c).sum())
            assert (("hidden", j, c) in everything["class"]) == (count >= 1)
            assert (("hidden", j, c) in pooled["class"]) == (count >= 3)
    assert any(0 < int((labels[:, j] == c).sum()) < 3 for j in range(4) for c in range(2)), "fixture"
    # a voxel target is the mean over every voxel of the class in the masked cases (as on the synthetic side)
    shown = {k: sum(bool(dataset[i]["has_mask"]) and bool((dataset[i]["seg"] == k).any())
                    for i in range(len(dataset))) for k in range(4)}
    assert {k for k in shown if shown[k] >= 1} == set(everything["voxel"])
    assert {k for k in shown if shown[k] >= 3} == set(pooled["voxel"])
    most = max(shown.values())
    assert len(real_targets(model, dataset, range(len(dataset)), most)["voxel"]) < len(everything["voxel"]), shown
    with torch.no_grad():
        total, count, cases = 0.0, 0, 0
        for i in range(len(dataset)):
            item = dataset[i]
            if bool(item["has_mask"]):
                decoder = _levels(model, item["image"][None])["decoder"][0]
                chosen = item["seg"].reshape(-1) == 2
                if bool(chosen.any()):
                    total = total + decoder.reshape(decoder.shape[0], -1)[:, chosen].sum(1)
                    count, cases = count + int(chosen.sum()), cases + 1
    assert cases >= 3
    torch.testing.assert_close(pooled["voxel"][2], total / count, rtol=1e-4, atol=1e-5)


def test_label_vectors_sent_are_shared_by_at_least_the_minimum_group():
    from gliofed.federated.site.condense import group_labels

    site = _one_rare_case_site()  # 4 mutant grade II, 4 wildtype grade IV, one mutant grade IV patient
    labels = np.array([item["labels"].numpy() for item in site.items])
    assert (group_labels(labels, 1) == labels).all()
    released = group_labels(labels, 3)
    assert tuple(released[-1]) == (1, -1, -1, -1)  # the rare patient's rare grade is not sent (nor made up)
    known = released >= 0
    assert (released[known] == labels[known]).all()  # no case is sent with a label it does not have
    for j in range(4):  # every value sent is one at least 3 cases are sent with
        for v in np.unique(released[:, j][released[:, j] >= 0]):
            assert int((released[:, j] == v).sum()) >= 3
    assert (group_labels(labels[:2], 3) == -1).all()  # too few cases: nothing known is sent


def test_condensed_label_vectors_are_group_vectors(tiny_cache):
    from gliofed.federated.site.condense import group_labels

    dataset = CaseDataset(tiny_cache, split="train")
    allowed = {tuple(int(v) for v in row) for row in group_labels(dataset.labels, 3)}
    assert allowed != {tuple(int(v) for v in row) for row in np.asarray(dataset.labels)}  # fixture: it matters
    for seed in (0, 1):
        payload = condense(small_model().eval(), dataset, DistillSettings(steps=0, n_synthetic=8), seed, "all",
                           min_group=3)
        assert {tuple(int(v) for v in row) for row in payload.arrays["syn_labels"]} <= allowed


def test_a_lesion_class_too_few_cases_of_the_group_show_is_left_out_of_the_mask():
    from gliofed.federated.site.condense import case_statistics, class_fractions

    site = _TwoClassSite()
    site.items[0]["seg"][3, 4:8, 8] = 3  # one mutant case alone has an enhancing rim
    cases = case_statistics(site, range(len(site)))
    mutant = np.array([[1, -1, -1, 0]])
    assert class_fractions(cases, mutant, 1)[0, 3] > 0
    fractions = class_fractions(cases, mutant, 3)[0]
    assert fractions[3] == 0 and fractions[1] > 0 and fractions[2] > 0 and abs(fractions.sum() - 1) < 1e-9


def test_a_site_with_fewer_masked_cases_than_the_minimum_sends_unmasked_noise_volumes():
    from gliofed.federated.site.condense import case_statistics, class_fractions, init_synthetic, synthetic_masks

    site = _TwoClassSite()
    cases = case_statistics(site, range(2))
    labels = np.array([[1, -1, -1, 0], [0, -1, -1, 2]])
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(synthetic_masks((8, 12, 12), class_fractions(cases, labels, 3), 2, rng))
    assert int(masks.sum()) == 0  # no lesion: the server treats them as unmasked
    images = init_synthetic(site, "class_stats", masks, (8, 12, 12), rng, torch.Generator().manual_seed(0),
                            labels=labels, cases=cases, min_group=3)
    assert abs(float(images.mean())) < 0.1 and 0.3 < float(images.std()) < 0.7  # 0.5 x standard normal


def test_the_server_cannot_lower_the_sites_minimum_group(tiny_cache, monkeypatch):
    import gliofed.federated.site.site as site_module
    from gliofed.errors import ConfigError, PolicyError

    assert SitePolicy().min_group == 3
    assert SitePolicy.from_node_config({"policy-min-group": "5"}).min_group == 5
    with pytest.raises(ConfigError, match="min_group"):
        SitePolicy(min_group=0)
    seen = []
    monkeypatch.setattr(site_module, "condense", lambda *args, **kwargs: seen.append(kwargs["min_group"]) or
                        Payload("distilled_set", {}, {}))
    site = Site("tcga_lgg", tiny_cache, policy=SitePolicy(min_group=2, refuse_flagged=False))
    model = small_model()
    request = site_settings(model, distill={"steps": 0})
    site.handle("distill", Payload("model", state_to_arrays(model), {}), request)
    assert seen == [2]  # the operator's bound reaches condensation
    asking = site_settings(model, distill={"steps": 0, "min_group": 1})
    with pytest.raises(PolicyError, match="unknown distillation setting.*min_group"):
        site.handle("distill", Payload("model", state_to_arrays(model), {}), asking)
    assert seen == [2]  # refused before anything ran


def test_a_site_with_fewer_cases_than_its_minimum_group_refuses_to_distill(tiny_cache):
    from gliofed.errors import PolicyError

    model = small_model()
    site = Site("tcga_lgg", tiny_cache, policy=SitePolicy(min_group=4))
    assert site.n_cases == 3
    with pytest.raises(PolicyError, match="3 training case.*fewer than the 4"):
        site.handle("distill", Payload("model", state_to_arrays(model), {}), site_settings(model, distill={"steps": 0}))



def _separation_after_server_training(kl_weight: float) -> float:
    """A server trained on one site's 8 synthetic volumes whose 1p/19q class shows in contrast 0, with soft labels
    that carry no class information (the global model answered both classes alike, p = 0.13): how far apart its
    1p/19q outputs for the two classes end up."""
    from gliofed.federated.site.condense import build_payload
    from gliofed.vocab import MARKER_CLASSES

    torch.manual_seed(0)
    n = 8
    images = torch.randn(n, 4, 4, 6, 6) * 0.3
    labels = np.full((n, 4), -1)
    labels[:, 1] = np.arange(n) % 2
    images[labels[:, 1] == 1, 0] += 1.0
    images[labels[:, 1] == 0, 0] -= 1.0
    tables = {m: np.zeros((len(c), len(c)), np.float32) for m, c in MARKER_CLASSES.items()}
    counts = {m: np.zeros(len(c), np.int64) for m, c in MARKER_CLASSES.items()}
    tables["codeletion"][:] = [0.87, 0.13]
    counts["codeletion"][:] = 5
    payload = build_payload(images, torch.zeros(n, 4, 6, 6, dtype=torch.uint8), labels, tables, counts, {},
                            {"site": "a", "n_cases": 10, "shape": [8, 12, 12], "scale": 2, "init": "noise",
                             "temperature": 2.0})
    model = small_model()
    DistillFederation({"server_epochs": 40, "kl_weight": kl_weight, "memory_rounds": 0}).aggregate(
        model, {"a": payload}, rnd=1)
    with torch.no_grad():
        full = F.interpolate(images.float(), size=(8, 12, 12), mode="trilinear", align_corners=False)
        p = torch.softmax(model(full)["codeletion"], 1)[:, 1].numpy()
    return float(p[labels[:, 1] == 1].mean() - p[labels[:, 1] == 0].mean())


def test_uninformative_soft_labels_do_not_stop_the_server_learning_a_marker_at_the_default_weight():
    """The soft labels are the global model's answers: where it does not yet separate a marker's classes, the KL
    term holds the server there. The default weight leaves the hard labels in charge; a heavy one does not."""
    assert DistillSettings().kl_weight == 0.25
    default = _separation_after_server_training(DistillSettings().kl_weight)
    assert default > 0.25
    assert _separation_after_server_training(4.0) < 0.5 * default
