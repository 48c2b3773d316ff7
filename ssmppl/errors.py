"""Exceptions raised on models and data the library cannot handle."""


class ModelStructureError(ValueError):
    """The NumPyro program is not a state-space model ssmppl can read, or not
    one the chosen backend can handle. The message names the site and the fix."""


class ObservationShapeError(ValueError):
    """Observations whose shape does not match the emission site."""


class CapabilityError(NotImplementedError):
    """The backend does not provide what was asked (a likelihood, a smoother, path
    sampling, forecasting...). The message lists the backends that do."""
