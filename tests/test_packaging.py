"""The built wheel works on its own: grammar inside, importable outside the repo.

Builds a wheel, checks that it ships ``einplan/grammar/einplan.lark``,
installs it (without dependencies) into a fresh virtual environment that sees
the system site-packages (so torch is not reinstalled), and from a directory
outside the repository parses a pattern and evaluates ``bl`` with that
environment's Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import einplan

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys
from importlib import resources
import torch
import einplan
from einplan.parse import grammar_text, parse

pattern = parse("b (h d), h d e -> b h e | max e")
assert [len(op.axes) for op in pattern.inputs] == [2, 3], pattern
assert pattern.clauses[0].reducer == "max"
x = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)
out = einplan.bl("b n, m n -> b m", x, x)
assert torch.equal(out, x @ x.T), out
try:
    parse("a b -> c d e f ->")
except einplan.PatternSyntaxError as error:
    caret = str(error).splitlines()[-1]
else:
    raise AssertionError("no syntax error")
print(json.dumps({
    "module": einplan.__file__,
    "version": einplan.__version__,
    "grammar_resource": str(resources.files("einplan") / "grammar" / "einplan.lark"),
    "grammar_is_file": (resources.files("einplan") / "grammar" / "einplan.lark").is_file(),
    "grammar": grammar_text(),
    "caret": caret,
    "prefix": sys.prefix,
}))
"""


def _run(args, cwd, timeout=120, env=None):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _build_wheel(out: Path) -> Path:
    attempts = [
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(REPO)],
    ]
    errors = []
    for args in attempts:
        result = subprocess.run(args, cwd=out, capture_output=True, text=True, timeout=120, env=_clean_env())
        wheels = sorted(out.glob("einplan-*.whl"))
        if result.returncode == 0 and wheels:
            return wheels[-1]
        errors.append(result.stderr[-2000:])
    pytest.fail("could not build a wheel:\n" + "\n".join(errors))


def test_wheel_installs_and_runs_outside_the_repo(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = _build_wheel(dist)
    assert wheel.name.startswith(f"einplan-{einplan.__version__}-")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "einplan/grammar/einplan.lark" in names, sorted(names)
        assert "einplan/__init__.py" in names
        for module in ("parse", "resolve", "bind", "signatures", "plan", "codegen", "source", "runtime", "kernels", "cli"):
            assert f"einplan/{module}.py" in names
        shipped = archive.read("einplan/grammar/einplan.lark").decode("utf-8")
        assert not any(name.startswith(("tests/", "src/")) for name in names)
    assert shipped == (REPO / "grammar" / "einplan.lark").read_text(encoding="utf-8")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=tmp_path, env=_clean_env())
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert python.exists()
    # the system's pip, run by the venv's interpreter, installs into the venv
    _run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        cwd=tmp_path,
        env=_clean_env(),
    )

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = _run([str(python), "-c", PROBE], cwd=outside, env=_clean_env())
    report = json.loads(result.stdout.strip().splitlines()[-1])

    venv_root = venv.resolve()
    module = Path(report["module"]).resolve()
    assert venv_root in module.parents, f"einplan was imported from {module}, not the venv"
    assert REPO not in module.parents
    assert Path(report["prefix"]).resolve() == venv_root
    resource = Path(report["grammar_resource"]).resolve()
    assert report["grammar_is_file"] and venv_root in resource.parents, resource
    assert report["grammar"] == shipped
    assert report["version"] == einplan.__version__
    assert report["caret"].strip() == "^"
