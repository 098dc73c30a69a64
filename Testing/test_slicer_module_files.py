"""The Slicer module's files, checked without Slicer: .ui widget names, CMake file lists, pins, process runner."""

from __future__ import annotations

import ast
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "TotalRegistrator"
LIBRARY = ROOT / "TotalRegistratorLib"
sys.path.insert(0, str(MODULE))

from TotalRegistratorSlicer.process import ProcessRunner, Progress, parse_progress  # noqa: E402


def module_source() -> str:
    return (MODULE / "TotalRegistrator.py").read_text()


def logic_constant(name: str, **names):
    """A constant of TotalRegistratorSlicer/logic.py (which needs slicer to import): a literal, or an
    expression of the constants given in ``names``."""
    tree = ast.parse((MODULE / "TotalRegistratorSlicer" / "logic.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            if not names:
                return ast.literal_eval(node.value)
            return eval(compile(ast.Expression(node.value), "logic.py", "eval"), {"__builtins__": {}}, names)
    raise KeyError(name)


def ui_widgets() -> dict[str, ET.Element]:
    tree = ET.parse(MODULE / "Resources" / "UI" / "TotalRegistrator.ui")
    return {w.get("name"): w for w in tree.iter("widget") if w.get("name")}


def cmake_list(name: str) -> list[str]:
    text = (MODULE / "CMakeLists.txt").read_text()
    match = re.search(rf"set\({name}\s+(.*?)\)", text, re.S)
    assert match, f"{name} not set in TotalRegistrator/CMakeLists.txt"
    return [item.replace("${MODULE_NAME}", "TotalRegistrator") for item in match.group(1).split()]


def test_every_widget_the_module_uses_is_in_the_ui_file():
    widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", module_source()))
    assert 'getattr(self.ui, f"{block}CheckBox")' in module_source()
    used |= {f"{block}CheckBox" for block in logic_constant("BLOCKS")}
    missing = used - set(widgets)
    assert not missing, f"widgets used in TotalRegistrator.py but absent from the .ui: {sorted(missing)}"


def test_ui_parameters_are_the_parameter_node_fields():
    tree = ast.parse(module_source())
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TotalRegistratorParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = name
    assert set(bound) == fields, (sorted(set(bound) ^ fields))
    # every qMRML selector gets the scene from the module widget
    tree = ET.parse(MODULE / "Resources" / "UI" / "TotalRegistrator.ui")
    receivers = {c.findtext("receiver") for c in tree.iter("connection")}
    mrml = {n for n, w in ui_widgets().items() if w.get("class").startswith("qMRML") and n != "TotalRegistrator"}
    assert mrml <= receivers


def module_imports(path: Path) -> set[Path]:
    """Files of the module folder that ``path`` imports, transitively."""
    found, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.add(current)
        for node in ast.walk(ast.parse(current.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = current.parent / (node.module or "").replace(".", "/")
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = MODULE / node.module.replace(".", "/")
            else:
                continue
            candidates = [base.with_suffix(".py"), base / "__init__.py", *(base / f"{a.name}.py" for a in node.names)]
            for candidate in candidates:
                if candidate.is_file():
                    todo.append(candidate)
                    if candidate.name != "__init__.py" and (candidate.parent / "__init__.py").is_file():
                        todo.append(candidate.parent / "__init__.py")
    return found


def library_imports() -> set[str]:
    """Library modules that ``python -m TotalRegistratorLib`` may import (also inside functions)."""
    found, todo = set(), ["__main__", "__init__"]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for node in ast.walk(ast.parse((LIBRARY / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                todo += [n for n in names if (LIBRARY / f"{n}.py").is_file()]
    return found


def test_cmake_lists_every_file_the_module_imports():
    scripts = set(cmake_list("MODULE_PYTHON_SCRIPTS"))
    imported = {p.relative_to(MODULE).as_posix() for p in module_imports(MODULE / "TotalRegistrator.py")}
    assert imported <= scripts, f"not in MODULE_PYTHON_SCRIPTS: {sorted(imported - scripts)}"
    assert all((MODULE / s).is_file() for s in scripts)

    resources = set(cmake_list("MODULE_PYTHON_RESOURCES"))
    used = {f"Resources/{p}" for p in re.findall(r'resourcePath\("([^"]+)"\)', module_source())}
    used |= {"Resources/Icons/TotalRegistrator.png"}  # the module icon Slicer loads by convention
    assert used <= resources and all((MODULE / r).is_file() for r in resources)

    library = set(cmake_list("LIBRARY_MODULES"))
    needed = library_imports()
    assert needed <= library, f"not in LIBRARY_MODULES: {sorted(needed - library)}"
    assert all((LIBRARY / f"{m}.py").is_file() for m in library)
    assert tuple(cmake_list("LIBRARY_WEIGHTS")) == logic_constant("BLOCKS")
    assert "add_subdirectory(TotalRegistrator)" in (ROOT / "CMakeLists.txt").read_text()


def test_extension_icon_and_screenshot_urls_point_at_files_of_this_repository():
    text = (ROOT / "CMakeLists.txt").read_text()
    urls = re.findall(r"https://raw\.githubusercontent\.com/[^/\s]+/[^/\s]+/main/([^\s\"]+)", text)
    assert len(urls) >= 2, "icon and at least one screenshot"
    missing = [path for path in urls if not (ROOT / path).is_file()]
    assert not missing, missing


def test_logic_constants_match_the_library_and_the_pins():
    from TotalRegistratorLib import cascade, pipeline
    from TotalRegistratorLib.optimize import OptimizationSettings

    assert logic_constant("BLOCKS") == cascade.BLOCKS
    assert logic_constant("DEFAULT_ITERATIONS") == tuple(OptimizationSettings().deformable_iterations)
    # the weights folder the library reads is Resources/weights beside TotalRegistratorLib, as CMake installs it
    assert pipeline.DEFAULT_WEIGHTS == ROOT / "Resources" / "weights"
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    pins = {k.lower(): v for k, v in pins.items()}
    for name, version in logic_constant("REQUIREMENTS").items():
        assert pins[name.lower()] == version, name


def test_presets_are_distinct_runnable_choices():
    blocks = logic_constant("BLOCKS")
    presets = logic_constant("PRESETS", BLOCKS=blocks)
    for name, (chosen, refine) in presets.items():
        assert chosen or refine, f"{name} runs nothing"
        assert chosen == tuple(b for b in blocks if b in chosen), f"{name}: blocks out of the cascade's order"
    assert len(set(presets.values())) == len(presets), "two presets are the same choice"
    assert presets["Affine only"] == (("affine",), False)  # a linear transform node, as the READMEs promise
    # the parameter node's defaults (no block, refinement on) show as the instance-optimisation preset
    defaults = re.findall(r"^\s+(affine|bone|thorax|abdomen|wholebody|refine): bool = (True|False)$",
                          module_source(), re.M)
    state = {k: v == "True" for k, v in defaults}
    assert presets["Instance optimisation only"] == (tuple(b for b in blocks if state[b]), state["refine"])


def test_cli_progress_lines_parse(capsys):
    from TotalRegistratorLib.cli import ProgressBars

    ProgressBars("json")("deformable", 3, 10)
    assert parse_progress(capsys.readouterr().err.strip()) == Progress("deformable", 3, 10)
    assert parse_progress("totalregistrator: error: x: no such file or folder") is None
    assert parse_progress('{"stage": "affine"}') is None


def run_until_done(runner: ProcessRunner, timeout: float = 30.0):
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, new = runner.poll()
        lines += new
        if code is not None:
            return code, lines
        time.sleep(0.02)
    pytest.fail("child process did not end")


def test_process_runner_collects_both_streams_and_the_exit_code():
    runner = ProcessRunner()
    code = ("import sys, json\n"
            "for i in range(3): print(json.dumps({'stage': 's', 'done': i, 'total': 2}), file=sys.stderr)\n"
            "print('summary')\nprint('totalregistrator: error: bad', file=sys.stderr)\nsys.exit(2)")
    runner.start([sys.executable, "-c", code])
    exit_code, lines = run_until_done(runner)
    assert exit_code == 2
    assert ("stdout", "summary") in lines
    stderr = [line for stream, line in lines if stream == "stderr"]
    assert [parse_progress(line).done for line in stderr[:3]] == [0, 1, 2]
    assert stderr[3] == "totalregistrator: error: bad"


def test_process_runner_cancel_kills_the_child():
    runner = ProcessRunner()
    runner.start([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"])
    start = time.monotonic()
    runner.cancel()
    assert runner.process.poll() is not None and time.monotonic() - start < 10
    runner.cancel()  # idempotent


def _ended(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.is_file() and "State:\tZ" in status.read_text()  # killed, not yet reaped


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_process_runner_cancel_kills_what_a_launcher_started():
    """Like Slicer's PythonSlicer: the launcher runs the interpreter as its own child, sharing the pipes."""
    launcher = ("import subprocess, sys\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                "print(child.pid, flush=True)\nchild.wait()")
    runner = ProcessRunner()
    runner.start([sys.executable, "-c", launcher])
    lines, deadline = [], time.monotonic() + 30
    while not lines and time.monotonic() < deadline:
        lines = [line for stream, line in runner.poll()[1] if stream == "stdout"]
        time.sleep(0.02)
    child = int(lines[0])
    start = time.monotonic()
    runner.cancel()
    assert time.monotonic() - start < 10, "cancel waited for the launcher's child"
    while not _ended(child) and time.monotonic() - start < 10:
        time.sleep(0.05)
    assert _ended(child), "the launcher's child survived cancel"
