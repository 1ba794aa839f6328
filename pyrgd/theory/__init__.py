"""Theory certificates and infinite-width kernels (docs/theory.md sections 4 and 5).

- :mod:`.gaussian`: Gaussian expectations E[f(u) f(v)] of the activations (Gauss-Hermite quadrature, Mehler's
  series, closed forms), in numba and parallel over the pairs (docs/theory.md section 4.4).
- :mod:`.du2019`: c_sigma, the Gram recursion K^(0..H) and lambda_0 of Du et al. 2019 (docs/theory.md section 4.4).
- :mod:`.nguyen2021`: Nguyen 2021, Theorem 2.2, the certificate at initialization (docs/theory.md section 4.2).
- :mod:`.nm2020`: the quantities of Nguyen & Mondelli 2020, Theorem 3.2, without a verdict (docs/theory.md
  section 4.3).
- :mod:`.pl`: the PL certificate of docs/theory.md section 4.1 at the current weights and along a training run (the
  tracker's own computation, :func:`pyrgd.tracking.certificate`).
- :mod:`.ntk`: the empirical NTK from streamed Gram blocks (docs/theory.md section 5) and lambda_* of the wide layer
  (docs/theory.md section 4.5).

Each function's docstring marks its formula [paper: ...], [derived] (derived in docs/theory.md) or [unavailable],
with the section of docs/theory.md that states it. Every quantity is computed in float64.
"""
from .du2019 import DuGram, c_sigma, du_gram, du_lambda0
from .gaussian import (gauss_hermite, gaussian_expectation_1d, gaussian_gram, gaussian_pair_expectation,
                       piecewise_linear_closed_form, relu_closed_form)
from .nguyen2021 import Condition, Nguyen2021Certificate, nguyen2021_certificate
from .nm2020 import NM2020Quantities, nm2020_quantities
from .pl import PLCertificate, pl_certificate, pl_trajectory
from .ntk import LambdaStar, empirical_ntk, lambda_star, lambda_star_mc, ntk_lambda_min

__all__ = ["Condition", "DuGram", "LambdaStar", "NM2020Quantities", "Nguyen2021Certificate", "PLCertificate",
           "c_sigma", "du_gram", "du_lambda0", "empirical_ntk", "gauss_hermite", "gaussian_expectation_1d",
           "gaussian_gram", "gaussian_pair_expectation", "lambda_star", "lambda_star_mc", "nguyen2021_certificate",
           "nm2020_quantities", "ntk_lambda_min", "piecewise_linear_closed_form", "pl_certificate", "pl_trajectory",
           "relu_closed_form"]
