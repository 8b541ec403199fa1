"""Quadrature rules for path integrals (Integrated Gradients and friends).

``nodes_and_weights(method, n)`` returns the nodes ``alpha_k`` in [0, 1] and the
weights ``w_k`` of the rule, so that ``integral_0^1 g(a) da ~ sum_k w_k g(alpha_k)``.
The values are the same floats as Captum's ``approximation_parameters`` (spec
§0.1):

============================  ==================================  ==========================
method                        alpha_k                             w_k
============================  ==================================  ==========================
``"gausslegendre"``           ``(1 + xi_k) / 2``                  ``omega_k / 2``
``"riemann_left"``            ``linspace(0, 1 - 1/n, n)``         ``1/n``
``"riemann_right"``           ``linspace(1/n, 1, n)``             ``1/n``
``"riemann_middle"``          ``linspace(1/(2n), 1 - 1/(2n), n)`` ``1/n``
``"riemann_trapezoid"``       ``linspace(0, 1, n)``               ``1/n``, ends halved
============================  ==================================  ==========================

``(xi, omega)`` is ``numpy.polynomial.legendre.leggauss(n)``, computed in float64.

Two Captum details are kept on purpose, so that attributions match Captum's:

* The Riemann nodes come from ``torch.linspace`` in the default dtype
  (``torch.get_default_dtype()``, normally float32), so e.g. ``riemann_left``
  with n = 3 has ``alpha_1 = 0.3333333432674408``, not ``1/3``.
* ``riemann_trapezoid`` weights are ``1/n`` with the first and last halved, so
  they sum to ``1 - 1/n`` although the nodes are ``1/(n-1)`` apart. The rule
  therefore underestimates every integral by the factor ``(n-1)/n`` (it is not
  the textbook trapezoid rule, whose weights would be ``1/(n-1)``); a linear
  model's attributions sum to ``(1 - 1/n) (f(x) - f(x'))``. Use another rule if
  completeness matters.

Captum refuses n = 1 for every Riemann rule; here the left, right and middle
rules accept it (one node at 0, 1 or 1/2, weight 1). The trapezoid rule needs
n >= 2 and Gauss-Legendre n >= 1.
"""

from __future__ import annotations

import numpy as np
import torch

RIEMANN_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
METHODS = ("gausslegendre",) + RIEMANN_METHODS


def check_n_steps(n_steps, name: str = "n_steps") -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
        raise TypeError(f"fastattr: {name} must be an int, got {type(n_steps).__name__}")
    if n_steps < 1:
        raise ValueError(f"fastattr: {name} must be at least 1, got {n_steps}")
    return int(n_steps)


def nodes_and_weights(method: str = "gausslegendre", n_steps: int = 50) -> tuple[list[float], list[float]]:
    """Nodes ``alphas`` and weights of the quadrature rule ``method`` with ``n_steps`` points.

    Args:
        method: one of ``"gausslegendre"``, ``"riemann_left"``, ``"riemann_right"``,
            ``"riemann_middle"``, ``"riemann_trapezoid"``.
        n_steps: number of nodes (>= 1; >= 2 for ``"riemann_trapezoid"``).

    Returns:
        ``(alphas, weights)``: two lists of ``n_steps`` Python floats, equal float
        for float to Captum's ``approximation_parameters(method)`` (see the module
        docstring for the trapezoid quirk).
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"fastattr: method must be one of {METHODS}, got {method!r}")
    n = check_n_steps(n_steps)
    if method == "gausslegendre":
        xi, omega = np.polynomial.legendre.leggauss(n)
        return (0.5 * (1 + xi)).tolist(), (0.5 * omega).tolist()

    kind = method.split("_", 1)[1]
    if kind == "trapezoid" and n < 2:
        raise ValueError("fastattr: method 'riemann_trapezoid' needs n_steps >= 2, got 1")
    start, end = {
        "left": (0.0, 1 - 1 / n),
        "right": (1 / n, 1.0),
        "middle": (1 / (2 * n), 1 - 1 / (2 * n)),
        "trapezoid": (0.0, 1.0),
    }[kind]
    dtype = torch.get_default_dtype()
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    alphas = torch.linspace(start, end, n, dtype=dtype).tolist()
    weights = [1 / n] * n
    if kind == "trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
    return alphas, weights
