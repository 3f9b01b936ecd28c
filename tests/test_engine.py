import os
import pickle

import numpy as np
import pytest
import torch

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.data.transforms import augment_pipeline
from gliofed.engine import TrainBatches, eval_batch_size, fit, predict, seed_everything
from gliofed.errors import ConfigError
from gliofed.losses import MultiTaskLoss
from gliofed.model import build_model
from gliofed.presets import train_preset
from gliofed.runs import load_checkpoint, save_checkpoint

SMALL = dict(model={"features": (4, 8, 16, 32), "hidden": 8}, epochs=1, batch_size=3, optimizer="adamw", lr=1e-2,
             augment=False, device="cpu")


def _train(cache, seed=0, epochs=1):
    config = TrainConfig(seed=seed, **{**SMALL, "epochs": epochs})
    seed_everything(config.seed)
    model = build_model(config)
    history = fit(model, CaseDataset(cache, split="train"), config, progress=False)
    return model, history, config


def test_fit_changes_weights_and_reports_losses(tiny_cache):
    seed_everything(0)
    untouched = build_model(TrainConfig(**SMALL))
    model, history, _ = _train(tiny_cache)
    assert history[0]["epoch"] == 1 and {"seg", "idh", "grade", "total"} <= set(history[0])
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), untouched.state_dict().values()))


def test_same_seed_reproduces_the_run_on_cpu(tiny_cache):
    a, ha, _ = _train(tiny_cache, seed=5)
    b, hb, _ = _train(tiny_cache, seed=5)
    c, _, _ = _train(tiny_cache, seed=6)
    assert ha == hb
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_training_reduces_the_loss_on_a_fixed_batch(tiny_cache):
    config = TrainConfig(**{**SMALL, "epochs": 30})
    seed_everything(0)
    model = build_model(config)
    subset = torch.utils.data.Subset(CaseDataset(tiny_cache, split="train", sites=["brats21"]), [0, 1])
    history = fit(model, subset, config.replace(batch_size=2), progress=False)
    assert history[-1]["total"] < 0.7 * history[0]["total"]


def test_predict_scores_every_case(tiny_cache, tmp_path):
    model, _, _ = _train(tiny_cache)
    test = CaseDataset(tiny_cache, split="test")
    table = predict(model, test, device="cpu", save_masks=tmp_path, progress=False)
    assert len(table) == len(test)
    probs = table[["p_grade_0", "p_grade_1", "p_grade_2"]].sum(axis=1)
    assert ((probs - 1).abs() < 1e-5).all()
    masked = table[table["has_mask"]]
    assert masked["dice_WT"].between(0, 1).all()
    assert table.loc[~table["has_mask"], "dice_WT"].isna().all()
    assert (tmp_path / f"{table['subject'].iloc[0]}.pred.npy").is_file()


def test_checkpoint_round_trip(tiny_cache, tmp_path):
    model, history, config = _train(tiny_cache)
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path / "m.ckpt", model, config, optimizer, epoch=1, extra={"history": history})
    loaded, loaded_config, state = load_checkpoint(path)
    assert loaded_config == config and state["epoch"] == 1 and state["extra"]["history"] == history
    x = torch.randn(1, 4, 3, 16, 16)
    model.eval(), loaded.eval()
    torch.testing.assert_close(model(x)["grade"], loaded(x)["grade"])


def test_config_validation_and_presets(tmp_path):
    assert TrainConfig().optimizer == "sgd" and TrainConfig().lr == 1e-3 and TrainConfig().epochs == 60
    assert train_preset("tiny", epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="optimizer 'adam'"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="unknown preset"):
        train_preset("huge")
    config = TrainConfig(modalities=("t1", "t2"))
    config.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == config


def test_fit_applies_compile_from_the_config_and_trains_the_original_parameters(tiny_cache, monkeypatch):
    compiled = []

    def spy(module, *args, **kwargs):  # stands in for torch.compile: records the call, returns the module
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", spy)
    config = TrainConfig(**{**SMALL, "compile": True})
    seed_everything(0)
    model = build_model(config)
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, CaseDataset(tiny_cache, split="train"), config, progress=False)
    assert compiled == [model]
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_dp_sgd_trains_a_group_norm_model_and_reports_its_epsilon(tiny_cache):
    from gliofed.config import TrainConfig
    from gliofed.data.dataset import CaseDataset
    from gliofed.dp import DPSettings
    from gliofed.engine import fit
    from gliofed.model import build_model

    config = TrainConfig(model={"features": (4, 8, 16, 32), "hidden": 8, "norm": "group"}, batch_size=2,
                         optimizer="adamw", lr=1e-2, augment=False, device="cpu", seed=3)
    train = CaseDataset(tiny_cache, split="train").for_site(CaseDataset(tiny_cache, split="train").sites[0])
    net = build_model(config)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dp = DPSettings("dp_sgd", noise_multiplier=1.0, max_norm=1.0)
    seed_everything(3)  # dropout draws from the global generator, as in every fit
    history = fit(net, train, config, epochs=2, progress=False, dp=dp)
    assert len(history) == 2 and history[-1]["dp_steps"] == max(1, round(len(train) / 2))
    assert history[0]["epsilon"] < history[1]["epsilon"] < float("inf")
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    twin = build_model(config)
    twin.load_state_dict(before)
    seed_everything(3)
    fit(twin, train, config, epochs=2, progress=False, dp=dp)  # same seed: same sampling and noise
    for key, value in net.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[key], value)


