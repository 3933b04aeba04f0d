"""MTSSTraining/CMakeLists.txt lists every file Slicer must install (Slicer's macro style has no glob),
and the module file looks like what Slicer's scripted-module loader expects."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MTSSTraining"


def listed() -> set[str]:
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    text = re.sub(r"#.*", "", text).replace("${MODULE_NAME}", "MTSSTraining")
    return {token for token in re.split(r"[\s()]+", text) if "." in token and "/" in token or token.endswith(".py")}


def on_disk(pattern: str) -> set[str]:
    return {str(p.relative_to(MODULE)) for p in MODULE.rglob(pattern)
            if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}


def test_every_python_file_and_resource_is_listed():
    names = listed()
    missing = sorted((on_disk("*.py") | on_disk("*.json") | on_disk("*.png")) - names)
    assert not missing, ("Add these files to MTSSTraining/CMakeLists.txt (MODULE_PYTHON_SCRIPTS for .py, "
                         f"MODULE_PYTHON_RESOURCES for the rest): {missing}")


def test_every_listed_file_exists():
    gone = sorted(n for n in listed() if not (MODULE / n).is_file())
    assert not gone, f"MTSSTraining/CMakeLists.txt lists files that do not exist: {gone}"


def test_macro_call_and_self_test():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_module_file_is_a_hidden_scripted_module_depending_on_the_segmenter():
    tree = ast.parse((MODULE / "MTSSTraining.py").read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"MTSSTraining", "MTSSTrainingTest"} <= set(classes)
    assert [b.id for b in classes["MTSSTrainingTest"].bases] == ["ScriptedLoadableModuleTest"]
    source = ast.unparse(classes["MTSSTraining"])
    assert "self.parent.hidden = True" in source
    assert "self.parent.dependencies = ['MTSSSegmenter']" in source
    imports = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                           if isinstance(node, ast.ImportFrom) and node.module}
    assert "qt" not in imports


def test_logic_never_imports_qt():
    for name in ("logic.py", "jobs.py", "segment_labels.py"):
        tree = ast.parse((MODULE / "MTSSTrainingLib" / name).read_text(encoding="utf-8"))
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not any(m == "qt" or m.startswith(("qt.", "PythonQt", "ctk")) for m in modules), name
