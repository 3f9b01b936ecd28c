import pytest
import torch

from gliofed.data.cache import read_index
from gliofed.data.dataset import MODALITY_SETS, CaseDataset, collate_cases
from gliofed.errors import ConfigError


def test_sample_contents(tiny_cache):
    ds = CaseDataset(tiny_cache)
    sample = ds[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape[0] == 4
    assert sample["seg"].shape == (1, *sample["image"].shape[1:])
    assert sample["labels"].shape == (4,) and sample["labels"].dtype == torch.int64
    assert isinstance(sample["site"], str) and isinstance(sample["subject"], str)


def test_case_without_mask_has_flag_and_zero_seg(tiny_cache):
    ds = CaseDataset(tiny_cache, sites=["rembrandt"])
    sample = ds[0]
    assert not sample["has_mask"] and sample["seg"].sum() == 0


def test_modality_subset_selects_channels_in_order(tiny_cache):
    full = CaseDataset(tiny_cache)[0]["image"]
    subset = CaseDataset(tiny_cache, modalities=MODALITY_SETS["T1+T2"])[0]["image"]
    assert subset.shape[0] == 2
    torch.testing.assert_close(subset[1], full[2])  # t2 is the third contrast


def test_split_is_patient_level_and_stratified_by_site(tiny_cache):
    train, test = CaseDataset(tiny_cache, split="train"), CaseDataset(tiny_cache, split="test")
    assert not set(train.index["subject_id"]) & set(test.index["subject_id"])
    assert len(train) + len(test) == len(read_index(tiny_cache))
    assert set(train.sites) == set(test.sites) == {"brats21", "upenn", "tcga_gbm", "tcga_lgg", "rembrandt"}


def test_external_site_is_held_out(tiny_cache):
    train = CaseDataset(tiny_cache, split="train", external_site="upenn")
    external = CaseDataset(tiny_cache, split="external", external_site="upenn")
    assert "upenn" not in train.sites and external.sites == ["upenn"] and len(external) == 4


def test_per_site_view(tiny_cache):
    ds = CaseDataset(tiny_cache, split="train")
    view = ds.for_site("tcga_lgg")
    assert set(view.index["site"]) == {"tcga_lgg"} and 0 < len(view) < len(ds)


def test_collate_pads_cases_of_different_depth(tiny_cache):
    ds = CaseDataset(tiny_cache)
    depths = ds.index.groupby("site")["depth"].first()
    a = ds.index.index[ds.index["site"] == depths.idxmax()][0]
    b = ds.index.index[ds.index["site"] == depths.idxmin()][0]
    batch = collate_cases([ds[a], ds[b]])
    assert batch["image"].shape[2] == depths.max() and batch["seg"].shape[2] == depths.max()
    assert batch["labels"].shape == (2, 4)


def test_bad_modalities_and_unknown_sites_raise(tiny_cache):
    with pytest.raises(ConfigError, match="subset of t1, t1ce, t2, flair"):
        CaseDataset(tiny_cache, modalities=("dwi",))
    with pytest.raises(ConfigError, match="mars"):
        CaseDataset(tiny_cache, sites=["mars"])


def test_collate_pads_as_monai_does_and_records_each_cases_region():
    from monai.data.utils import pad_list_data_collate

    torch.manual_seed(0)
    cases = [{"image": torch.randn(2, depth, 8, 9), "seg": torch.randint(0, 4, (1, depth, 8, 9)),
              "labels": torch.tensor([1, 0, -1, 2]), "subject": f"s{depth}"} for depth in (7, 4, 5)]
    ours, monai = collate_cases([dict(c) for c in cases]), pad_list_data_collate([dict(c) for c in cases])
    for key in ("image", "seg", "labels"):
        assert type(ours[key]) is torch.Tensor and torch.equal(ours[key], torch.as_tensor(monai[key]))
    assert ours["subject"] == ["s7", "s4", "s5"]
    assert ours["region"][:, 0].tolist() == [[0, 7], [1, 5], [1, 6]]  # symmetric: the odd voxel goes after
    assert ours["region"][:, 1:].tolist() == [[[0, 8], [0, 9]]] * 3


def test_collate_to_a_fixed_depth_pads_shallow_and_centre_crops_deep_cases():
    deep, shallow = torch.arange(9.0).reshape(1, 9, 1, 1), torch.ones(1, 3, 1, 1)
    batch = collate_cases([{"image": deep}, {"image": shallow}], depth=5)
    assert batch["image"].shape == (2, 1, 5, 1, 1)
    assert batch["image"][0].flatten().tolist() == [2, 3, 4, 5, 6]
    assert batch["image"][1].flatten().tolist() == [0, 1, 1, 1, 0]
    assert batch["region"][:, 0].tolist() == [[0, 5], [1, 4]]


def test_stored_view_reads_the_cache_types_without_converting(tiny_cache):
    ds = CaseDataset(tiny_cache, modalities=MODALITY_SETS["T1+T2"])
    stored = ds.stored()[0]
    assert stored["image"].dtype == torch.float16 and stored["seg"].dtype == torch.uint8
    assert torch.equal(stored["image"].float(), ds[0]["image"]) and torch.equal(stored["seg"].long(), ds[0]["seg"])
    assert ds.cache_max_depth == int(read_index(tiny_cache)["depth"].max())