def test_dp_sgd_refuses_a_batchnorm_model(tiny_cache):
    from gliofed.config import TrainConfig
    from gliofed.data.dataset import CaseDataset
    from gliofed.dp import DPSettings
    from gliofed.engine import fit
    from gliofed.errors import ConfigError
    from gliofed.model import build_model

    config = TrainConfig(model={"features": (4, 8, 16, 32), "hidden": 8}, device="cpu")
    with pytest.raises(ConfigError, match="norm='group'"):
        fit(build_model(config), CaseDataset(tiny_cache, split="train"), config, epochs=1, progress=False,
            dp=DPSettings("dp_sgd"))
# ------------------------------------------------------------------------------ the data path (issue 26)
DEVICE_PATH = dict(augment=True, augment_on="device", pad_depth=16, epochs=2)


def _six_cases(cache):
    """Six training cases of unequal depth (brats21, tcga_gbm and rembrandt): four steps of 3 in two epochs."""
    dataset = CaseDataset(cache, split="train", sites=["brats21", "tcga_gbm", "rembrandt"])
    return torch.utils.data.Subset(dataset, [0, 1, 3, 4, 6, 7])


def _train_on(cache, seed=0, **changes):
    config = TrainConfig(seed=seed, **{**SMALL, **DEVICE_PATH, **changes})
    seed_everything(config.seed)
    model = build_model(config)
    history = fit(model, _six_cases(cache), config, progress=False)
    return model, history


def test_same_seed_reproduces_the_device_path_on_cpu_to_the_last_digit(tiny_cache):
    # the GPU's data path run on the CPU: fp16 cases, batched seeded augmentation, fixed depth, cases held in memory
    a, ha = _train_on(tiny_cache, seed=5, device_cache="on")
    b, hb = _train_on(tiny_cache, seed=5, device_cache="on")
    _, hc = _train_on(tiny_cache, seed=6, device_cache="on")
    assert ha == hb and ha != hc
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_device_cache_and_loader_feed_the_same_batches(tiny_cache):
    config = TrainConfig(seed=2, **{**SMALL, **DEVICE_PATH})
    cases = _six_cases(tiny_cache)
    held = TrainBatches(cases, config.replace(device_cache="on"), torch.device("cpu"))
    loaded = TrainBatches(cases, config.replace(device_cache="off"), torch.device("cpu"))
    assert held.device_cache and not loaded.device_cache
    for epoch in (0, 1):
        pairs = list(zip(held.epoch(epoch), loaded.epoch(epoch), strict=True))
        assert len(pairs) == len(held) == 2
        for x, y in pairs:
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["seg"], y["seg"])
            assert torch.equal(x["labels"], y["labels"]) and torch.equal(x["has_mask"], y["has_mask"])


def test_batches_have_one_fixed_depth_and_stored_types_are_cast(tiny_cache):
    config = TrainConfig(**{**SMALL, **DEVICE_PATH, "pad_depth": 24})
    batches = TrainBatches(_six_cases(tiny_cache), config, torch.device("cpu"))
    found = list(batches.epoch(0))
    assert {tuple(batch["image"].shape[2:]) for batch in found} == {(24, 32, 32)}
    assert {batch["image"].dtype for batch in found} == {torch.float32} and found[0]["seg"].dtype == torch.int64
    assert batches.source.dataset[0]["image"].dtype == torch.float16  # read as stored; cast on the device


def test_automatic_depth_is_the_deepest_cached_case_rounded_up_on_cuda_only(tiny_cache):
    assert TrainConfig().depth_multiple == 1
    dataset = CaseDataset(tiny_cache, split="train", sites=["rembrandt"])  # its own cases are shallow
    config = TrainConfig(**{**SMALL, "depth_multiple": 5})
    assert TrainBatches(dataset, config, torch.device("cpu")).depth is None  # CPU: per batch, as before
    batches = object.__new__(TrainBatches)
    batches.dataset, batches.config, batches.device = dataset, config, torch.device("cuda")
    assert batches._resolve_depth() == 20  # the whole cache's deepest case (16), rounded up to 5


