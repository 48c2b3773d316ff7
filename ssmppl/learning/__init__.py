"""Learning global parameters: EM (``em``) and gradient descent (``sgd``), used by ``SSM.fit_em``/``fit_sgd``."""
