"""Client-side differential privacy: clip and noise a module delta on the device; account the (epsilon, delta)."""

from edge_runtime.privacy.dp import (
    DpSettings,
    PrivacyLedger,
    delta_norm,
    epsilon,
    parse_dp,
    parse_privacy,
    privatize,
)

__all__ = ["DpSettings", "PrivacyLedger", "delta_norm", "epsilon", "parse_dp", "parse_privacy", "privatize"]
