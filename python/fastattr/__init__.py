"""fastattr: fast neural-network attribution for PyTorch.

The compiled ops live in ``torch.ops.fastattr`` (typed wrappers in
:mod:`fastattr.ops`), their pure-PyTorch references in :mod:`fastattr.reference`,
the attribution methods are exported here, and their evaluation metrics
(deletion, insertion, pointing game) are in :mod:`fastattr.metrics`.
"""

from . import _ops as ops  # noqa: F401  (loads the compiled ops first)

from . import engine, targets  # noqa: E402,F401  (the evaluation engine; target objects)
from .guidance import GuidedMode, guided  # noqa: E402
from .methods import (  # noqa: E402
    METHODS,
    causal,
    causal_ate,
    deconvnet,
    feature_ablation,
    gnl_heatmap,
    gnl_integrated_gradients,
    guided_backprop,
    input_x_gradient,
    integrated_gradients,
    mfpp,
    nodes_and_weights,
    occlusion,
    rise,
    saliency,
    smooth_grad,
    smooth_taylor,
)

from . import metrics  # noqa: E402,F401  (deletion, insertion, pointing game)
from . import data, models  # noqa: E402,F401  (bundled data sets and models)

__version__ = "0.1.0"


def __getattr__(name: str):
    # fastattr.jobs (the job runner's library side: Results, run) on first use,
    # so that `import fastattr` stays light.
    if name == "jobs":
        import importlib

        return importlib.import_module(".jobs", __name__)
    raise AttributeError(f"module 'fastattr' has no attribute {name!r}")
