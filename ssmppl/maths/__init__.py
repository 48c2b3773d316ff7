"""The pure-maths layer: arrays in, arrays out, no NumPyro.

Gaussian conditioning with missing data and PSD factorisations (``gaussian``),
Kalman filtering and smoothing (``kalman``, ``parallel_kalman``), Gaussian-filter
rules and recursions (``sigma_points``, ``gaussian_filter``), resampling and
weighted moments (``resampling``), ensemble analyses and statistics
(``ensemble``), the score filter's reverse SDE (``score``) and the linear
Gaussian M-step (``lgssm_em``). ``ssmppl.inference`` assembles these into
backends for NumPyro models; they are usable on their own.
"""
