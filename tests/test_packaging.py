"""What `pip install` puts into a user's environment: one top-level name, `clipforge` (issue 15: a top-level
`eval` or `launch` would collide with other distributions), the repo's folders under it, the console script,
and the `python -m` forms, installed and in a checkout."""
import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("data_pipeline", "pretrain", "launch", "eval", "modeling")


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def test_every_package_folder_is_installed_under_clipforge():
    """setup.cfg lists the packages by hand (package_dir remaps them): a new sub-package must join the list."""
    listed = set(_setup_cfg()["options"]["packages"].split())
    on_disk = {"clipforge"} | {
        "clipforge." + ".".join(init.parent.relative_to(REPO).parts)
        for top in FOLDERS for init in (REPO / top).rglob("__init__.py")}
    assert listed == on_disk


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, unpacked into a folder of its own (not editable, not the repo)."""
    if shutil.which("git") is None:
        pytest.skip("needs git to copy the tracked tree")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"  # a copy of the tree git sees, so build/ and egg-info never land in the checkout
    source.mkdir()
    subprocess.run(f"git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t {source}",
                   shell=True, cwd=REPO, check=True, executable="/bin/bash")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = (root / "dist").glob("clipforge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(root / "site")
        names = archive.namelist()
    return root / "site", names


def _run_installed(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_holds_one_top_level_name(installed):
    _, names = installed
    tops = {name.split("/")[0] for name in names}
    assert tops == {"clipforge", "clipforge-0.1.0.dist-info"}
    for folder in FOLDERS:  # each folder's modules, under clipforge/
        assert any(name.startswith(f"clipforge/{folder}/") and name.endswith(".py") for name in names), folder
    site, _ = installed
    scripts = (site / "clipforge-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert "clipforge = clipforge.launch.cli:main" in scripts


def test_installed_modules_import_and_run_away_from_the_checkout(installed, tmp_path):
    site, _ = installed
    probe = ("import sys, clipforge.pretrain.cli, clipforge.launch.cli, clipforge.eval.cli, clipforge.errors; "
             "print(clipforge.pretrain.cli.__file__); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('eval', 'launch', 'pretrain', 'modeling', 'data_pipeline')))")
    result = _run_installed(site, "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    module_file, bare = result.stdout.splitlines()
    assert Path(module_file).is_relative_to(site)
    assert bare == "[]"
    helped = _run_installed(site, "-m", "clipforge.pretrain", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--config" in helped.stdout, helped.stderr


@pytest.mark.parametrize("module", ["pretrain", "clipforge.pretrain"])
def test_python_m_in_a_checkout(module):
    """In a source checkout both forms work: `python -m clipforge.pretrain` (any cwd) and, from the repo's
    root, the folder's own `python -m pretrain`."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "--config" in result.stdout, result.stderr
