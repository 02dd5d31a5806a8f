"""``python -m kdtp lab``: run every notebook in order, headless, and print the comparison.

What the instructor runs once before class (and CI runs in smoke mode): each notebook is
executed top to bottom by nbclient in a fresh ``python3`` kernel, its executed copy is
written to the output folder, and the notebooks' train-or-load leaves the checkpoints that
make every notebook instant in class.

Without real CIFAR-10 (none on disk and no network) the lab says so and runs in smoke mode
on the generated data instead, every result and figure labelled smoke; it never presents
generated-data numbers as real ones.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from .env import ConfigError, data_root, project_root, smoke_mode

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
SMOKE_CELL_TIMEOUT = 900     # seconds; a smoke cell that takes longer is hung
_ECHO = re.compile(r"^\[kdtp\]|\bepoch \d+/\d+:")


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


CORE_LAST = 6   # 00_data .. 06_comparison: the reference lab; 07 onwards: the chapter's other methods


def lab_notebooks(folder: Path | None = None, core_only: bool = False) -> list[Path]:
    """The numbered notebooks (``00_data.ipynb`` ...) of ``folder``, in order; with
    ``core_only``, the core lab (00-06) alone."""
    folder = folder or notebooks_dir()
    paths = sorted(folder.glob(NOTEBOOK_PATTERN))
    return [p for p in paths if int(p.name[:2]) <= CORE_LAST] if core_only else paths


def real_data_available(data_dir: Path | None = None) -> tuple[bool, str]:
    """(True, "") when real CIFAR-10 is on disk or could be downloaded now; else (False, why).

    Downloading here, before any kernel starts, means one download for the whole lab and
    a plain answer up front instead of a traceback in the first notebook.
    """
    from .data import FOLDER, DataNotFoundError, download_cifar10, has_cifar_files, is_synthetic

    root = Path(data_dir) if data_dir is not None else data_root()
    folder = root / FOLDER
    if has_cifar_files(folder) and not is_synthetic(folder):
        return True, ""
    print(f"CIFAR-10 is not in {folder}; trying to download it (170 MB)...", flush=True)
    try:
        download_cifar10(root)
    except DataNotFoundError as exc:
        return False, str(exc)
    return True, ""


def _imagenet_weights_problem(recipe) -> str | None:
    """The reason ImageNet weights for ``recipe`` cannot be had now, or None.

    Checked before the first notebook so a missing file stops the lab in one second with
    the fix, not an hour in, inside a notebook.
    """
    from .models import WeightsUnavailableError, has_pretrained_weights, load_imagenet_weights

    if not recipe.pretrained:
        return None
    for arch in dict.fromkeys((recipe.teacher_arch, recipe.student_arch)):
        if has_pretrained_weights(arch):
            try:
                load_imagenet_weights(arch)
            except WeightsUnavailableError as exc:
                return str(exc)
    return None


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the kernels started inside, restore them after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _client_class():
    from nbclient import NotebookClient

    class EchoClient(NotebookClient):
        """nbclient that echoes the kit's progress lines (``[kdtp] ...``, epoch summaries) live.

        A training cell can run for an hour; its output lands in the notebook only when the
        cell ends, so the lab repeats these lines on the terminal as they arrive.
        """

        echo = None  # callable(str), set by run_lab

        def output(self, outs, msg, display_id, cell_index):  # noqa: D401 - nbclient hook
            if msg.get("msg_type") == "stream" and self.echo is not None:
                for line in msg["content"].get("text", "").splitlines():
                    line = line.rstrip()
                    if _ECHO.search(line):
                        self.echo(f"      {line}")
            return super().output(outs, msg, display_id, cell_index)

    return EchoClient


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_BAR_TEXT = re.compile(r"\d+%\|")


def drop_frozen_progress_bars(nb) -> int:
    """Remove the progress-bar widgets from an executed notebook; returns how many.

    A tqdm bar in a notebook is a live widget. Its saved copy has no live kernel behind it,
    so JupyterLab and static HTML show the text it had when it was *created*
    (``0%| | 0/87``), frozen, for every epoch. The epoch lines printed after each bar (loss,
    accuracy, time) say everything the finished bar said, so the executed copies keep
    those and drop the bars.
    """
    dropped = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {}) if out.get("output_type") in ("display_data", "update_display_data") else {}
            if _WIDGET_VIEW in data and _BAR_TEXT.search(str(data.get("text/plain", ""))):
                dropped += 1
                continue
            kept.append(out)
        cell["outputs"] = kept
    return dropped


def _error_summary(exc: BaseException) -> str:
    """The last meaningful line of a cell error (``AssertionError: ...``)."""
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    first = (evalue or "").strip().splitlines()
    return f"{ename}: {first[0][:300]}" if first else ename


def run_notebook(path: Path, out_path: Path, *, timeout: int | None = None,
                 kernel_name: str = "python3", index: int = 1, total: int = 1,
                 echo=print) -> tuple[bool, str]:
    """Execute ``path`` in a fresh kernel (cwd: its folder); write the executed copy.

    Returns (ok, message). On failure the partial notebook is still written, and the
    message names the cell that failed and its error.
    """
    import nbformat
    from tqdm.auto import tqdm

    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    client = _client_class()(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=False,
                             resources={"metadata": {"path": str(path.parent)}})
    current = {"cell": None}
    bar = tqdm(total=len(code_cells), desc=f"[{index}/{total}] {path.stem}", unit="cell",
               leave=True, dynamic_ncols=True, file=sys.stdout)
    client.echo = bar.write if echo is print else echo
    client.on_cell_start = lambda cell, cell_index: current.__setitem__("cell", cell_index)
    client.on_cell_executed = lambda cell, cell_index, execute_reply: (
        bar.update(1) if cell.cell_type == "code" else None)
    started = time.perf_counter()
    ok, message = True, ""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # the kernel process's own stderr (start-up notices, a crash's last words) goes to a log
    # file, not over the progress bars; kept only when it has something in it
    kernel_log = out_path.with_suffix(".kernel.log")
    try:
        with open(kernel_log, "w") as log:
            client.execute(stderr=log)
    except Exception as exc:  # noqa: BLE001 - CellExecutionError, DeadKernelError, timeouts
        ok = False
        cell = current["cell"]
        where = (f"code cell {code_cells.index(cell) + 1} of {len(code_cells)} (cell index {cell})"
                 if cell in code_cells else "kernel start")
        message = f"{path.name} failed in {where}: {_error_summary(exc)}"
        if kernel_log.is_file() and kernel_log.stat().st_size:
            message += f" (kernel messages: {kernel_log})"
    finally:
        bar.close()
        drop_frozen_progress_bars(nb)
        nbformat.write(nb, out_path)
        if ok and kernel_log.is_file():
            kernel_log.unlink()
    elapsed = time.perf_counter() - started
    if ok:
        message = f"{path.name} done in {elapsed:.1f}s -> {out_path}"
    return ok, message


def comparison_text(recipe_name: str, smoke: bool) -> str:
    """The results table of the lab's run folder (per run, the latest line of the recipe's own
    seeds, not 06's extra seeds), smoke-labelled."""
    from .store import run_folder
    from .recipes import get_recipe
    from .results import RESULTS_FILE, format_table, latest_by_run, load_results

    recipe = get_recipe(recipe_name, smoke=smoke)
    folder = run_folder(recipe)
    rows = list(latest_by_run(load_results(folder), seeds={recipe.seed, recipe.teacher_seed}).values())
    lines = [f"Comparison ({folder / RESULTS_FILE}):"]
    if smoke:
        lines.append("SMOKE RUN - synthetic data, tiny runs: these numbers are NOT real results.")
    lines.append(format_table(rows))
    return "\n".join(lines)


