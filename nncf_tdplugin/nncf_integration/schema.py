"""Registers the ``tensor_decomposition`` subschema in NNCF's config schema, so ``NNCFConfig.from_dict`` and
``NNCFConfig.from_json`` accept the block (its detailed validation, with precise messages, is
:meth:`nncf_tdplugin.config.TDConfig.from_section`, run by the builder)."""

from nncf.config.schema import NNCF_CONFIG_SCHEMA, REF_VS_ALGO_SCHEMA

from nncf_tdplugin.config import ALGO_NAME, TD_SCHEMA


def register_schema() -> None:
    """Idempotent: adds the subschema to ``$defs`` and its ``$ref`` to the shared ``oneOf`` of ``compression``."""
    REF_VS_ALGO_SCHEMA[ALGO_NAME] = TD_SCHEMA  # the same dict object as NNCF_CONFIG_SCHEMA["$defs"]
    refs = NNCF_CONFIG_SCHEMA["properties"]["compression"]["oneOf"][0]["oneOf"]  # shared with the array form
    ref = {"$ref": f"#/$defs/{ALGO_NAME}"}
    if ref not in refs:
        refs.append(ref)
