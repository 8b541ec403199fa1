"""Small test models shared by the method tests, plus the GNL module-hook oracle.

Every model is deterministic given ``torch.manual_seed`` and small enough to run
in float64 on the CPU in milliseconds.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Import into a test module to run it on one intra-op thread: the models are
    tiny, and with several threads on a loaded machine OpenMP synchronisation,
    not arithmetic, dominates the run time."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ConvNet(nn.Module):
    """conv -> ReLU -> max-pool -> conv -> ReLU -> max-pool -> linear -> ReLU -> linear,
    all ReLUs and pools are modules (what Captum's hooks can see).

    ``pool`` is a dict of ``nn.MaxPool2d`` arguments used for both pools; ``relu6``
    swaps the second ReLU for ReLU6; ``inplace`` uses ``nn.ReLU(inplace=True)``.
    """

    def __init__(self, in_ch=3, size=12, classes=5, pool=None, relu6=False, inplace=False, width=6):
        super().__init__()
        pool = dict(kernel_size=2, stride=2) if pool is None else pool
        self.conv1 = nn.Conv2d(in_ch, width, 3, padding=1)
        self.act1 = nn.ReLU(inplace=inplace)
        self.pool1 = nn.MaxPool2d(**pool)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.act2 = nn.ReLU6(inplace=inplace) if relu6 else nn.ReLU(inplace=inplace)
        self.pool2 = nn.MaxPool2d(**pool)
        with torch.no_grad():
            n = self.features(torch.zeros(1, in_ch, size, size)).numel()
        self.fc1 = nn.Linear(n, 16)
        self.act3 = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(16, classes)

    def features(self, x):
        return self.pool2(self.act2(self.conv2(self.pool1(self.act1(self.conv1(x))))))

    def forward(self, x):
        return self.fc2(self.act3(self.fc1(self.features(x).flatten(1))))


class FunctionalReluNet(nn.Module):
    """The same layers as :class:`ConvNet` (2x2 pools), but its ReLUs are made
    every other way: ``F.relu``, ``torch.relu``, ``Tensor.relu_`` and an
    ``nn.ReLU(inplace=True)`` module. ``as_modules()`` returns an equivalent
    network with only ``nn.ReLU`` modules (same weights)."""

    def __init__(self, in_ch=3, size=12, classes=5, width=6):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width * (size // 4) ** 2, 16)
        self.fc2 = nn.Linear(16, 16)
        self.act = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(16, classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = self.fc1(x.flatten(1)).relu_()
        return self.fc3(self.act(self.fc2(x)))

    def as_modules(self) -> nn.Module:
        m = copy.deepcopy(self)
        return nn.Sequential(m.conv1, nn.ReLU(), nn.MaxPool2d(2), m.conv2, nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), m.fc1, nn.ReLU(), m.fc2, nn.ReLU(), m.fc3)


class LinearNet(nn.Module):
    """conv -> avg-pool -> linear, no ReLU and no max-pool (GNL invariant (a))."""

    def __init__(self, in_ch=3, size=8, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * (size // 2) ** 2, classes)

    def forward(self, x):
        return self.fc(torch.tanh(self.pool(self.conv(x))).flatten(1))


class Quadratic(nn.Module):
    """``f_c(x) = 1/2 x^T A_c x + b_c^T x`` on flattened inputs, one symmetric ``A_c`` per class."""

    def __init__(self, dim, classes=3, dtype=torch.float32):
        super().__init__()
        a = torch.randn(classes, dim, dim, dtype=torch.float64)
        self.A = nn.Parameter((a + a.transpose(1, 2)).div(2 * dim ** 0.5).to(dtype))
        self.b = nn.Parameter(torch.randn(classes, dim, dtype=torch.float64).to(dtype))

    def forward(self, x):
        z = x.flatten(1)
        return 0.5 * torch.einsum("ni,cij,nj->nc", z, self.A, z) + z @ self.b.T

    def exact_ig(self, x, xb, c):
        """``(x - x') * (A (x + x') / 2 + b)`` for class indices ``c`` (B,)."""
        z, zb = x.flatten(1), xb.flatten(1)
        grad_mid = torch.einsum("nij,nj->ni", self.A[c], (z + zb) / 2) + self.b[c]
        return ((z - zb) * grad_mid).view_as(x)


# ---------------------------------------------------------------------------
# GNL oracle: module backward hooks applying the rules of spec §1.2.
# ---------------------------------------------------------------------------

def _relu_hook(module, grad_input, grad_output):
    # grad_input is PyTorch's g * 1[x > 0] (ReLU) or g * 1[0 < x < 6] (ReLU6).
    return (F.relu(grad_input[0]),)


def _maxpool_hook(module, grad_input, grad_output):
    g_in = grad_input[0]
    mask = F.interpolate((grad_output[0] > 0).to(g_in.dtype), size=tuple(g_in.shape[2:]), mode="nearest")
    return (g_in * mask,)


def register_gnl_oracle(model: nn.Module, maxpool: bool = True) -> list:
    """Register the GNL backward rules as full backward hooks on every
    ``nn.ReLU`` / ``nn.ReLU6`` (and ``nn.MaxPool2d`` if ``maxpool``) module.
    In-place ReLU modules must be made out-of-place first (see
    :func:`oracle_copy`). Returns the handles."""
    handles = []
    for m in model.modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            assert not m.inplace, "make in-place ReLUs out of place before hooking"
            handles.append(m.register_full_backward_hook(_relu_hook))
        elif maxpool and isinstance(m, nn.MaxPool2d):
            handles.append(m.register_full_backward_hook(_maxpool_hook))
    return handles


def _basic_conv2d_with_module_relu(self, x):
    return self.oracle_relu(self.bn(self.conv(x)))


def _densenet_with_module_relu(self, x):
    out = self.oracle_relu(self.features(x))
    return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))


def oracle_copy(model: nn.Module) -> nn.Module:
    """A deep copy computing the same function whose ReLUs are all out-of-place
    ``nn.ReLU`` modules, so that module hooks see every one of them: in-place
    flags are cleared, and torchvision's functional ReLUs (GoogLeNet's
    ``BasicConv2d``, DenseNet's ReLU after ``features``) are replaced by a module
    through an instance-level ``forward``."""
    from torchvision.models.densenet import DenseNet
    from torchvision.models.googlenet import BasicConv2d

    m = copy.deepcopy(model)
    for mod in list(m.modules()):
        if isinstance(mod, (nn.ReLU, nn.ReLU6)):
            mod.inplace = False
        if isinstance(mod, (BasicConv2d, DenseNet)):
            mod.oracle_relu = nn.ReLU()
            fwd = _basic_conv2d_with_module_relu if isinstance(mod, BasicConv2d) else _densenet_with_module_relu
            mod.forward = types.MethodType(fwd, mod)
    return m


def hook_state(model: nn.Module):
    """Everything about a model that an attribution method must leave unchanged:
    module identities, training flags, hook dictionaries, parameter identities
    and requires_grad flags, and the state dict values."""
    mods = [(name, id(m), m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks),
             tuple(m._backward_hooks), tuple(m._backward_pre_hooks), type(m))
            for name, m in model.named_modules()]
    params = [(name, id(p), p.requires_grad, p.grad is None) for name, p in model.named_parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return mods, params, state


def assert_same_state(before, after):
    mods0, params0, state0 = before
    mods1, params1, state1 = after
    assert mods0 == mods1
    assert params0 == params1
    assert state0.keys() == state1.keys()
    for k in state0:
        assert torch.equal(state0[k], state1[k]), k
