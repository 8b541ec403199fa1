import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_rng():
    """Tests draw fresh random inputs but must not leak RNG state into each other."""
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    yield
    torch.set_rng_state(state)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)


@pytest.fixture(params=["eager", "fake"])
def tensor_mode(request):
    """Errors must be the same from the C++ kernels and from the fake kernels
    (what torch.compile and torch.export see)."""
    if request.param == "eager":
        yield None
    else:
        with FakeTensorMode():
            yield "fake"
