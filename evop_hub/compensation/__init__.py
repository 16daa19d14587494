"""Compensation after block removal, folded into weights the checkpoint already has (``--compensate``)."""

from .linear import (
    DEFAULT_RIDGE,
    METHODS,
    calibration_info,
    check_compensable,
    check_method,
    check_ridge,
    compensate,
    compensated_drop,
)

__all__ = [
    "DEFAULT_RIDGE",
    "METHODS",
    "calibration_info",
    "check_compensable",
    "check_method",
    "check_ridge",
    "compensate",
    "compensated_drop",
]
