"""Test-session set-up shared by the unit tests and the nbval notebook runs.

Everything runs in smoke mode, in throw-away folders: a test run never reads or writes
the user's real checkpoints, data or figures. The notebook kernels nbval starts inherit
this environment (``--nbval-current-env``), so they see the same folders and the
teacher trained by 01_teacher is loaded, not retrained, by the later notebooks.
"""
import os
import tempfile

import pytest

# pytest-xdist runs the suite on two workers (pyproject's addopts: ``-n 2 --dist loadscope``,
# so every cell of one notebook runs in order on one worker, in one kernel). Each worker gets
# its share of the cores before torch is imported: two workers with a thread per core each
# would make OpenMP's spinning threads fight over the two cores (measured: 2-5x slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _threads = str(max(1, (os.cpu_count() or 1) // max(1, _workers)))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

# the controller's folders; workers (and the notebook kernels they start) inherit them, so a
# teacher trained by one notebook is loaded by the next wherever it runs (issue 15's lock makes
# two workers asking for one run train it once)
_session_dir = tempfile.mkdtemp(prefix="kdtp-tests-")
os.environ["KDTP_SMOKE"] = "1"
os.environ.setdefault("KDTP_CKPT_DIR", os.path.join(_session_dir, "checkpoints"))
os.environ.setdefault("KDTP_DATA_DIR", os.path.join(_session_dir, "data"))
os.environ.setdefault("KDTP_FIGURES_DIR", os.path.join(_session_dir, "figures"))
os.environ.setdefault("KDTP_MANIFEST", os.path.join(_session_dir, "manifest.json"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("KDTP_RECIPE", None)
os.environ.pop("KDTP_DEVICE", None)


# nbval runs the core lab (00-06) in the smoke version of its default recipe, ``fast`` (the
# ResNet lab, shrunk), and the chapter's later notebooks (07 onwards) in the smoke version of
# ``cpu_air`` (the CPU lab's default): both default paths run under nbval, and the course's dozen
# ResNet trainings that 07 onwards would add stay out of CI's time budget. Every notebook
# also runs in ``fast`` smoke with KDTP_NBVAL_RECIPE=fast, and 07 onwards in the first CPU
# recipe's with KDTP_NBVAL_RECIPE=cpu.
LATER_NOTEBOOKS_RECIPE = os.environ.get("KDTP_NBVAL_RECIPE", "cpu_air")


def _notebook_number(path) -> int | None:
    name = os.path.basename(str(path))
    return int(name[:2]) if name.endswith(".ipynb") and name[:2].isdigit() else None


@pytest.fixture
def restore_run_registry():
    """Runs declared by a test are gone after it (other tests see the kit's runs only)."""
    from kdtp import runs

    before = dict(runs.REGISTRY)
    yield
    runs.REGISTRY.clear()
    runs.REGISTRY.update(before)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before nbval starts a notebook's kernel (at its first cell), set the recipe it inherits;
    every other test runs without one, whatever ran before it."""
    number = _notebook_number(getattr(item, "path", None) or item.fspath)
    if number is not None and number >= 7 and LATER_NOTEBOOKS_RECIPE != "fast":
        os.environ["KDTP_RECIPE"] = LATER_NOTEBOOKS_RECIPE
    else:
        os.environ.pop("KDTP_RECIPE", None)


def pytest_addoption(parser, pluginmanager):
    """pyproject's addopts ask pytest-xdist for two workers (``-n 2 --dist loadscope
    --no-loadscope-reorder``). Where xdist is missing (an environment set up by hand, or
    ``-p no:xdist``), pytest would stop at once with "unrecognized arguments: -n" and no hint;
    accept those options instead and run the suite in one process (``pytest_configure`` says so
    and what to install)."""
    if pluginmanager.hasplugin("xdist"):            # installed and active: its own options stand
        return
    group = parser.getgroup("kdtp", "kdtp: stand-ins for pytest-xdist's options when it is absent")
    group._addoption("-n", "--numprocesses", dest="numprocesses", default=None,
                     help="ignored: pytest-xdist is not installed")
    group._addoption("--dist", dest="dist", default="no", help="ignored: pytest-xdist is not installed")
    group._addoption("--no-loadscope-reorder", dest="loadscopereorder", action="store_false",
                     help="ignored: pytest-xdist is not installed")


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist") or config.getoption("numprocesses", None) in (None, 0, "0"):
        return
    config.issue_config_time_warning(pytest.PytestConfigWarning(
        "pytest-xdist is not installed (or disabled with -p no:xdist), so the suite runs in one process, "
        "about twice as slow on two cores. To run it on two workers as CI does: "
        "python -m pip install -r requirements.txt"), stacklevel=2)


def pytest_collection_modifyitems(session, config, items):
    """Notebooks first, in their order, then the unit tests: the notebooks are the longest
    scopes and a chain (01's teacher serves 03 and 04), so under xdist they start at once on
    both workers and the short unit-test modules fill the gaps at the end."""
    items.sort(key=lambda item: _notebook_number(getattr(item, "path", None) or item.fspath) is None)


def pytest_unconfigure(config):
    """Remove the session's throw-away folders (checkpoints, data, figures) at the end."""
    import shutil

    if not hasattr(config, "workerinput"):         # the controller's folder, once, at the end
        shutil.rmtree(_session_dir, ignore_errors=True)
