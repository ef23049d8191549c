"""The tiny random test model (see sdpo_core.measure.synthetic): kept as a module so test helpers import it by name."""

from sdpo_core.measure.synthetic import make_tiny_model_dir

__all__ = ["make_tiny_model_dir"]
