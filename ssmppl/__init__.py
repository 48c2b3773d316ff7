"""ssmppl: state-space models written as NumPyro programs, with pluggable inference backends."""

from .cpu_threads import limit_cpu_threads

# Before anything below can start jax's CPU client or load SciPy's OpenBLAS: on machines with at
# most 2 cores, one-thread XLA and OpenBLAS pools against jax 0.10's batched-LAPACK deadlock (see
# ssmppl/cpu_threads.py and the README's "Troubleshooting"; setting PJRT_NPROC, NPROC or
# OPENBLAS_NUM_THREADS yourself keeps your choice).
CPU_THREAD_SETTINGS = limit_cpu_threads()

from . import diagnostics, inference, models  # noqa: E402
from .compilation_cache import enable_compilation_cache  # noqa: E402
from .errors import ModelStructureError, ObservationShapeError  # noqa: E402
from .inference import (EKF, UKF, AuxiliaryPF, BootstrapPF, EnKF, EnSF, GaussHermite, GuidedPF, Kalman,  # noqa: E402
                        Localization, MomentMatching)
from .marginal import marginalize  # noqa: E402
from .ssm import SSM  # noqa: E402

__version__ = "0.1.0"

__all__ = ["SSM", "marginalize", "Kalman", "EKF", "UKF", "GaussHermite", "MomentMatching", "BootstrapPF", "GuidedPF",
           "AuxiliaryPF", "EnKF", "EnSF", "Localization", "diagnostics", "inference", "models", "ModelStructureError",
           "ObservationShapeError", "enable_compilation_cache"]