def test_training_hashes_each_case_once_and_workers_never(tiny_cache, monkeypatch):
    from gliofed.data import cache as cache_module

    parent, hashed = os.getpid(), []
    real = cache_module._sha256_file

    def counting(path):
        if os.getpid() != parent:
            raise AssertionError(f"a worker hashed {path}")
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(cache_module, "_VERIFIED", {})
    monkeypatch.setattr(cache_module, "_sha256_file", counting)
    cases = _six_cases(tiny_cache)
    config = TrainConfig(**{**SMALL, **DEVICE_PATH, "epochs": 2, "num_workers": 2})
    fit(build_model(config), cases, config, progress=False)
    files = len(cases.dataset) + int(cases.dataset.index["has_mask"].astype(bool).sum())  # the view's, verified once
    assert len(hashed) == len(set(hashed)) == files


def test_a_copy_sent_to_a_worker_carries_the_checksums(tiny_cache, monkeypatch):
    from gliofed.data import cache as cache_module

    dataset = CaseDataset(tiny_cache, split="train")
    dataset.verify(workers=2)
    monkeypatch.setattr(cache_module, "_VERIFIED", {})  # what a freshly spawned process knows
    copy = pickle.loads(pickle.dumps(dataset))
    monkeypatch.setattr(cache_module, "_sha256_file", lambda path: pytest.fail(f"{path} hashed again"))
    assert copy[0]["image"].shape[0] == 4


def test_engine_replaces_a_views_own_augmentation_instead_of_stacking_it(tiny_cache):
    dataset = CaseDataset(tiny_cache, split="train", transform=augment_pipeline(0))
    config = TrainConfig(**{**SMALL, "augment": True})
    loader_side = TrainBatches(dataset, config, torch.device("cpu"))
    assert loader_side.source.transform is not dataset.transform and loader_side.source.transform.gliofed_augmentation
    device_side = TrainBatches(dataset, config.replace(augment_on="device"), torch.device("cpu"))
    assert device_side.source.transform is None


def test_loss_terms_are_the_same_with_masks_on_the_host():
    torch.manual_seed(0)
    loss = MultiTaskLoss()
    outputs = {"seg": torch.randn(3, 4, 5, 6, 7), "idh": torch.randn(3, 2), "codeletion": torch.randn(3, 2),
               "mgmt": torch.randn(3, 2), "grade": torch.randn(3, 3)}
    seg = torch.randint(0, 4, (3, 1, 5, 6, 7))
    labels = torch.tensor([[1, -1, 0, 2], [0, -1, -1, 1], [1, -1, 1, -1]])
    for has_mask in (torch.tensor([True, False, True]), torch.tensor([True, True, True])):
        total, parts = loss.terms(outputs, seg, has_mask, labels)
        masked = has_mask.nonzero().reshape(-1)
        seg_only = loss.dice_ce(outputs["seg"][masked], seg[masked])
        assert torch.equal(parts["seg"], seg_only) and float(parts["codeletion"]) == 0.0
        known = labels[:, 0] >= 0
        assert torch.equal(parts["idh"], torch.nn.functional.cross_entropy(outputs["idh"][known], labels[known, 0]))
        assert torch.equal(total, sum(parts.values()))


def test_new_settings_are_checked_and_survive_json(tmp_path):
    for bad in (dict(augment_on="gpu"), dict(device_cache="yes"), dict(pad_depth=0), dict(pad_depth="max"),
                dict(depth_multiple=0), dict(compile="always")):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(**bad)
    config = TrainConfig(pad_depth=48, device_cache="off", augment_on="device", compile=False, cuda_graphs=True)
    config.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == config
    assert TrainConfig().compile == "auto" and TrainConfig().augment_on == "auto"


def test_scoring_in_batches_of_one_shape_keeps_every_case_in_order(tiny_cache):
    model, _, _ = _train(tiny_cache)
    test = CaseDataset(tiny_cache, split="test")
    single = predict(model, test, device="cpu", progress=False, hd95=False)
    batched = predict(model, test, device="cpu", progress=False, hd95=False, batch_size=4)
    assert list(batched["subject"]) == list(single["subject"]) == list(test.index["subject_id"])
    numbers = [c for c in single.columns if c.startswith(("p_", "dice_"))]
    assert np.allclose(batched[numbers].to_numpy(float), single[numbers].to_numpy(float), atol=1e-4, equal_nan=True)
    assert eval_batch_size(TrainConfig(), "cpu") == 1 and eval_batch_size(TrainConfig(), "cuda") == 8