def run_lab(smoke: bool | None = None, recipe: str | None = None, out_dir: Path | None = None,
            *, notebooks: Sequence[Path] | None = None, timeout: int | None = None,
            kernel_name: str = "python3", core_only: bool = False) -> int:
    """Run the lab's notebooks in order; 0 when all ran, 1 when one failed (or cannot start).

    ``smoke``: True forces smoke mode; None follows ``KDTP_SMOKE``, and falls back to smoke
    (saying so) when real CIFAR-10 is neither on disk nor downloadable. ``recipe``:
    default as in the notebooks (``fast`` with a GPU, ``cpu_air`` without); a default whose
    ImageNet weights cannot be had gives way to ``cpu_air`` (saying so), a named one stops
    the lab with the fix. ``out_dir``: where
    the executed notebooks go (default ``lab-output/``, ``lab-output/smoke/`` for smoke).
    ``core_only``: the core lab (00-06) without the chapter's later notebooks.
    """
    from .recipes import NO_IMAGENET_RECIPE, default_recipe_name, get_recipe, no_imagenet_advice

    smoke = smoke_mode() if smoke is None else bool(smoke)
    if recipe is not None:
        get_recipe(recipe, smoke=smoke)  # unknown recipe: ConfigError before anything runs
    if not smoke:
        ok, why = real_data_available()
        if not ok:
            print("\nReal CIFAR-10 is not available: it is not on disk and could not be downloaded.\n"
                  f"  {why}\n"
                  "To run the real lab, copy the extracted 'cifar-10-batches-py' folder into "
                  f"{data_root()} (or set KDTP_DATA_DIR to its parent folder) and run this "
                  "command again.\nRunning the lab in SMOKE mode on generated data instead: "
                  "every result and figure below is labelled smoke and is NOT a real result.\n",
                  flush=True)
            smoke = True
    recipe_name = recipe or default_recipe_name(smoke)
    chosen = get_recipe(recipe_name, smoke=smoke)
    if not smoke:
        problem = _imagenet_weights_problem(chosen)
        if problem and recipe is None and not os.environ.get("KDTP_RECIPE", "").strip():
            # the default recipe, not one the user named: run the lab that needs no ImageNet weights
            # (a GPU box offline), as a missing dataset falls back to smoke mode, and say so
            print(f"\nThe default recipe here, {recipe_name}, needs ImageNet weights that cannot be loaded "
                  f"now:\n  {problem}\nRunning the lab with {no_imagenet_advice()} instead: a real lab, "
                  f"whose networks differ from the reference lab's ResNets. For the ResNet lab, copy the "
                  f"weight files as described and run again with --recipe {recipe_name}.\n", flush=True)
            recipe_name = NO_IMAGENET_RECIPE
            chosen = get_recipe(recipe_name, smoke=smoke)
        elif problem:
            print(f"The {recipe_name} recipe needs ImageNet weights that cannot be loaded now:\n"
                  f"  {problem}\nUse {no_imagenet_advice()} or --smoke, or copy "
                  "the weight files as described and run again.", file=sys.stderr)
            return 1

    paths = [Path(p) for p in notebooks] if notebooks is not None else lab_notebooks(core_only=core_only)
    if not paths:
        print(f"no notebooks found in {notebooks_dir()}: the lab runs from a checkout of the kit "
              "(git clone ...; pip install -e '.[lab]').", file=sys.stderr)
        return 1
    out_dir = Path(out_dir) if out_dir is not None else project_root() / "lab-output" / ("smoke" if smoke else "")
    if timeout is None and smoke:
        timeout = SMOKE_CELL_TIMEOUT

    from .store import run_folder
    from .env import figures_root

    mode = "SMOKE (synthetic data, tiny runs; not real results)" if smoke else "real"
    print(f"kdtp lab | mode {mode} | recipe {recipe_name} | {len(paths)} notebooks\n"
          f"         | checkpoints {run_folder(chosen)}\n"
          f"         | figures {figures_root() / 'smoke' if smoke else figures_root()}\n"
          f"         | executed notebooks -> {out_dir}", flush=True)
    started = time.perf_counter()
    with _environ(KDTP_SMOKE="1" if smoke else "0", KDTP_RECIPE=recipe_name):
        for i, path in enumerate(paths, 1):
            ok, message = run_notebook(path, out_dir / path.name, timeout=timeout,
                                       kernel_name=kernel_name, index=i, total=len(paths))
            print(("  " if ok else "  FAILED: ") + message, flush=True)
            if not ok:
                print(f"The partial notebook (outputs up to the failing cell) is in "
                      f"{out_dir / path.name}; fix the problem and run the lab again: finished "
                      "runs are loaded from their checkpoints, not retrained.", file=sys.stderr)
                return 1
        print(f"\nall {len(paths)} notebooks ran in {time.perf_counter() - started:.0f}s\n", flush=True)
        try:
            print(comparison_text(recipe_name, smoke), flush=True)
        except ConfigError as exc:  # pragma: no cover - recipe validated above
            print(f"(no comparison table: {exc})")
        from .plots import figures_dir

        if (out_dir / "06_comparison.ipynb").is_file():
            print(f"\nSize, latency and throughput: {out_dir / '06_comparison.ipynb'} and "
                  f"{figures_dir(smoke) / 'comparison.csv'}; figures in {figures_dir(smoke)}", flush=True)
    return 0
