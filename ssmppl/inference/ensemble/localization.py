"""Distance-based localisation for ensemble filters: tapers, distances and local observation sets.

One radius convention for every taper (DAPPER's): ``radius`` is a length scale
at which the taper has fallen to about 0.6 (like a Gaussian's standard deviation):

  gaussian        exp(-d^2 / (2 radius^2)), cut where it drops below ``CUTOFF``;
  gaspari_cohn    the compactly supported fifth-order piecewise rational function of
                  Gaspari & Cohn (1999, eq. 4.10) with half-width c = 1.82 radius (0.634
                  at d = radius, zero from d = 2c = 3.64 radius), as DAPPER;
  cutoff          1 for d <= radius, 0 beyond (a hard cut-off).

Coordinates are given once, concretely, so the neighbour lists the local
(LETKF) analysis needs are computed in NumPy when the filter is traced: the
local analysis then gathers a fixed number K of observations per grid point, and
its cost is O(d K N^2), not O(d m). A ``period`` makes distances periodic (e.g.
Lorenz-96's ring: ``period=dim``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np

TAPERS = ("gaspari_cohn", "gaussian", "cutoff")
CUTOFF = 1e-3  # observations whose taper is below this are left out of a local analysis
GC_HALF_WIDTH = 1.82  # c / radius for Gaspari-Cohn (DAPPER's constant)


def gaspari_cohn(r):
    """Gaspari-Cohn taper at r = d / c (c the half-width): 1 at 0, zero for r >= 2. Works on NumPy or JAX arrays."""
    xp = jnp if not isinstance(r, np.ndarray) else np
    r = xp.abs(r)
    inner = ((((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r) * r + 1.0
    safe = xp.where(r > 0, r, 1.0)
    outer = (((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0) - 2.0 / (3.0 * safe)
    return xp.where(r <= 1.0, inner, xp.where(r < 2.0, xp.maximum(outer, 0.0), 0.0))


def taper(distance, radius: float, kind: str = "gaspari_cohn"):
    """Taper coefficients in [0, 1] at the given distances (any shape), in the module's radius convention."""
    xp = jnp if not isinstance(distance, np.ndarray) else np
    if kind == "gaspari_cohn":
        return gaspari_cohn(distance / (GC_HALF_WIDTH * radius))
    if kind == "gaussian":
        return xp.exp(-0.5 * (distance / radius) ** 2)
    if kind == "cutoff":
        return (distance <= radius).astype(float)
    raise ValueError(f"taper must be one of {TAPERS}, got {kind!r}")


