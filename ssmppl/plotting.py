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
