"""What an ensemble filter or smoother returns besides the common fields: ``FilterResult.extras``
and ``SmoothResult.extras`` (the EnKF's and EnSF's)."""

from __future__ import annotations

from ...results import Result


class EnsembleFilterExtras(Result):
    """``FilterResult.extras`` of an ensemble filter (whose means and covariances are the
    members' sample moments, (N-1) denominator; with ``store_covariances=False`` the
    covariance fields and ``filtered_variances`` are absent).

      filtered_spread, predicted_spread: (T,)  RMS ensemble spread sqrt(mean_j var_j) after / before
                                               each analysis (the spread DAPPER reports)
      filtered_variances: (T, d)               per-component analysis variances
      innovation_chi2: (T,)                    d_t^T (H P^f H^T + R)^{-1} d_t, chi^2 with
                                               ``num_observed`` dof for a consistent filter (EnKF)
      num_observed: (T,)                       observed components at each step
      inflation_factors: (T,)                  adaptive multiplicative factor used (1 without; EnKF)
      final_ensemble, initial_ensemble: (N, d)
      filtered_ensembles, predicted_ensembles: (T, N, d) with ``keep_ensembles=True``
      likelihood_curvature: (T,)               largest Hessian eigenvalue of -log p(y_t | z) at the forecast
                                               mean (EnSF: its reverse SDE's step-size check)
    """

    FIELDS = ("filtered_spread", "predicted_spread", "filtered_variances", "innovation_chi2", "num_observed",
              "inflation_factors", "final_ensemble", "initial_ensemble", "filtered_ensembles", "predicted_ensembles",
              "likelihood_curvature")


class EnsembleSmoothExtras(Result):
    """``SmoothResult.extras`` of the ensemble Kalman smoother (EnKS).

      smoothed_ensembles: (T, N, d) members conditioned on y_{1:T} (or on y_{1:t+lag})
      initial_smoothed_ensemble: (N, d)
    Smoothed moments are the smoothed members' sample moments; cross-covariances pair
    each member with itself at consecutive times.
    """

    FIELDS = ("smoothed_ensembles", "initial_smoothed_ensemble")
