"""Training dynamics: latent phases of training with a Gaussian HMM (spec/DYNAMICS.md).

After Hu, Chen, Saphra & Cho, "Latent State Models of Training Dynamics" (TMLR 2023).
The analyzer plugin is :class:`DynamicsAnalyzer` (name ``dynamics``); the pieces are usable
on their own: :func:`extract_features` (trace -> feature matrix), :func:`fit_dynamics`
(feature matrices -> fitted phase model), :func:`n_free_parameters`,
:func:`log_posterior_gradient` and :func:`transition_drivers`.
"""

from .analysis import DynamicsFit, change_points, fit_dynamics
from .analyzer import DynamicsAnalyzer, transition_dot
from .detours import convergence_step, state_correlations
from .features import FEATURES, RunFeatures, extract_features
from .fitting import n_free_parameters, select_model, zscore_runs
from .options import DynamicsOptions
from .posterior import log_posterior_gradient, log_transition_posterior, transition_drivers
from .states import STATES, read_states

__all__ = [
    "DynamicsAnalyzer",
    "DynamicsOptions",
    "DynamicsFit",
    "FEATURES",
    "RunFeatures",
    "STATES",
    "change_points",
    "convergence_step",
    "extract_features",
    "fit_dynamics",
    "log_posterior_gradient",
    "log_transition_posterior",
    "n_free_parameters",
    "read_states",
    "select_model",
    "state_correlations",
    "transition_dot",
    "transition_drivers",
    "zscore_runs",
]
