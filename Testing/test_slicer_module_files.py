"""The Slicer module's files, checked without Slicer: CMake lists, extension metadata, the .ui file, the
supported versions, dependency plans, presets and the subprocess runner (the Qt-free parts of the module
are imported; no source text is searched)."""

from __future__ import annotations

import glob
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "TotalRegistrator"
sys.path.insert(0, str(MODULE))

from TotalRegistratorSlicer import DOCUMENTATION, dependencies, parameters  # noqa: E402
from TotalRegistratorSlicer.library import library_root, registry, shipped_blocks  # noqa: E402
from TotalRegistratorSlicer.runner import SubprocessRunner, child_environment, parse_progress  # noqa: E402


def cmake_set(path: Path, name: str) -> list[str]:
    """The items of ``set(NAME ...)`` in a CMake file, with the variables the module uses expanded."""
    match = re.search(rf"set\({name}\s+(.*?)\)\n", path.read_text(), re.S)
    assert match, f"{name} not set in {path}"
    text = match.group(1).replace("${MODULE_NAME}", "TotalRegistrator")
    return [item.strip('"') for item in re.findall(r'"[^"]*"|\S+', text)]


def cmake_glob(name: str) -> set[str]:
    """The files a ``file(GLOB[_RECURSE] NAME RELATIVE ${LIBRARY_DIR} ... PATTERN)`` of the module matches."""
    library = r"\$\{LIBRARY_DIR\}"
    match = re.search(rf"file\((GLOB\w*) {name} RELATIVE {library} CONFIGURE_DEPENDS {library}/(\S+)\)",
                      (MODULE / "CMakeLists.txt").read_text())
    assert match, f"{name}: no file(GLOB ...) in TotalRegistrator/CMakeLists.txt"
    base = ROOT / "TotalRegistratorLib"
    pattern = match.group(2).replace("*.", "**/*.") if match.group(1) == "GLOB_RECURSE" else match.group(2)
    return {Path(p).relative_to(base).as_posix() for p in glob.glob(str(base / pattern), recursive=True)}


