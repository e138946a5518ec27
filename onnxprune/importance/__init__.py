"""Importance: one score per component, computed in the group's own coordinates.

``base`` holds the registry and the member reduction / group normalization; each module adds
criteria (``magnitude``: data-free weight criteria; ``activation``: criteria that read
calibration data; ``distortion``: the output distortion when one component alone is masked,
measured on calibration data through one ORT session with overridable weights; ``obs``: OBS
saliency, from calibration or synthetic data; ``gradient``: Taylor, SNIP and SynFlow through
onnx2torch; ``energy``: the output energy of the layers reading each group, which the
"energy" normalization divides by)."""

from . import activation, distortion, gradient, magnitude, obs  # noqa: F401 - importing a module registers criteria
from .activation import consumed_inputs
from .base import CRITERIA, NORMALIZATIONS, REDUCTIONS, ScoringContext, normalize, score
from .energy import group_output_energy
from .magnitude import l2_magnitude

__all__ = ["CRITERIA", "NORMALIZATIONS", "REDUCTIONS", "ScoringContext", "consumed_inputs",
           "group_output_energy", "l2_magnitude", "normalize", "score"]
