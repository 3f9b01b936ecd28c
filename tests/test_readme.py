"""What the README says about the Makefile and the notebooks is what they do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def _defaults() -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^(\w+)\s*\?=[ \t]*(.*)$", MAKEFILE, re.M)}


def _recipe(target: str) -> str:
    match = re.search(rf"^{target}:.*\n((?:\t.*\n?)+)", MAKEFILE, re.M)
    assert match, target
    return match.group(1)


def test_every_make_variable_the_readme_sets_exists_with_the_stated_default():
    defaults = _defaults()
    for name in set(re.findall(r"make \w+(?: \w+=\S+)* (\w+)=", README)) | set(re.findall(r"\b([A-Z_]+)=\S", README)):
        if name.startswith(("DEMO_", "TORCH_")):
            assert name in defaults, name
    assert f"`TORCH_SPEC` (default `{defaults['TORCH_SPEC']}`)" in README
    assert defaults["TORCH_INDEX"] == "" and "`TORCH_INDEX`" in README and "(default: unset)" in README
    assert f"it trains {defaults['DEMO_ROUNDS']} rounds and {defaults['DEMO_ABLATION_EPOCHS']} ablation" in README


def test_the_torch_install_uses_the_index_only_when_one_is_named():
    setup = _recipe(r"\$\(VENV\)/\.installed")
    assert '$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"' in setup
    assert 'pip install --quiet -e ".[test]"' in setup and 'pip install -e ".[test]"' in README


def test_make_test_installs_chromium_with_apt_as_the_readme_says():
    recipe = _recipe("test")
    assert "sh .ci/install-browser.sh" in recipe and "chromium" in recipe
    assert "apt-get install" in (ROOT / ".ci" / "install-browser.sh").read_text()
    assert "installs Chromium with apt-get if missing" in README
    assert "nothing outside it is touched" not in README + MAKEFILE


def test_the_demo_writes_where_the_readme_says():
    demo = _recipe("demo")
    assert _defaults()["DEMO_DATA"] == "data/$(DEMO_PRESET)" and _defaults()["DEMO_PRESET"] == "workshop"
    assert "--out runs/demo" in demo and "`data/workshop/`" in README and "`runs/demo/`" in README


def test_the_notebooks_open_where_the_readme_says():
    assert "open the notebooks: `.venv/bin/jupyter lab gliofed/ipynb`" in README
    assert (ROOT / "gliofed" / "ipynb").is_dir() and "$(BIN)/jupyter lab gliofed/ipynb" in _recipe("lab")


@pytest.mark.parametrize("anchor", re.findall(r"\]\(#([a-z0-9-]+)\)", README))
def test_every_contents_link_finds_its_heading(anchor):
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#{2,3} (.+)$", README, re.M)}
    assert anchor in headings


def test_the_readmes_benchmark_table_is_the_csvs():
    """The README's comparison states the seeded benchmark's means and intervals: the same as its CSVs say."""
    from gliofed.experiments.benchmark import benchmark_table

    table = benchmark_table(columns={"auc_mean": "auc", "dice_WT": "wt", "dice_TC": "tc"})
    section = README[README.index("### How the five compare"):README.index("### Running across hospitals")]
    for strategy, row in table.iterrows():
        assert f"| {strategy} | {row['auc']} | {row['wt']} | {row['tc']} |" in section, strategy
