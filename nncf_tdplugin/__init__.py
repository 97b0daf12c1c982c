"""nncf-tdplugin: tensor-decomposition compression as an NNCF algorithm.

``import nncf_tdplugin`` before ``nncf.torch``: it turns on NNCF's legacy tracing (``NNCF_TORCH_LEGACY_TRACING=1``,
needed by ``create_compressed_model`` in NNCF 2.x) and registers the ``tensor_decomposition`` algorithm and its
config schema. Importing it again is harmless.
"""

import os
import sys

__version__ = "0.1.0"

_ENV = "NNCF_TORCH_LEGACY_TRACING"


def _enable_legacy_tracing() -> None:
    if "nncf.torch" not in sys.modules:
        value = os.environ.get(_ENV)
        if value is not None and value.lower() not in ("1", "on", "true"):
            raise ImportError(
                f"nncf_tdplugin needs NNCF's legacy tracing, but {_ENV}={value!r} is set. Unset it or set "
                f"{_ENV}=1 before importing nncf_tdplugin."
            )
        os.environ[_ENV] = "1"
        import nncf.torch  # noqa: F401  (wraps the torch operators now, with the variable set)
        return
    from nncf.torch.dynamic_graph.patch_pytorch_state import PATCHING_STATE

    if not PATCHING_STATE.operators_are_wrapped:
        raise ImportError(
            "nncf.torch was imported before nncf_tdplugin without NNCF's legacy tracing, so "
            "create_compressed_model cannot work in this process. Either `import nncf_tdplugin` before anything "
            f"imports nncf.torch, or set the environment variable {_ENV}=1 before starting Python."
        )


def _device_constructors():
    """torch's set of tensor factory functions that a device context (``with torch.device("meta"):``) applies to,
    or None where this torch has no such set."""
    try:
        from torch.utils._device import _device_constructors as constructors

        return constructors()
    except (ImportError, AttributeError):
        return None


def _keep_device_contexts() -> None:
    """Make ``with torch.device(...)`` work under NNCF's legacy tracing.

    The legacy tracing replaces ``torch.empty``, ``torch.tensor``, ``torch.arange`` and the other factory functions
    with wrappers. A device context recognises the factory functions by identity, in a set that torch builds once,
    on first use. If that set is built after NNCF's patching it holds the wrappers, and the context stops applying:
    under ``with torch.device("meta")`` tensors are created on the CPU. transformers 5 builds models under that
    context, so a BERT loaded after ``import nncf.torch`` had uninitialised ``position_ids`` and
    ``token_type_ids`` buffers, and failed or computed with garbage. The wrappers call the original functions, and
    those are what the context is handed. So the originals are added to the set, whatever the import order was.
    """
    constructors = _device_constructors()
    if not isinstance(constructors, set):
        return
    from nncf.torch.dynamic_graph.patch_pytorch import ORIGINAL_OPERATORS

    originals = {}
    for info in ORIGINAL_OPERATORS:
        current = getattr(info.namespace, info.name, None)
        if current is not None and current is not info.op:
            originals[current] = info.op
    constructors.update([originals[f] for f in list(constructors) if f in originals])


_enable_legacy_tracing()
_keep_device_contexts()

from nncf_tdplugin.nncf_integration import register as _register  # noqa: E402

_register()

from nncf_tdplugin.config import ALGO_NAME, TDConfig, TDConfigError  # noqa: E402
from nncf_tdplugin.nncf_integration import controller_named  # noqa: E402
from nncf_tdplugin.nncf_integration.pruning import materialize_pruned_model  # noqa: E402


def validate_config(nncf_config) -> TDConfig:
    """Check the ``tensor_decomposition`` block of an NNCF config (dict or ``NNCFConfig``) now, before
    ``create_compressed_model``; raises :class:`TDConfigError` naming the key and value at fault."""
    section = nncf_config.get("compression", [])
    blocks = [b for b in (section if isinstance(section, list) else [section]) if b.get("algorithm") == ALGO_NAME]
    if len(blocks) != 1:
        raise TDConfigError(f"expected exactly one '{ALGO_NAME}' block under 'compression', found {len(blocks)}")
    return TDConfig.from_section(blocks[0])


def td_controller(ctrl):
    """The ``tensor_decomposition`` controller in what ``create_compressed_model`` returned (a composite controller
    when the config has several algorithms), or None if there is none."""
    return controller_named(ctrl, ALGO_NAME)


__all__ = ["ALGO_NAME", "TDConfig", "TDConfigError", "__version__", "materialize_pruned_model", "td_controller",
           "validate_config"]
