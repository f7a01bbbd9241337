"""Shared test settings: offline, CPU, deterministic; paths to the repo's bundled configs."""
import os
from pathlib import Path

import pytest

# Module fixtures' temporary folders go when the module is done (CI's disk is small): tests/tmp_cleanup.py
from tests.tmp_cleanup import (_charge_folders_to_fixtures, pytest_fixture_post_finalizer,  # noqa: F401
                                pytest_fixture_setup)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY_MODEL = CONFIGS / "models" / "tiny-vit.json"
FLICKR8K = Path(os.environ.get("CLIPFORGE_FLICKR8K", REPO.parent / "shared" / "data" / "flickr8k"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model_config() -> Path:
    return TINY_MODEL


@pytest.fixture(scope="session")
def flickr8k_dir() -> Path:
    if not (FLICKR8K / "captions.csv").is_file():
        pytest.skip(f"Flickr8k not found at {FLICKR8K} (set CLIPFORGE_FLICKR8K to its folder)")
    return FLICKR8K
