"""credo's algorithm core: pure functions on tensors (only ``torch`` and the standard library).

Each plug point has one signature and a dict registry at the bottom of its module:
ADVANTAGES (advantages.py), LOSSES (losses.py), AGGREGATIONS (aggregation.py), KL_ESTIMATORS (kl.py),
CREDIT (credit.py), SELECTION (selection.py); statistics and pass@k live in stats.py.
``docs/algorithms.md`` maps each paper to its function and test.
"""

from .advantages import ADVANTAGES, constant_groups, informative_groups
from .aggregation import AGGREGATIONS, aggregate
from .credit import CREDIT
from .kl import KL_ESTIMATORS
from .losses import LOSSES, LossParams
from .selection import SELECTION

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "CREDIT",
    "KL_ESTIMATORS",
    "LOSSES",
    "SELECTION",
    "LossParams",
    "aggregate",
    "constant_groups",
    "informative_groups",
]
