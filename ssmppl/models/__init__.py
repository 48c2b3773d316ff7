"""Model tracing and the built-in model library."""

from .lgssm import linear_gaussian_ssm
from .local_level import local_level
from .lorenz import integrate, lorenz63, lorenz96, lorenz96_vector_field, rk4_step
from .pendulum import pendulum
from .poisson import poisson_ar1
from .stochastic_volatility import stochastic_volatility
from .tracing import SiteNames, StateSpace

__all__ = ["linear_gaussian_ssm", "local_level", "pendulum", "lorenz63", "lorenz96", "lorenz96_vector_field",
           "rk4_step", "integrate", "poisson_ar1", "stochastic_volatility", "SiteNames", "StateSpace"]
