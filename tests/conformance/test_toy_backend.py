"""A backend that implements only ``filter`` (the exact Kalman filter from the maths layer)
and declares a likelihood gets the whole conformance suite from this file alone: the cases of
``test_backends.py`` (its entry registered in ``cases``, the tests imported and run for it
only) and the capability contract of ``contract.py`` (``backend_entry``): its filter and
likelihood agree with the oracle and Kalman, and smoothing, path sampling, forecasting and the
posterior predictive are refused with the generated message, which lists it among the backends
with a likelihood. Nothing outside this file names it."""

import dataclasses

import pytest

from ssmppl.inference import Backend, Capability, linear_gaussian_params
from ssmppl.maths.kalman import kalman_filter

from conformance import cases as C

from .contract import *  # noqa: F401,F403


@dataclasses.dataclass(frozen=True)
class ToyKalman(Backend):
    capabilities = frozenset({Capability.LIKELIHOOD})

    def filter(self, problem, key=None):
        params = linear_gaussian_params(problem)
        return kalman_filter(params, problem.observations.astype(params.F.dtype))


from .test_backends import *  # noqa: E402,F401,F403  (before registering: its known-failure table is the others')

C.BACKENDS["ToyKalman"] = ToyKalman
C.NATURE["ToyKalman"] = "exact"
CONFORMANCE_BACKENDS = ["ToyKalman"]


@pytest.fixture(scope="module")
def backend_entry():
    return "ToyKalman", ToyKalman()


def test_declaring_a_capability_without_its_method_is_refused_at_definition():
    with pytest.raises(TypeError, match="declares SMOOTH but does not implement smooth"):
        @dataclasses.dataclass(frozen=True)
        class Broken(Backend):
            capabilities = frozenset({Capability.SMOOTH})

            def filter(self, problem, key=None):
                return None
