"""Static checks of the MTSSSegmenter Slicer module, for what CI cannot run without the Slicer application:
the .ui parses and has every widget the Python code uses, the parameter-node bindings match, every file is
listed in CMakeLists.txt, every Python file parses for Slicer's Python 3.12, and the layering holds
(logic imports slicer but never qt; the rest of the library imports neither)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MTSSSegmenter"
UI = MODULE / "Resources" / "UI" / "MTSSSegmenter.ui"
MODULE_FILE = MODULE / "MTSSSegmenter.py"
LIB = MODULE / "MTSSSegmenterLib"


def _python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def test_ui_parses_and_is_a_mrml_widget():
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.findtext("class") == "MTSSSegmenter"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    # every MRML combobox receives the scene from the top-level widget
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    combos = {n for n, w in _ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert combos and combos <= receivers


def test_every_widget_the_code_uses_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the module file does not use self.ui at all?"
    missing = sorted(used - set(_ui_widgets()))
    assert not missing, f"MTSSSegmenter.py uses widgets missing from {UI.name}: {missing}"


def _parameter_fields() -> dict[str, str]:
    for node in _module_tree().body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in MTSSSegmenter.py")


def test_parameter_names_in_the_ui_are_fields_of_the_parameter_node():
    fields = _parameter_fields()
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.findtext("string")
    assert set(bound.values()) <= set(fields), sorted(set(bound.values()) - set(fields))
    classes = {n: w.get("class") for n, w in _ui_widgets().items()}
    for widget, field in bound.items():
        kind = fields[field]
        expected = {"bool": "QCheckBox"}.get(kind, "qMRMLNodeComboBox" if kind.startswith("vtkMRML") else None)
        assert classes[widget] == expected, f"{widget} ({classes[widget]}) cannot show {field}: {kind}"
    assert {f"{c}Volume" for c in ("t1n", "t1c", "t2w", "t2f")} <= set(bound.values())


def _cmake_listed(cmake: Path, module_name: str) -> set[str]:
    text = re.sub(r"#.*", "", cmake.read_text(encoding="utf-8")).replace("${MODULE_NAME}", module_name)
    return {t for t in re.split(r"[\s()]+", text) if t.endswith((".py", ".ui", ".png"))}


def test_every_python_file_and_resource_of_the_module_is_listed_in_cmake():
    listed = _cmake_listed(MODULE / "CMakeLists.txt", "MTSSSegmenter")
    on_disk = {str(p.relative_to(MODULE)).replace(os.sep, "/") for p in _python_files(MODULE)}
    on_disk |= {str(p.relative_to(MODULE)).replace(os.sep, "/") for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert not sorted(on_disk - listed), f"Add to MTSSSegmenter/CMakeLists.txt: {sorted(on_disk - listed)}"
    gone = sorted(n for n in listed if not (MODULE / n).is_file())
    assert not gone, f"MTSSSegmenter/CMakeLists.txt lists files that do not exist: {gone}"


def test_cmake_builds_the_module_with_tests_and_ships_package_data():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}", text)
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "${MODULE_NAME}Lib/data/*" in text  # bundled model and sample case


def test_extension_cmake_declares_metadata_dependencies_and_modules():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(MTSS\)", text, re.M)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text and 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "Slicer 5.10" in text and "Python 3.12" in text
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MTSSSegmenter)",
             "add_subdirectory(MTSSTraining)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
             "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(s) for s in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions))


ALL_PYTHON = _python_files(MODULE, ROOT / "MTSSTraining")


@pytest.mark.parametrize("path", ALL_PYTHON, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_file_parses_for_slicer_python_312(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 12))


def _python312() -> str | None:
    candidates = [os.environ.get("MTSS_PYTHON312"), shutil.which("python3.12"),
                  str(Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python3.12")]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.stdout.strip() == "True":
            return exe
    return None


def test_python_files_compile_with_a_real_python_312():
    exe = _python312()
    if exe is None:
        pytest.skip("no Python 3.12 interpreter here (set MTSS_PYTHON312); the ast check above still ran")
    code = ("import sys\nfor p in sys.argv[1:]:\n    compile(open(p, encoding='utf-8').read(), p, 'exec')\n")
    result = subprocess.run([exe, "-c", code, *map(str, ALL_PYTHON)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    return names


def test_layering_logic_imports_slicer_never_qt_and_the_rest_imports_neither():
    assert "slicer" in _imported_modules(LIB / "logic.py")
    for path in _python_files(LIB):
        modules = _imported_modules(path)
        assert not modules & {"qt", "ctk", "PythonQt"}, f"{path.name} imports Qt"
        if path.name != "logic.py":
            assert "slicer" not in modules, f"{path.name} imports slicer; only logic.py may"


def _load_time_imports(path: Path) -> set[str]:
    """Modules imported when the file is imported (module level, not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.ImportFrom):  # relative: "from .x import y" or "from . import x"
            names |= {f".{node.module}"} if node.module else {f".{alias.name}" for alias in node.names}
    return names


def test_slicer_loads_the_module_without_torch_or_monai():
    """Slicer imports MTSSSegmenter.py at startup: neither it nor what it imports may pull torch or MONAI."""
    heavy = {"torch", "monai", "safetensors"}
    assert not _load_time_imports(MODULE_FILE) & heavy
    seen, todo = set(), ["logic", "terminology", "constants", "volume_assignment"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        imports = _load_time_imports(LIB / f"{name}.py")
        assert not imports & heavy, f"{name}.py imports {sorted(imports & heavy)} at load time"
        todo += [m[1:] for m in imports if m.startswith(".")]
    assert {"worker", "errors"} <= seen


def test_module_file_has_the_scripted_module_classes():
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in _module_tree().body if isinstance(n, ast.ClassDef)}
    assert classes["MTSSSegmenter"] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes["MTSSSegmenterWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["MTSSSegmenterLogic"]
    assert classes["MTSSSegmenterTest"] == ["ScriptedLoadableModuleTest"]
