"""Generate the README's config reference from the schema (the one definition of every key).

    python docs/config_reference.py          # print the markdown table
    python docs/config_reference.py --write  # rewrite the table in README.md
    python docs/config_reference.py --check  # exit 1 if README.md's table is out of date (run by the tests)
"""

import json
import pathlib
import sys

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _type(spec: dict) -> str:
    if "enum" in spec:
        return " \\| ".join(json.dumps(v) for v in spec["enum"])
    if "const" in spec:
        return json.dumps(spec["const"])
    if "oneOf" in spec:
        return " or ".join(_type(s) for s in spec["oneOf"])
    kind = spec.get("type", "")
    if kind == "array":
        return f"array of {_type(spec.get('items', {}))}"
    bounds = []
    if "minimum" in spec:
        bounds.append(f">= {spec['minimum']}")
    if "exclusiveMinimum" in spec:
        bounds.append(f"> {spec['exclusiveMinimum']}")
    if "maximum" in spec:
        bounds.append(f"<= {spec['maximum']}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def rows(schema: dict, prefix: str = ""):
    for key, spec in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        default = json.dumps(spec["default"]) if "default" in spec else ""
        yield f"| `{path}` | {_type(spec)} | {default} | {spec.get('description', '')} |"
        if spec.get("type") == "object":
            if "properties" in spec:
                yield from rows(spec, path + ".")
            extra = spec.get("additionalProperties")
            if isinstance(extra, dict) and "properties" in extra:
                yield from rows(extra, path + ".<name>.")
        if spec.get("type") == "array" and "properties" in spec.get("items", {}):
            yield from rows(spec["items"], path + "[].")


def table() -> str:
    from nncf_tdplugin.config import TD_SCHEMA

    header = "| key | type | default | meaning |\n|---|---|---|---|"
    return header + "\n" + "\n".join(rows(TD_SCHEMA))


def readme_block(readme: str) -> str:
    return readme[readme.index(BEGIN) + len(BEGIN): readme.index(END)].strip()


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

if __name__ == "__main__":
    generated = table()
    if "--check" in sys.argv:
        if readme_block(README.read_text()) != generated:
            print("README.md's config reference is out of date: run python docs/config_reference.py --write")
            sys.exit(1)
    elif "--write" in sys.argv:
        text = README.read_text()
        text = text[: text.index(BEGIN) + len(BEGIN)] + "\n" + generated + "\n" + text[text.index(END):]
        README.write_text(text)
    else:
        print(generated)
