import pytest
import torch

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.engine import fit, predict, seed_everything
from gliofed.errors import ConfigError
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
