"""Imports point one way: `pipeline/` and `deployments/` never import each other, nothing imports `jobs/`,
`contract/` (what both share) imports no Ray and no engine, and the vLLM plugin `step_audio_vllm/` stands apart
(contract/ only; vLLM loads it by entry point). Read from every module's syntax tree, so an import
inside a function counts too."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("ray", "vllm", "torch", "faster_whisper")
FORBIDDEN = {
    "contract": ("pipeline", "deployments", "jobs", "step_audio_vllm", *HEAVY),
    "pipeline": ("deployments", "jobs", "step_audio_vllm"),
    # vLLM loads the Step-Audio plugin through its entry point; the engine never imports it.
    "deployments": ("pipeline", "jobs", "step_audio_vllm"),
    # The vLLM model plugin: its own package, using contract/ for the token formula only.
    "step_audio_vllm": ("pipeline", "deployments", "jobs", "ray"),
}


def imported(path, package: str) -> set[str]:
    """Top-level names of every module `path` (a module of `package`) imports, absolute or relative."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the module's own top-level package
                names.add(package)
            elif node.module:
                names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list:
    found = sorted((ROOT / package).rglob("*.py"))
    assert found, f"no modules under {package}/"
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_may(package):
    wrong = {str(path.relative_to(ROOT)): sorted(imported(path, package) & set(FORBIDDEN[package]))
             for path in modules(package)}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The walk finds imports inside functions and relative ones, so the rule above cannot pass by missing them."""
    module = tmp_path / "probe.py"
    module.write_text("import numpy.linalg\n\ndef f():\n    from ray import serve\n    from . import formats\n")
    assert imported(module, "contract") == {"numpy", "ray", "contract"}


def test_importing_contract_loads_no_ray_and_no_engine():
    names = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
             for p in modules("contract")]
    code = (f"import importlib, sys\nfor name in {names!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
