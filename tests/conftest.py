import jax
import pytest


@pytest.fixture
def x64():
    """Float64 for correctness tests (restored afterwards: float32 is tested separately)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
