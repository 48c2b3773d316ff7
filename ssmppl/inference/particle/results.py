"""What a particle filter or smoother returns besides the common fields: ``FilterResult.extras``
and ``SmoothResult.extras``."""

from __future__ import annotations

from ...results import Result


class ParticleFilterExtras(Result):
    """``FilterResult.extras`` of a particle filter (whose means and covariances are weighted
    particle moments and ``marginal_loglik`` the log of the unbiased likelihood estimate).

      ess: (T,)            effective sample size of the weights after step t's update
      resampled: (T,)      whether the particles were resampled before step t's move
      final_particles: (N, dz), final_log_weights: (N,) the last step's (``ssm.forecast``
                           starts from them)
    With ``keep_particles=True`` (absent otherwise):
      particles: (T, N, dz) z_t^i after step t
      log_weights: (T, N)  their normalised log-weights log W_t^i
      ancestors: (T, N)    a_t^i, the index at t-1 of particle i's parent (at t = 1 an index
                           into ``initial_particles``)
      initial_particles: (N, dz) the draws of z_0
    """

    FIELDS = ("ess", "resampled", "final_particles", "final_log_weights", "particles", "log_weights", "ancestors",
              "initial_particles")


class ParticleSmoothExtras(Result):
    """``SmoothResult.extras`` of a particle smoother: ``trajectories`` (M, T, dz), draws of
    z_{1:T} from the smoothing distribution (FFBSi: M independent backward draws; genealogy:
    M lineages drawn by final weight). Smoothed moments are the trajectories' sample moments
    (FFBSi) or the weighted moments of all N lineages (genealogy)."""

    FIELDS = ("trajectories",)
