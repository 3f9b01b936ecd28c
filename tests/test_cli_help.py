"""The command line explains itself: a version, help for every flag, the exit codes, --config files whose values
the flags override, and refusals of misspelt notebook parameters and nonsense predict flags."""

from __future__ import annotations

import argparse
import json

import pytest

from gliofed.cli import EXIT_CODES, build_parser, check_arguments, main, train_config, walk_parsers
from gliofed.config import read_config_file
from gliofed.errors import ConfigError
from gliofed.presets import get_preset


def _flags():
    for parser in walk_parsers(build_parser()):
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                yield parser.prog, action


@pytest.mark.parametrize(("prog", "action"), list(_flags()),
                         ids=[f"{prog}:{'/'.join(a.option_strings) or a.dest}" for prog, a in _flags()])
def test_every_flag_and_argument_has_help(prog, action):
    assert action.help and action.help.strip() and action.help != argparse.SUPPRESS


def test_the_parser_walk_reaches_every_command():
    progs = {parser.prog for parser in walk_parsers(build_parser())}
    assert {"gliofed train", "gliofed predict", "gliofed card", "gliofed notebooks run", "gliofed sweep"} <= progs


def test_version(capsys):
    from gliofed import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"gliofed {__version__}"


def test_help_lists_the_exit_codes_and_no_internals(capsys):
    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "exit status:" in text and all(f"  {code}  " in text for code in EXIT_CODES)
        assert "_cmd" not in text and "heavy imports" not in text


def _train_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "manifest.csv", *extra])


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_config_file_replaces_the_presets_settings_and_flags_replace_the_file(tmp_path, suffix):
    path = tmp_path / f"settings{suffix}"
    path.write_text(json.dumps({"epochs": 3, "lr": 0.01, "batch_size": 2, "modalities": ["t1", "t2"]})
                    if suffix == ".json" else 'epochs = 3\nlr = 0.01\nbatch-size = 2\nmodalities = ["t1", "t2"]\n')
    config = train_config(get_preset("tiny").train, _train_args("--config", str(path), "--lr", "0.5"))
    assert (config.epochs, config.batch_size, config.modalities) == (3, 2, ("t1", "t2"))
    assert config.lr == 0.5  # the flag wins over the file
    assert config.optimizer == "adamw"  # untouched settings stay the preset's


def test_loader_workers_set_the_dataloaders_workers_not_preprocessing():
    args = _train_args("--loader-workers", "3", "--workers", "2")
    assert train_config(get_preset("tiny").train, args).num_workers == 3 and args.workers == 2
    assert train_config(get_preset("tiny").train, _train_args()).num_workers == get_preset("tiny").train.num_workers


@pytest.mark.parametrize(("text", "message"), [
    ('{"epoch": 3}', "unknown training setting(s) epoch"),
    ('{"lr": "fast"}', "lr must be float, not 'fast'"),
    ('{"optimizer": "adam"}', "optimizer 'adam' is not 'sgd' or 'adamw'"),
    ('[1, 2]', "must be a JSON table"),
    ('{"epochs": ', "not a readable JSON file"),
])
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="c.json") as error:
        read_config_file(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_config_file_is_refused_before_any_work(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,site\na1,a\n")
    (tmp_path / "c.toml").write_text("epochs = 0.5\n")
    assert main(["train", str(manifest), "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "c.toml: epochs must be int" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_notebooks_run_refuses_a_parameter_no_notebook_declares(tmp_path, capsys):
    assert main(["notebooks", "run", "--out", str(tmp_path / "out"), "-p", "preset", "tiny", "-p", "round", "1"]) == 2
    err = capsys.readouterr().err
    assert "no notebook declares the parameter(s) round;" in err and "rounds" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flag", "value", "message"), [("--size", "0", "must be a positive integer"),
                                                         ("--size", "big", "must be a positive integer"),
                                                         ("--device", "gpu", "is not a device")])
def test_predict_checks_size_and_device_like_the_other_commands(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as done:
        main(["predict", "model.safetensors", "--manifest", "m.csv", "--out", str(tmp_path), flag, value])
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_card_of_a_folder_without_a_model_is_refused(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == 2
    assert "not a run folder with a model.safetensors" in capsys.readouterr().err


def test_check_arguments_accepts_a_good_config_file(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,site\na1,a\n")
    (tmp_path / "c.json").write_text('{"epochs": 2}')
    check_arguments(build_parser().parse_args(["train", str(manifest), "--config", str(tmp_path / "c.json"),
                                               "--preset", "tiny", "--out", str(tmp_path / "o")]))


def test_notebooks_run_shows_papermills_progress(tmp_path, monkeypatch):
    import papermill

    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *args, **kwargs: calls.append(kwargs))
    assert main(["notebooks", "run", "--out", str(tmp_path), "-p", "preset", "tiny"]) == 0
    assert calls and all(call["progress_bar"] is True for call in calls)
    assert all(call["parameters"] == {"preset": "tiny"} for call in calls)


def test_sweep_fills_placeholders_with_each_runs_grid_values():
    from gliofed.notebooks import fill_placeholders

    fixed = {"data_dir": "data/tiny-{seed}", "preset": "tiny", "note": "{other}", "rounds": 2}
    assert fill_placeholders(fixed, {"seed": 3}) == {"data_dir": "data/tiny-3", "preset": "tiny", "note": "{other}",
                                                     "rounds": 2}
