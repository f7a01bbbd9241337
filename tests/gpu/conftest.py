"""tests/gpu: real CUDA runs (`pytest -m gpu`, run by `make gpu-check`). On a machine without CUDA every
test here is skipped with one clear reason, and collection stays cheap: this file imports torch only,
the test modules import DeepSpeed / the trainer inside their fixtures."""
import os

import pytest

SKIP_REASON = "needs CUDA (make gpu-check on a GPU node)"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


CUDA = cuda_available()
if CUDA:
    # The top-level conftest defaults DS_ACCELERATOR to cpu (the CI machines); here DeepSpeed must use CUDA.
    os.environ["DS_ACCELERATOR"] = "cuda"
    # cuBLAS reproducibility for the bit-for-bit resume test (read when cuBLAS starts: before any CUDA work)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_out(tmp_path_factory):
    """Where the tests record their figures: $GPU_CHECK_OUT/gpu-tests under make gpu-check, else a tmp dir."""
    root = os.environ.get("GPU_CHECK_OUT")
    path = os.path.join(root, "gpu-tests") if root else str(tmp_path_factory.mktemp("gpu-tests"))
    os.makedirs(path, exist_ok=True)
    return path
