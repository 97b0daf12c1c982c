"""OpenVINO latency as a rank-selection cost: single-layer models measured on the user's CPU at the deployment
precision and thread count, cached on disk, interpolated between measured ranks (see docs/latency.md)."""

from nncf_tdplugin.latency_model.cache import LatencyCache, default_cache_dir
from nncf_tdplugin.latency_model.cost_model import LatencyCostModel, LatencySettings, predictor_error
from nncf_tdplugin.latency_model.measure import measure_specs
from nncf_tdplugin.latency_model.specs import LayerSpec, MeasurementContext, cpu_identity

__all__ = [
    "LatencyCache",
    "LatencyCostModel",
    "LatencySettings",
    "LayerSpec",
    "MeasurementContext",
    "cpu_identity",
    "default_cache_dir",
    "measure_specs",
    "predictor_error",
]
