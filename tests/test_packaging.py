"""tinyae installs as a package: the wheel carries its recipes and the tiny teacher, and a console command runs it."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from tinyae.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tinyae").rglob("__init__.py")}
    assert found | {"tinyae.recipes", "tinyae.weights"} == listed


def test_every_script_is_a_subcommand():
    scripts = {p.stem.replace("_", "-") for p in (ROOT / "scripts").glob("*.py")}
    assert scripts <= set(COMMANDS)
    for path in (ROOT / "scripts").glob("*.py"):  # thin wrappers: no logic of their own
        assert f'main(["{path.stem.replace("_", "-")}", *sys.argv[1:]])' in path.read_text()


def test_python_m_tinyae_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "tinyae", "--help"], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in COMMANDS)


def test_the_usage_line_and_import_tinyae_load_neither_torch_nor_any_subcommand():
    probe = ("import sys, contextlib, io\n"
             "import tinyae\n"
             "from tinyae.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
             "    main(['--help'])\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'accelerate')"
             " or m.startswith('tinyae.cli.')))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_subcommand_imports_its_own_module_only():
    probe = ("import sys\n"
             "from tinyae.cli import parse\n"
             "parse(['export', '--student', 's'])\n"
             "print(sorted(m for m in sys.modules if m.startswith('tinyae.cli.')))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['tinyae.cli.export']"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    return next(out.glob("tinyae-*.whl"))


@pytest.mark.slow
def test_the_wheel_holds_the_recipes_and_the_tiny_teacher(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {f"tinyae/recipes/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")}
    teacher = {f"tinyae/weights/{t}/{n}" for t in ("tiny-teacher", "tiny-wan")
               for n in ("config.json", "diffusion_pytorch_model.safetensors")}
    assert recipes and recipes <= names and teacher <= names
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "tinyae").rglob("*.py")}
    assert modules <= names
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)
    console = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "tinyae = tinyae.cli:main" in console


@pytest.mark.slow
def test_an_installed_wheel_distills_from_another_directory(wheel, tmp_path):
    """Not editable: the recipes and the tiny teacher are found inside the installed package.

    The wheel goes into a folder of its own that leads the path; its dependencies are the ones this
    interpreter runs with, wherever they are installed (a venv, the system, a user site).
    """
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import tinyae; print(tinyae.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))
    run = subprocess.run([target / "bin" / "tinyae", "distill", "--recipe", "smoke", "--output", "out",
                          "--train.steps", "2", "--data.final_steps", "1", "--train.checkpoint_every", "2",
                          "--loss.lpips_weight", "0", "--train.log_with", "null"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (elsewhere / "out" / "student" / "config.json").is_file()
