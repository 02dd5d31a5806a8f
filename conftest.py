"""Test-session set-up shared by the unit tests and the nbval notebook runs.

Everything runs in smoke mode, in throw-away folders: a test run never reads or writes
the user's real checkpoints, data or figures. The notebook kernels nbval starts inherit
this environment (``--nbval-current-env``), so they see the same folders and the
teacher trained by 01_teacher is loaded, not retrained, by the later notebooks.
"""
import os
import tempfile

_session_dir = tempfile.mkdtemp(prefix="kdtp-tests-")
os.environ["KDTP_SMOKE"] = "1"
os.environ.setdefault("KDTP_CKPT_DIR", os.path.join(_session_dir, "checkpoints"))
os.environ.setdefault("KDTP_DATA_DIR", os.path.join(_session_dir, "data"))
os.environ.setdefault("KDTP_FIGURES_DIR", os.path.join(_session_dir, "figures"))
os.environ.setdefault("KDTP_MANIFEST", os.path.join(_session_dir, "manifest.json"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("KDTP_RECIPE", None)
os.environ.pop("KDTP_DEVICE", None)


def pytest_unconfigure(config):
    """Remove the session's throw-away folders (checkpoints, data, figures) at the end."""
    import shutil

    shutil.rmtree(_session_dir, ignore_errors=True)
