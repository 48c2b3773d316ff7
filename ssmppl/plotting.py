"""Matplotlib figures for state-space results."""

from __future__ import annotations

import numpy as np


def plot_emissions_and_forecast(observations, smoothed_means, smoothed_sds, forecast_means=None, forecast_sds=None,
                                spacing=4.0, ax=None, title=None):
    """Observed emissions, smoothed reconstruction and forecast with ±2 sd bands.

    observations, smoothed_means, smoothed_sds: (T, dy); forecast_means,
    forecast_sds: (H, dy). Each emission dimension is drawn offset by
    ``spacing``. Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    y, m, s = (np.asarray(a) for a in (observations, smoothed_means, smoothed_sds))
    T, dy = y.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 1 + 0.7 * dy))
    t_obs = np.arange(T)
    for i in range(dy):
        off = spacing * i
        ax.plot(t_obs, y[:, i] + off, "--k", lw=0.8, label="observed" if i == 0 else None)
        line = ax.plot(t_obs, m[:, i] + off, lw=1.2, label="smoothed" if i == 0 else None)[0]
        ax.fill_between(t_obs, off + m[:, i] - 2 * s[:, i], off + m[:, i] + 2 * s[:, i], color=line.get_color(), alpha=0.25)
        if forecast_means is not None:
            fm, fs = np.asarray(forecast_means), np.asarray(forecast_sds)
            t_f = np.arange(T, T + fm.shape[0])
            ax.plot(t_f, fm[:, i] + off, ":", color=line.get_color(), label="forecast" if i == 0 else None)
            ax.fill_between(t_f, off + fm[:, i] - 2 * fs[:, i], off + fm[:, i] + 2 * fs[:, i], color=line.get_color(), alpha=0.25)
    if forecast_means is not None:
        ax.axvline(T, color="black", lw=2)
    horizon = T + (0 if forecast_means is None else np.asarray(forecast_means).shape[0])
    ax.set_xlim(0, horizon - 1)
    ax.set_xlabel("time")
    ax.set_ylabel("emissions")
    ax.set_yticks(spacing * np.arange(dy), [f"dim. {i}" for i in range(dy)])
    ax.legend(loc="upper left")
    ax.grid(True)
    if title:
        ax.set_title(title)
    return ax


def _band(draws, prob):
    """Median and central ``prob`` interval over the leading (sample) axes: each (T, d)."""
    d = np.asarray(draws)
    d = d.reshape((-1,) + d.shape[-2:])
    lo, med, hi = np.nanquantile(d, [(1 - prob) / 2, 0.5, (1 + prob) / 2], axis=0)
    return med, lo, hi


def _stacked_axes(num, ax, height=1.6, width=10):
    import matplotlib.pyplot as plt

    if ax is not None:
        axes = np.atleast_1d(ax)
        if axes.size != num:
            raise ValueError(f"pass {num} axes (one per dimension), got {axes.size}")
        return axes
    _, axes = plt.subplots(num, 1, figsize=(width, 0.6 + height * num), sharex=True, squeeze=False)
    return axes[:, 0]


def plot_state_posterior(state_draws, truth=None, prob=0.94, ax=None, title=None, labels=None):
    """Posterior of the latent path: median and central ``prob`` credible band per state
    dimension, one panel each, with the true path dashed when known.

    state_draws: (..., T, dz) draws (e.g. ``posterior.sample_states(key)``, shape
    (chains, draws, T, dz)); truth: (T, dz) or None. Returns the array of Axes.
    """
    med, lo, hi = _band(state_draws, prob)
    T, dz = med.shape
    axes = _stacked_axes(dz, ax)
    t = np.arange(1, T + 1)
    for i, a in enumerate(axes):
        line = a.plot(t, med[:, i], lw=1.2, label="posterior median")[0]
        a.fill_between(t, lo[:, i], hi[:, i], color=line.get_color(), alpha=0.3, label=f"{prob:.0%} credible band")
        if truth is not None:
            a.plot(t, np.asarray(truth)[:, i], "--k", lw=1.0, label="truth")
        a.set_ylabel(labels[i] if labels else f"state {i}")
        a.grid(True)
    axes[0].legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("time")
    axes[-1].set_xlim(1, T)
    if title:
        axes[0].set_title(title)
    return axes


def plot_posterior_predictive(observations, emission_draws, forecast_draws=None, prob=0.94, ax=None, title=None,
                              dims=None):
    """Observations with the posterior predictive band and, when given, the forecast band.

    observations: (T, dy) (NaN where missing); emission_draws: (..., T, dy)
    (``posterior.predictive(key)['emissions']``); forecast_draws: (..., H, dy)
    (``['forecast_emissions']``). ``dims``: which emission dimensions to draw (all by
    default), one panel each. Returns the array of Axes.
    """
    y = np.asarray(observations)
    T, dy = y.shape
    dims = list(range(dy)) if dims is None else list(dims)
    med, lo, hi = _band(emission_draws, prob)
    axes = _stacked_axes(len(dims), ax)
    t = np.arange(1, T + 1)
    H = 0
    if forecast_draws is not None:
        f_med, f_lo, f_hi = _band(forecast_draws, prob)
        H = f_med.shape[0]
        t_f = np.arange(T + 1, T + H + 1)
    for a, i in zip(axes, dims):
        a.plot(t, y[:, i], ".k", ms=3, label="observed")
        line = a.plot(t, med[:, i], lw=1.0, label="posterior predictive median")[0]
        a.fill_between(t, lo[:, i], hi[:, i], color=line.get_color(), alpha=0.25, label=f"{prob:.0%} predictive band")
        if H:
            fl = a.plot(t_f, f_med[:, i], lw=1.0, ls=":", label="forecast median")[0]
            a.fill_between(t_f, f_lo[:, i], f_hi[:, i], color=fl.get_color(), alpha=0.25, label=f"{prob:.0%} forecast band")
            a.axvline(T + 0.5, color="black", lw=1.5)
        a.set_ylabel(f"y[{i}]")
        a.grid(True)
    axes[0].legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("time")
    axes[-1].set_xlim(1, T + H)
    if title:
        axes[0].set_title(title)
    return axes
