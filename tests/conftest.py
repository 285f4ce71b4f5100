import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on CPU tensors (must be set before kernel modules import).
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _scores_dir() -> Path | None:
    for p in (Path(__file__).resolve().parents[2] / "shared/data/scores", os.environ.get("FASTDD_SCORES")):
        if p and Path(p, "cscores_CIFAR10.npz").exists():
            return Path(p)
    return None


SCORES = _scores_dir()
needs_scores = pytest.mark.skipif(
    SCORES is None, reason="real score files not found beside the repo (../shared/data/scores) nor in $FASTDD_SCORES"
)


@pytest.fixture(scope="session")
def mnist5k():
    import fastdd

    return fastdd.load_dataset("mnist5k")


@pytest.fixture
def tiny_ds():
    """A small generated data set: 4 classes, 12 train / 4 test images each, 1x8x8."""
    from fastdd.data import from_pixels

    g = torch.Generator().manual_seed(0)
    k, n_tr, n_te = 4, 12, 4
    tx = torch.rand(k * n_tr, 1, 8, 8, generator=g)
    vx = torch.rand(k * n_te, 1, 8, 8, generator=g)
    ty = torch.arange(k).repeat_interleave(n_tr)
    vy = torch.arange(k).repeat_interleave(n_te)
    # make classes separable: brighten one quadrant per class
    for x, y in ((tx, ty), (vx, vy)):
        for c in range(k):
            x[y == c, :, (c // 2) * 4 : (c // 2) * 4 + 4, (c % 2) * 4 : (c % 2) * 4 + 4] += 1.0
    return from_pixels("tiny", tx, ty, vx, vy, k)


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a whole test module, as the ranks of the distributed tests run (CPU kernels' float sums
    depend on the thread count); the count is restored afterwards. Use: ``pytestmark =
    pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