def test_cmake_lists_every_file_of_the_module():
    scripts = set(cmake_set(MODULE / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS"))
    present = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py")}
    assert scripts == present, f"listed but absent or present but not listed: {sorted(scripts ^ present)}"
    resources = set(cmake_set(MODULE / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES"))
    on_disk = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert resources == on_disk, sorted(resources ^ on_disk)


def test_cmake_ships_the_whole_library_and_its_weights():
    scripts = cmake_glob("LIBRARY_SCRIPTS")
    every = {p.relative_to(ROOT / "TotalRegistratorLib").as_posix()
             for p in (ROOT / "TotalRegistratorLib").rglob("*.py") if "__pycache__" not in p.parts}
    assert scripts == every and {"__main__.py", "registry.py", "weights/__init__.py"} <= scripts
    assert cmake_glob("LIBRARY_WEIGHTS") == {f"weights/{block}.pt" for block in shipped_blocks()}
    assert shipped_blocks() == registry.BLOCKS, "the extension ships every block"
    assert library_root() == ROOT


def test_extension_metadata_names_files_of_this_repository_and_the_supported_versions():
    top = ROOT / "CMakeLists.txt"
    repository = cmake_set(top, "EXTENSION_REPOSITORY")[0]
    homepage = cmake_set(top, "EXTENSION_HOMEPAGE")[0].replace("${EXTENSION_REPOSITORY}", repository)
    assert homepage == DOCUMENTATION, "the module's documentation link is the extension's homepage"
    raw = repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    urls = [homepage.replace(f"{repository}/blob/main/", raw)] + cmake_set(top, "EXTENSION_ICONURL") \
        + cmake_set(top, "EXTENSION_SCREENSHOTURLS")
    for url in urls:
        assert url.startswith(raw), url
        assert (ROOT / url[len(raw):]).is_file(), url
    assert "Slicer 5.10 and later" in cmake_set(top, "EXTENSION_DESCRIPTION")[0]
    assert cmake_set(top, "EXTENSION_MINIMUM_SLICER_VERSION") == ["5.10"]
    assert dependencies.SUPPORTED_SLICER == "Slicer 5.10 and later"
    assert dependencies.SUPPORTED_SLICER in (MODULE / "README.md").read_text()
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in (MODULE / "CMakeLists.txt").read_text()


def test_the_license_is_the_apache_license():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_an_old_slicer_python_is_refused_naming_the_supported_versions():
    dependencies.check_python((3, 12, 0))
    dependencies.check_python(dependencies.MINIMUM_PYTHON)
    with pytest.raises(dependencies.DependencyError, match=r"needs Slicer 5\.10 and later .*this Slicer has "
                                                         r"Python 3\.9\.10"):
        dependencies.check_python((3, 9, 10))


def test_the_dependency_plan_upgrades_an_old_torch_and_adds_missing_packages():
    def versions(**installed):
        return lambda name: installed.get(name)

    everything = {name: "1.0" for name in dependencies.REQUIREMENTS}
    assert dependencies.plan(versions(torch="2.13.0", **everything)).empty()
    assert dependencies.plan(versions(torch="2.4.0+cu121", **everything)).empty()
    assert dependencies.plan(versions(torch="2.1.2+cu118", **everything)).torch == ">=2.4"
    assert dependencies.plan(versions(torch="2.3.99", **everything)).torch == ">=2.4"
    missing = dependencies.plan(versions(torch="2.13.0", nibabel="5.0"))
    assert missing.torch is None and missing.packages == ("scipy==1.17.1", "matplotlib==3.11.2", "pillow==13.0.0",
                                                          "tqdm==4.70.1", "isal==1.9.1")
    assert dependencies.plan(versions()).describe().startswith("PyTorch >=2.4, nibabel==")


def test_the_pinned_packages_are_the_project_pins():
    pins = {k.lower(): v for k, v in (line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                                      if "==" in line and not line.startswith("#"))}
    for name, version in dependencies.REQUIREMENTS.items():
        assert pins[name.lower()] == version, name
    assert dependencies.release(pins["torch"]) >= dependencies.release(dependencies.MINIMUM_TORCH)


def test_presets_are_distinct_runnable_choices_of_the_library_blocks():
    for name, (blocks, refine) in parameters.PRESETS.items():
        assert blocks or refine, f"{name} runs nothing"
        assert blocks == tuple(b for b in registry.BLOCKS if b in blocks), f"{name}: blocks out of the cascade's order"
        parameters.RegistrationParameters(blocks=blocks, refine=refine).check()
    assert len(set(parameters.PRESETS.values())) == len(parameters.PRESETS), "two presets are the same choice"
    assert parameters.preset_of((), True) == "Instance optimisation only"  # the panel's defaults
    assert parameters.preset_of(("bone",), True) is None
    assert parameters.available_presets(("affine",)) == ["Affine only", "Instance optimisation only"]


def test_the_ui_binds_each_parameter_once_and_gives_every_selector_the_scene():
    tree = ET.parse(MODULE / "Resources" / "UI" / "TotalRegistrator.ui")
    widgets = {w.get("name"): w for w in tree.iter("widget") if w.get("name")}
    bound = [p.find("string").text for w in widgets.values() for p in w.findall("property")
             if p.get("name") == "SlicerParameterName"]
    assert len(bound) == len(set(bound))
    receivers = {c.findtext("receiver") for c in tree.iter("connection")}
    selectors = {n for n, w in widgets.items() if w.get("class").startswith("qMRML") and n != "TotalRegistrator"}
    assert selectors <= receivers


def finish(runner: SubprocessRunner, timeout: float = 30.0):
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, new = runner.poll()
        lines += new
        if code is not None:
            return code, lines
        runner.wait(0.05)
    pytest.fail("child process did not end")


def test_subprocess_runner_collects_both_streams_and_the_exit_code():
    runner = SubprocessRunner()
    code = ("import sys, json\n"
            "for i in range(3): print(json.dumps({'stage': 's', 'done': i, 'total': 2}), file=sys.stderr)\n"
            f"print('summary')\nprint({registry.ERROR_PREFIX + 'bad'!r}, file=sys.stderr)\nsys.exit(2)")
    runner.start([sys.executable, "-c", code], child_environment(str(ROOT)))
    exit_code, lines = finish(runner)
    assert exit_code == 2 and ("stdout", "summary") in lines
    stderr = [line for stream, line in lines if stream == "stderr"]
    assert [parse_progress(line).done for line in stderr[:3]] == [0, 1, 2]
    assert stderr[3] == registry.ERROR_PREFIX + "bad" and parse_progress(stderr[3]) is None


def test_waiting_for_a_quiet_process_does_not_spin():
    runner = SubprocessRunner()
    runner.start([sys.executable, "-c", "import time; time.sleep(1.5)"], child_environment(str(ROOT)))
    cpu, wall = time.process_time(), time.monotonic()
    assert finish(runner)[0] == 0
    assert time.monotonic() - wall > 1.0 and time.process_time() - cpu < 0.3


def _ended(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.is_file() and "State:\tZ" in status.read_text()  # killed, not yet reaped


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process table")
def test_cancel_kills_what_a_launcher_started():
    """Like Slicer's PythonSlicer: the launcher runs the interpreter as its own child, sharing the pipes."""
    launcher = ("import subprocess, sys\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                "print(child.pid, flush=True)\nchild.wait()")
    runner = SubprocessRunner()
    runner.start([sys.executable, "-c", launcher], child_environment(str(ROOT)))
    lines, deadline = [], time.monotonic() + 30
    while not lines and time.monotonic() < deadline:
        lines = [line for stream, line in runner.poll()[1] if stream == "stdout"]
        runner.wait(0.05)
    child = int(lines[0])
    start = time.monotonic()
    runner.cancel()
    assert runner.process.poll() is not None and time.monotonic() - start < 10
    while not _ended(child) and time.monotonic() - start < 10:
        time.sleep(0.05)
    assert _ended(child), "the launcher's child survived cancel"
    runner.cancel()  # idempotent
