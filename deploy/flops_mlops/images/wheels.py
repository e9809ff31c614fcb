"""Python packages for one platform: wheels from the package index for that platform, installed into a venv of
the image's root filesystem by this machine's pip, without emulation (native code comes from wheels, never from
compiling under qemu).

Pure-Python packages published only as source are built once on this machine (`host_wheels`, any platform can
use them); everything else must have a manylinux wheel for CPython 3.11 (Debian 12's python3).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import bundled
from ..configuration.schema import ConfigError
from ..processes import StackError
from .platforms import Platform

PYTHON = "3.11"  # Debian bookworm's python3
GLIBC = 36  # bookworm's glibc 2.36: manylinux_2_17 ... manylinux_2_36 wheels run on it
VENV = "opt/venv"


def pip(*args: str, what: str, env: dict | None = None) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join("    " + line for line in done.stderr.strip().splitlines()
                         if "is ignored" not in line)
        raise StackError(f"{what} failed (exit {done.returncode}):\n" + "\n".join(tail.splitlines()[-15:]))


def platform_options(arch: Platform) -> list[str]:
    tags = ["manylinux2014", *(f"manylinux_2_{minor}" for minor in range(17, GLIBC + 1))]
    return ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp",
            *(option for tag in tags for option in ("--platform", f"{tag}_{arch.machine}")),
            *(option for abi in (f"cp{PYTHON.replace('.', '')}", "abi3", "none") for option in ("--abi", abi))]


def host_wheels(requirements: list[str], constraints: Path, find_links: list[Path], dest: Path) -> None:
    """Wheels of ``requirements`` (pip arguments: names, or -r FILE) and their dependencies for this machine
    (pure-Python ones serve every platform)."""
    links = [option for folder in find_links for option in ("--find-links", str(folder))]
    pip("wheel", "--quiet", "--wheel-dir", str(dest), *links, "--constraint", str(constraints), *requirements,
        what=f"pip wheel {' '.join(requirements)}")


def platform_wheels(arch: Platform, requirements: list[str], constraints: Path, find_links: list[Path],
                    dest: Path) -> None:
    """Wheels of ``requirements`` and their dependencies for ``arch``, into ``dest``."""
    links = [option for folder in find_links for option in ("--find-links", str(folder))]
    pip("download", "--quiet", *platform_options(arch), "--dest", str(dest), *links, "--constraint",
        str(constraints), *requirements, what=f"pip download {' '.join(requirements)} for {arch.name}")


def install_venv(root: Path, arch: Platform, wheels: list[Path], epoch: int,
                 compile_only: list[str] | None = None) -> Path:
    """A venv at /opt/venv under ``root`` on the image's /usr/bin/python3, with ``wheels`` in it (no
    dependencies resolved: the wheels are the whole set), without the packages' own test suites; returns its
    site-packages folder. Bytecode is compiled by this machine's CPython 3.11 with hash-based invalidation, the
    same bytes every time: for every module, or only for ``compile_only`` (paths relative to site-packages, as
    imported_files gives them; the rest, seldom imported, is compiled in memory when it is: the image's user
    cannot write)."""
    venv = root / VENV
    site = venv / "lib" / f"python{PYTHON}" / "site-packages"
    (venv / "bin").mkdir(parents=True)
    site.mkdir(parents=True)
    for name in ("python", "python3", f"python{PYTHON}"):
        os.symlink("/usr/bin/python3", venv / "bin" / name)
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {PYTHON}\n",
                                     encoding="utf-8")
    pip("install", "--quiet", "--no-deps", "--no-index", "--no-compile", "--target", str(site),
        *platform_options(arch), *map(str, wheels), what=f"installing {len(wheels)} wheels for {arch.name}")
    scripts = site / "bin"  # console scripts with this machine's interpreter in their first line: not ours to ship
    if scripts.is_dir():
        shutil.rmtree(scripts)
    for record in site.glob("*.dist-info/direct_url.json"):  # names the temporary folder the wheel came from
        forget(record)
    for tests in sorted(site.glob("*/**/tests"), reverse=True):  # a package's own test suite: never imported
        if tests.is_dir() and not tests.is_symlink():
            shutil.rmtree(tests)
    if sys.version_info[:2] != tuple(map(int, PYTHON.split("."))):
        return site  # bytecode of another Python version would be ignored: the image compiles nothing at run time
    files = sorted(str(site / name) for name in compile_only if (site / name).is_file()) \
        if compile_only is not None else [str(path) for path in sorted(site.rglob("*.py"))]
    compiled = subprocess.run([sys.executable, "-c", COMPILE, str(site), f"/{VENV}/lib/python{PYTHON}/site-packages"],
                              input="\n".join(files), capture_output=True, text=True)
    if compiled.returncode != 0:
        raise StackError(f"compiling the bytecode for {arch.name} failed:\n{compiled.stderr[-2000:]}")
    return site


# Compile the files named on stdin (under argv[1]) as they will be seen in the image (under argv[2]), with
# hash-based invalidation: no timestamp in them.
COMPILE = """
import py_compile, sys
site, seen = sys.argv[1], sys.argv[2]
for name in sys.stdin.read().splitlines():
    try:
        py_compile.compile(name, dfile=seen + name[len(site):], doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError as exc:
        if "SyntaxError" not in str(exc):  # a package may hold files for other Python versions; skip those
            raise
"""

# Print the files (relative to their site-packages folder, or to our package's parent) of every module that
# importing the modules named in argv loads, in this machine's environment (the same pinned versions).
IMPORTED = """
import importlib, json, os, sys, sysconfig, flops_mlops
for name in sys.argv[1:]:
    importlib.import_module(name)
roots = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
         os.path.dirname(os.path.dirname(flops_mlops.__file__))]
files = set()
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    for root in roots:
        if path.endswith(".py") and path.startswith(root + os.sep):
            files.add(os.path.relpath(path, root))
print(json.dumps(sorted(files)))
"""


def imported_files(modules: tuple[str, ...]) -> list[str]:
    """The module files importing ``modules`` loads here, relative to site-packages (see IMPORTED)."""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", IMPORTED, *modules], capture_output=True,
                          text=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    if done.returncode != 0:
        raise StackError(f"importing {', '.join(modules)} to find what to compile failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def forget(path: Path) -> None:
    """Remove an installed file and its line in its package's RECORD."""
    record = path.parent / "RECORD"
    name = f"{path.parent.name}/{path.name},"
    lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
    record.write_text("".join(line for line in lines if not line.startswith(name)), encoding="utf-8")
    path.unlink()


def own_wheel(wheelhouse: Path) -> None:
    """The flops-mlops wheel of the code running now, built from the checkout (fixed timestamps: the same code
    gives the same wheel, so Docker reuses its layers)."""
    checkout = bundled.CHECKOUT
    if not (checkout / "pyproject.toml").is_file():
        raise ConfigError("the flops-mlops wheel is built from a checkout; run this command from one")
    with tempfile.TemporaryDirectory(prefix="flops-wheel-") as folder:
        source = Path(folder)
        for name in ("pyproject.toml", "README.md", "setup.py", "MANIFEST.in"):
            shutil.copy2(checkout / name, source / name)
        for name in ("deploy", "examples", "sla_templates"):
            shutil.copytree(checkout / name, source / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "*.egg-info", "*.whl", "build"))
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                               str(wheelhouse), str(source)], capture_output=True, text=True,
                              env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
    if done.returncode != 0:
        raise StackError(f"building the flops-mlops wheel failed:\n{done.stderr[-2000:]}")
