"""Single-gradient attributions: saliency, input x gradient, guided backprop, deconvnet.

Each is one gradient of the target score per sample, computed in chunks of at
most ``batch_size`` samples by the gradient evaluator of :mod:`fastattr.engine`. They match Captum's ``Saliency``,
``InputXGradient``, ``GuidedBackprop`` and ``Deconvolution``, except that the
guided rules here reach every ReLU however it is called (``nn.ReLU``,
``F.relu``, ``torch.relu``, ``Tensor.relu_``, in place or not, and ReLU6),
where Captum's module hooks see ``nn.ReLU`` modules only and silently give
plain gradients through functional ReLUs (torchvision's GoogLeNet, DenseNet).

Each also takes a tuple of input tensors (returning one attribution per
input) and ``additional_forward_args`` (see :func:`fastattr.engine.several_inputs`).

The model is called as is (put it in ``eval()`` first if it has dropout or
batch norm); its parameters, flags and hooks are left untouched, and no
parameter gradients are accumulated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import engine
from ..guidance import guided
from ..targets import resolve
from ._common import Target, check_inputs


def input_gradients(model, inputs: Tensor, target: Target = None, batch_size: int | None = None,
                    context=None) -> Tensor:
    """Gradient of the target score with respect to ``inputs`` (one per sample),
    the model running under ``context`` (e.g. a :func:`fastattr.guided` mode)."""
    x = check_inputs(inputs).detach()
    batch_size = engine.check_batch_size(batch_size, x)
    target = resolve(model, x, target, batch_size)
    grads = torch.empty_like(x)
    tiles = engine.plan(x.shape[0], 1, batch_size)
    for tile, grad, _ in engine.gradients(model, target, tiles, lambda t: x[t.s0:t.s1], context):
        grads[tile.s0:tile.s1] = grad
    return grads


@engine.several_inputs()
def saliency(model: Callable[[Tensor], Tensor], inputs: Tensor, target: Target = None, abs: bool = True,
             batch_size: int | None = None) -> Tensor:
    """Saliency (Simonyan et al., 2013): ``|d f_c / d x|``, or the signed gradient with ``abs=False``.

    ``abs=True`` is Captum's ``Saliency`` default. ``target`` and ``batch_size``
    are as in :func:`fastattr.integrated_gradients` (here a chunk holds at most
    ``batch_size`` samples). Returns a tensor shaped like ``inputs``.
    """
    if not isinstance(abs, bool):
        raise TypeError(f"fastattr: abs must be a bool, got {type(abs).__name__}")
    grads = input_gradients(model, inputs, target, batch_size)
    return grads.abs() if abs else grads


@engine.several_inputs()
def input_x_gradient(model: Callable[[Tensor], Tensor], inputs: Tensor, target: Target = None,
                     batch_size: int | None = None) -> Tensor:
    """Input x gradient (Shrikumar et al., 2016): ``x * d f_c / d x``, as Captum's ``InputXGradient``."""
    return input_gradients(model, inputs, target, batch_size) * inputs.detach()


@engine.several_inputs()
def guided_backprop(model: Callable[[Tensor], Tensor], inputs: Tensor, target: Target = None,
                    batch_size: int | None = None) -> Tensor:
    """Guided backpropagation (Springenberg et al., 2015): every ReLU / ReLU6 passes
    ``g * 1[x > 0] * 1[g > 0]`` backwards (ReLU6 also needs ``x < 6``). Max-pool
    gradients are ordinary, as in Captum's ``GuidedBackprop``."""
    return input_gradients(model, inputs, target, batch_size, guided(model, mode="guided"))


@engine.several_inputs()
def deconvnet(model: Callable[[Tensor], Tensor], inputs: Tensor, target: Target = None,
              batch_size: int | None = None) -> Tensor:
    """Deconvnet (Zeiler & Fergus, 2014): every ReLU / ReLU6 passes ``relu(g)``
    backwards whatever its input. Max-pool gradients are ordinary, as in Captum's
    ``Deconvolution``."""
    return input_gradients(model, inputs, target, batch_size, guided(model, mode="deconvnet"))
