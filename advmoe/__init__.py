"""advmoe: robust sparse Mixture-of-Experts CNNs (AdvMoE, ICCV 2023), reproduced."""
__version__ = "0.1.0"

from . import numerics  # noqa: E402  (before torch runs a kernel: see advmoe.numerics)

numerics.pin_environment()

from .models import create_model, list_models, record_routing  # noqa: E402
from .experiments import ExperimentSpec, get, load, make_spec, run, table1  # noqa: E402

__all__ = ["create_model", "list_models", "record_routing", "ExperimentSpec", "make_spec", "table1", "run", "load",
           "get", "__version__"]