def _as_points(coords, name):
    a = np.asarray(coords, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a finite (n,) or (n, k) array of coordinates, got shape {np.shape(coords)}")
    return a


def distances(a, b, period=None):
    """(len(a), len(b)) Euclidean distances between point sets (n, k) and (m, k), periodic per axis if
    ``period`` (a scalar or (k,)) is given."""
    diff = np.abs(a[:, None, :] - b[None, :, :])
    if period is not None:
        p = np.broadcast_to(np.asarray(period, float), (a.shape[1],))
        diff = np.minimum(diff, p - diff)
    return np.sqrt((diff ** 2).sum(-1))


@dataclasses.dataclass(frozen=True, eq=False)
class Localization:
    """Where state components and observations sit, and how far covariances are trusted.

    radius: > 0, in the units of the coordinates (see the module docstring).
    state_coords: (d,) or (d, k); obs_coords: (m,) or (m, k), one per observed component.
    taper: "gaspari_cohn" (default), "gaussian" or "cutoff".
    period: domain length for periodic distances (scalar or (k,)), or None.

    ``Localization.on_ring(radius, dim, observed=None)`` builds the Lorenz-96 case:
    state components at 0..dim-1 on a ring of length dim, observations at the
    observed components (all by default).
    """

    radius: float
    state_coords: np.ndarray
    obs_coords: np.ndarray
    taper: str = "gaspari_cohn"
    period: Optional[object] = None

    def __post_init__(self):
        if not np.isscalar(self.radius) or not np.isfinite(self.radius) or self.radius <= 0:
            raise ValueError(f"Localization(radius=...) must be a positive number, got {self.radius!r}")
        if self.taper not in TAPERS:
            raise ValueError(f"Localization(taper=...) must be one of {TAPERS}, got {self.taper!r}")
        s = _as_points(self.state_coords, "state_coords")
        o = _as_points(self.obs_coords, "obs_coords")
        if s.shape[1] != o.shape[1]:
            raise ValueError(f"state_coords have {s.shape[1]} coordinate(s) per point but obs_coords {o.shape[1]}")
        object.__setattr__(self, "state_coords", s)
        object.__setattr__(self, "obs_coords", o)

    @classmethod
    def on_ring(cls, radius: float, dim: int, observed=None, taper: str = "gaspari_cohn"):
        """Localisation on a periodic ring of ``dim`` grid points 0..dim-1 (Lorenz-96's domain, period
        ``dim``): the state components sit at the grid points, the observed ones at ``observed``
        (indices; ``None``: every component observed)."""
        grid = np.arange(dim, dtype=float)
        obs = grid if observed is None else grid[np.asarray(observed, dtype=int)]
        return cls(radius, grid, obs, taper, period=float(dim))

    def check(self, state_dim: int, obs_dim: int, owner: str):
        """Raise a ``ValueError`` naming ``owner`` unless there is one state coordinate per state component
        and one observation coordinate per observed component."""
        if self.state_coords.shape[0] != state_dim or self.obs_coords.shape[0] != obs_dim:
            raise ValueError(
                f"{owner}: the localisation has {self.state_coords.shape[0]} state and {self.obs_coords.shape[0]} "
                f"observation coordinates, but the model has {state_dim} state and {obs_dim} observed components"
            )

    def _coefficients(self, a, b):
        return taper(distances(a, b, self.period), self.radius, self.taper)

    def state_obs(self) -> np.ndarray:
        """(d, m) taper between state components and observations (dense: for moderate d m)."""
        return self._coefficients(self.state_coords, self.obs_coords)

    def obs_obs(self) -> np.ndarray:
        """(m, m) taper between observations."""
        return self._coefficients(self.obs_coords, self.obs_coords)

    def reach(self) -> float:
        """The distance beyond which the taper is below ``CUTOFF`` (or zero)."""
        if self.taper == "gaspari_cohn":
            return 2.0 * GC_HALF_WIDTH * self.radius
        if self.taper == "gaussian":
            return float(self.radius * np.sqrt(-2.0 * np.log(CUTOFF)))
        return float(self.radius)

    def local_observations(self, chunk: int = 4096):
        """Per state component, the observations within reach: (indices (d, K) int, coefficients (d, K)).

        K is the largest number of observations whose taper exceeds ``CUTOFF`` at
        any component; shorter lists are padded with index 0 and coefficient 0.
        One-dimensional coordinates use a sorted search (O((d + m) log m + d K) time
        and O(d K) memory: a 10^6-point ring takes a second); others are computed in
        chunks of state components against all observations (O(d m) time).
        """
        if self.state_coords.shape[1] == 1:
            return self._local_observations_1d()
        d = self.state_coords.shape[0]
        idx_chunks, coef_chunks = [], []
        for start in range(0, d, chunk):
            c = self._coefficients(self.state_coords[start:start + chunk], self.obs_coords)
            inside = c > CUTOFF
            order = np.argsort(~inside, axis=1, kind="stable")  # observations within reach first, in order
            k = max(1, int(inside.sum(1).max()))
            j = order[:, :k]
            coef = np.take_along_axis(c, j, 1) * np.take_along_axis(inside, j, 1)
            idx_chunks.append(np.where(coef > 0, j, 0))
            coef_chunks.append(coef)
        K = max(a.shape[1] for a in idx_chunks)
        pad = lambda a: np.pad(a, ((0, 0), (0, K - a.shape[1])))  # noqa: E731
        return (np.concatenate([pad(a) for a in idx_chunks]).astype(np.int32),
                np.concatenate([pad(a) for a in coef_chunks]))

    def _local_observations_1d(self):
        x, o = self.state_coords[:, 0], self.obs_coords[:, 0]
        order = np.argsort(o, kind="stable")
        pos, ids = o[order], order
        if self.period is not None:  # unroll the ring once on each side
            p = float(np.ravel(self.period)[0])
            pos, ids = np.concatenate([pos - p, pos, pos + p]), np.concatenate([ids, ids, ids])
        reach = self.reach()
        lo = np.searchsorted(pos, x - reach, side="left")
        hi = np.searchsorted(pos, x + reach, side="right")
        K = max(1, int((hi - lo).max()))
        cand = np.minimum(lo[:, None] + np.arange(K), len(pos) - 1)
        dist = np.abs(pos[cand] - x[:, None])
        coef = taper(dist, self.radius, self.taper) * ((lo[:, None] + np.arange(K)) < hi[:, None])
        coef = np.where(coef > CUTOFF, coef, 0.0)
        idx = np.where(coef > 0, ids[cand], 0)
        keep = max(1, int((coef > 0).sum(1).max()))  # drop columns that are padding everywhere
        order = np.argsort(coef <= 0, axis=1, kind="stable")[:, :keep]
        return (np.take_along_axis(idx, order, 1).astype(np.int32), np.take_along_axis(coef, order, 1))
