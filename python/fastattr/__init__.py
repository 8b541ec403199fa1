"""fastattr: fast neural-network attribution for PyTorch.

The compiled ops live in ``torch.ops.fastattr`` (typed wrappers in
:mod:`fastattr.ops`), their pure-PyTorch references in :mod:`fastattr.reference`,
and the attribution methods are exported here.
"""

from . import _ops as ops  # noqa: F401  (loads the compiled ops first)

__version__ = "0.1.0"
