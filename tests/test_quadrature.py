import math

import numpy as np
import pytest
import torch
from captum.attr._utils.approximation_methods import approximation_parameters

from fastattr.methods.quadrature import METHODS, RIEMANN_METHODS, nodes_and_weights


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [2, 3, 7, 16, 50, 101])
def test_equals_captum_float_for_float(method, n):
    step_sizes, alphas = approximation_parameters(method)
    a, w = nodes_and_weights(method, n)
    assert a == alphas(n)
    assert w == step_sizes(n)
    assert all(type(v) is float for v in a + w)


@pytest.mark.parametrize("method", METHODS)
def test_equals_captum_with_float64_default_dtype(method):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        step_sizes, alphas = approximation_parameters(method)
        assert nodes_and_weights(method, 9) == (alphas(9), step_sizes(9))
    finally:
        torch.set_default_dtype(old)


def test_gausslegendre_one_step_and_exactness():
    assert nodes_and_weights("gausslegendre", 1) == ([0.5], [1.0])
    # n nodes integrate polynomials of degree 2n - 1 exactly on [0, 1].
    for n in (1, 3, 8):
        a, w = nodes_and_weights("gausslegendre", n)
        for deg in range(2 * n):
            assert math.isclose(sum(wk * ak ** deg for ak, wk in zip(a, w)), 1 / (deg + 1), rel_tol=1e-12)
        assert all(0 < ak < 1 for ak in a)


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle"])
def test_riemann_one_step(method):
    a, w = nodes_and_weights(method, 1)
    assert a == [{"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]]
    assert w == [1.0]


@pytest.mark.parametrize("n", [2, 5, 50])
def test_trapezoid_quirk(n):
    a, w = nodes_and_weights("riemann_trapezoid", n)
    assert a[0] == 0.0 and a[-1] == 1.0
    assert math.isclose(sum(w), 1 - 1 / n, rel_tol=1e-12)
    assert w[0] == w[-1] == 1 / (2 * n)


@pytest.mark.parametrize("method", METHODS)
def test_nodes_sorted_in_unit_interval_and_weights_positive(method):
    a, w = nodes_and_weights(method, 13)
    assert len(a) == len(w) == 13
    assert a == sorted(a) and 0 <= a[0] and a[-1] <= 1
    assert min(w) > 0
    if method != "riemann_trapezoid":
        assert math.isclose(sum(w), 1.0, rel_tol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        nodes_and_weights("simpson", 5)
    with pytest.raises(ValueError, match="method must be one of"):
        nodes_and_weights(None, 5)
    with pytest.raises(ValueError, match="n_steps must be at least 1"):
        nodes_and_weights("gausslegendre", 0)
    with pytest.raises(ValueError, match="n_steps must be at least 1"):
        nodes_and_weights("riemann_left", -3)
    with pytest.raises(TypeError, match="n_steps must be an int"):
        nodes_and_weights("gausslegendre", 2.5)
    with pytest.raises(TypeError, match="n_steps must be an int"):
        nodes_and_weights("gausslegendre", True)
    with pytest.raises(ValueError, match="needs n_steps >= 2"):
        nodes_and_weights("riemann_trapezoid", 1)
    assert nodes_and_weights("gausslegendre", np.int64(4)) == nodes_and_weights("gausslegendre", 4)
    assert set(RIEMANN_METHODS) < set(METHODS)
