"""The capability contract (``contract.py``) for every backend exported by ``ssmppl.inference``."""

import pytest

import ssmppl.inference as inference
from ssmppl.inference import (EKF, UKF, AuxiliaryPF, BootstrapPF, EnKF, EnSF, GaussHermite, GuidedPF, Kalman,
                              MomentMatching)

from .contract import *  # noqa: F401,F403

# Sample sizes for the sampling backends; the others run with their defaults.
SETTINGS = {"Kalman": Kalman(), "Kalman[square_root]": Kalman(square_root=True),
            "Kalman[parallel]": Kalman(parallel=True), "EKF": EKF(), "UKF": UKF(), "GaussHermite": GaussHermite(),
            "MomentMatching": MomentMatching(), "BootstrapPF": BootstrapPF(4000), "GuidedPF": GuidedPF(2000),
            "AuxiliaryPF": AuxiliaryPF(2000), "EnKF": EnKF(400), "EnSF": EnSF(200, num_steps=100)}


def test_every_exported_backend_has_settings():
    exported = [n for n in inference.__all__ if isinstance(getattr(inference, n), type)
                and issubclass(getattr(inference, n), inference.Backend) and n != "Backend"]
    assert set(exported) <= set(SETTINGS), f"give {set(exported) - set(SETTINGS)} settings here"


# The sampling backends' capabilities (smoothers, path sampling, forecasts) compile several programs
# each: they run in the slow tier; the deterministic ones in the default run.
@pytest.fixture(params=[pytest.param(n, marks=pytest.mark.slow) if SETTINGS[n].requires_key else n
                        for n in SETTINGS], scope="module")
def backend_entry(request):
    return request.param, SETTINGS[request.param]
