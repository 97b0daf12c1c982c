"""NNCF glue: registration, schema, builder, controller, statistics. The only package that imports NNCF
internals (those that are private live in :mod:`._internals`)."""

from nncf_tdplugin.config import ALGO_NAME
from nncf_tdplugin.nncf_integration._internals import add_statistics_slot
from nncf_tdplugin.nncf_integration.schema import register_schema


def register() -> None:
    """Make ``{"algorithm": "tensor_decomposition"}`` known to NNCF. Safe to call more than once."""
    from nncf.torch.algo_selector import PT_COMPRESSION_ALGORITHMS

    register_schema()
    add_statistics_slot(ALGO_NAME)
    if ALGO_NAME not in PT_COMPRESSION_ALGORITHMS.registry_dict:
        from nncf_tdplugin.nncf_integration import builder  # noqa: F401  (registers on import)
