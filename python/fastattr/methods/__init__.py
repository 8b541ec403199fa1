"""Attribution methods. ``METHODS`` maps each method's name to its function
(used by the command line); every function takes ``(model, inputs, target=None, ...)``
and returns attributions shaped like ``inputs``, or one map per image,
(B, 1, H, W), for the mask-sampling methods RISE and MFPP."""

from . import causal  # noqa: F401  (fastattr.causal: causal_ate, component_ate, patch_bank)
from .causal import causal_ate, causal_ate_job, component_ate
from .gradients import deconvnet, guided_backprop, input_x_gradient, saliency
from .integrated_gradients import gnl_heatmap, gnl_integrated_gradients, integrated_gradients
from .perturbation import feature_ablation, mfpp, occlusion, rise
from .quadrature import nodes_and_weights
from .smoothing import smooth_grad, smooth_taylor

METHODS = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "guided_backprop": guided_backprop,
    "deconvnet": deconvnet,
    "integrated_gradients": integrated_gradients,
    "gnl_integrated_gradients": gnl_integrated_gradients,
    "smooth_grad": smooth_grad,
    "smooth_taylor": smooth_taylor,
    "occlusion": occlusion,
    "feature_ablation": feature_ablation,
    "rise": rise,
    "mfpp": mfpp,
    "causal_ate": causal_ate_job,
}

# Methods whose gradients follow fastattr.guided's rules: they cannot run on
# TorchScript models (see fastattr.guidance.check_guidable).
GUIDED_METHODS = frozenset({"guided_backprop", "deconvnet", "gnl_integrated_gradients"})


def uses_guided_rules(name: str, options: dict) -> bool:
    """Whether method ``name`` with ``options`` runs the model under guided rules
    (a noise tunnel does when its base does)."""
    if name in GUIDED_METHODS:
        return True
    return name == "smooth_grad" and options.get("base") in GUIDED_METHODS


# Methods whose maps are signed causal effects, drawn with PdCR's red/blue
# colouring (fastattr.visualize.causal_overlay) instead of a heat colour map.
CAUSAL_METHODS = frozenset({"causal_ate"})


def heatmap_style(name: str) -> str:
    """The heatmap style of method ``name``'s maps (fastattr.visualize.save_heatmap)."""
    return "causal" if name in CAUSAL_METHODS else "heat"
