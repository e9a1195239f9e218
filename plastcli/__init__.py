"""plast: reproduce meta-learned plasticity rules (2022) and Oja's rule as a stabiliser (2024)."""

__version__ = "0.1.0"

# Sign convention of every plasticity term (SPEC §3): recorded in each store.
SIGN_CONVENTION = (
    "Delta W = + sum_r theta_r F_r; pseudo_grad F_1 = -e_l y_{l-1}^T (positive theta = descent); "
    "oja F_10 = +(y_l y_{l-1}^T - y_l y_l^T W_l)"
)
