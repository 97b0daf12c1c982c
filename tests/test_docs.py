import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_config_reference_matches_the_schema():
    result = subprocess.run([sys.executable, "docs/config_reference.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_json_blocks_are_valid_tensor_decomposition_configs():
    """Every ```json block of the README that holds a tensor_decomposition block passes the plugin's validation."""
    import json

    from nncf_tdplugin.config import TDConfig

    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)]
    sections = [b for b in blocks if b.get("algorithm") == "tensor_decomposition"]
    sections += [s for b in blocks for s in b.get("compression", []) if s.get("algorithm") == "tensor_decomposition"]
    assert len(sections) >= 3
    for section in sections:
        TDConfig.from_section(section)
