"""NNCF glue: registration, schema, builder, controller, statistics. The only package that imports NNCF
internals (those that are private live in :mod:`._internals`)."""

from nncf_tdplugin.config import ALGO_NAME
from nncf_tdplugin.nncf_integration._internals import add_statistics_slot
from nncf_tdplugin.nncf_integration.schema import register_schema


def controllers(ctrl) -> list:
    """The algorithm controllers in what ``create_compressed_model`` returned (one, or a composite's children)."""
    return list(getattr(ctrl, "child_ctrls", [ctrl]))


def controller_named(ctrl, name: str):
    """The controller of algorithm ``name`` in what ``create_compressed_model`` returned, or None."""
    return next((c for c in controllers(ctrl) if getattr(c, "name", None) == name), None)


def register() -> None:
    """Make ``{"algorithm": "tensor_decomposition"}`` known to NNCF. Safe to call more than once."""
    from nncf.torch.algo_selector import PT_COMPRESSION_ALGORITHMS

    register_schema()
    add_statistics_slot(ALGO_NAME)
    if ALGO_NAME not in PT_COMPRESSION_ALGORITHMS.registry_dict:
        from nncf_tdplugin.nncf_integration import builder  # noqa: F401  (registers on import)
