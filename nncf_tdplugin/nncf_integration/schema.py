"""Registers the ``tensor_decomposition`` block in NNCF's config schema, so ``NNCFConfig.from_dict`` and
``NNCFConfig.from_json`` accept it.

NNCF is given a lenient subschema (the algorithm name, plus the keys with their descriptions but no
constraints): with jsonschema 4.x, any error inside an algorithm block makes NNCF report only "... is not valid
under any of the given schemas" for the whole ``compression`` list. The strict check, with messages that name the
key path and the value at fault, is :meth:`nncf_tdplugin.config.TDConfig.from_section`, run when the builder is
created (first thing in ``create_compressed_model``) or earlier through :func:`nncf_tdplugin.validate_config`.
"""

from nncf.config.schema import NNCF_CONFIG_SCHEMA, REF_VS_ALGO_SCHEMA

from nncf_tdplugin.config import ALGO_NAME, TD_SCHEMA

LENIENT_SCHEMA = {
    "type": "object",
    "description": TD_SCHEMA["description"] + " Checked in detail by nncf_tdplugin (see its README).",
    "required": ["algorithm"],
    "properties": {
        "algorithm": {"const": ALGO_NAME},
        **{k: {"description": v.get("description", "")} for k, v in TD_SCHEMA["properties"].items() if k != "algorithm"},
    },
}


def register_schema() -> None:
    """Idempotent: adds the subschema to ``$defs`` and its ``$ref`` to the shared ``oneOf`` of ``compression``."""
    REF_VS_ALGO_SCHEMA[ALGO_NAME] = LENIENT_SCHEMA  # the same dict object as NNCF_CONFIG_SCHEMA["$defs"]
    refs = NNCF_CONFIG_SCHEMA["properties"]["compression"]["oneOf"][0]["oneOf"]  # shared with the array form
    ref = {"$ref": f"#/$defs/{ALGO_NAME}"}
    if ref not in refs:
        refs.append(ref)
