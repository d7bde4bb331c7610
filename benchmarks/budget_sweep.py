"""Accuracy for your minutes: the pipeline's command at several time budgets.

    python benchmarks/budget_sweep.py [--budgets 3,5,10,15,30] [--avx2] [--output docs/benchmark]

Each budget runs `python -m flows.full_pipeline --time-budget B` as a user would, in a
fresh directory (empty caches: data preparation and measuring count against the budget).
Recorded per budget: the wall time, the best single model's and the ensemble's test
accuracy, the CPU use of the command's processes (the temporary Prefect server
included) over the whole run and over the training stage, from /proc, and the peak
memory of its largest process (`/usr/bin/time`'s maximum resident set, where it is
installed). `--seed` is the run's (default: the pipeline's own, 42). `--avx2` sets
`ONEDNN_MAX_CPU_ISA=AVX2` and the CNN's float32 precision: on an AVX-512 machine that
makes TensorFlow use the AVX2 kernels. Appends rows to `budget_sweep.csv` and redraws
`budget_sweep.md` and `budget_sweep.png` in `--output`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.rows import appended
from tasks.core.cpus import CPUINFO, read_cpuinfo, usable_cores
from tasks.evaluation.report.tables import markdown_table
from tasks.run.config import PipelineConfig
from tasks.training.models.registry import SPECS, own_lane_model, step_name

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
GNU_TIME = Path("/usr/bin/time")
DEFAULT_SEED = PipelineConfig.model_fields["seed"].default
TRAINING_STARTS, TRAINING_ENDS = "stage 4/5", "stage 5/5"


def tree_cpu_seconds(session: int) -> float:
    """CPU seconds of every live process in the session `session` (the command's)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # the session id
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / TICKS


def run_budget(minutes: float, avx2: bool, extra: list[str], seed: int = DEFAULT_SEED) -> dict:
    """One run of the command at `minutes`, in a fresh directory."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    options = []
    if avx2:
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        options = ["--profile-file", str(write_float32_profile())]
    workdir = Path(tempfile.mkdtemp(prefix=f"budget-{minutes:g}-"))
    command = [sys.executable, "-m", "flows.full_pipeline", "--time-budget", str(minutes)]
    command += ["--seed", str(seed)]
    peak_file = workdir / "peak_rss_kb"
    if GNU_TIME.exists():  # the largest process's peak memory, as `time -v` reports it
        command = [str(GNU_TIME), "--format", "%M", "--output", str(peak_file), *command]
    started = time.perf_counter()
    process = subprocess.Popen(
        command + options + extra, cwd=workdir, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    marks, cpu_total = {}, 0.0
    for line in process.stdout:
        sys.stdout.write(line)
        cpu_total = max(cpu_total, tree_cpu_seconds(process.pid))
        for mark in (TRAINING_STARTS, TRAINING_ENDS):
            if mark in line and mark not in marks:
                marks[mark] = (time.perf_counter() - started, tree_cpu_seconds(process.pid))
    # The last reading before the processes ended: the server stops with the command.
    status = process.wait()
    wall = time.perf_counter() - started
    cpu_total = max(cpu_total, marks.get(TRAINING_ENDS, (0, 0))[1])
    board = pd.read_csv(workdir / "reports" / "latest" / "leaderboard.csv")
    ranked = board[board["rank"].notna()]
    single = ranked[ranked.model != "ensemble"].iloc[0]
    ensemble = ranked[ranked.model == "ensemble"]
    metrics = json.loads((workdir / "reports" / "latest" / "metrics.json").read_text())
    plan = metrics.get("plan") or {}
    (t0, c0), (t1, c1) = marks[TRAINING_STARTS], marks[TRAINING_ENDS]
    cores = usable_cores()
    return {
        "budget_minutes": minutes,
        "setting": "AVX2 / float32" if avx2 else "native",
        "exit_status": status,
        "wall_seconds": round(wall, 1),
        "best_single_model": single.model,
        "best_single_accuracy": single.test_accuracy,
        "ensemble_accuracy": float(ensemble.test_accuracy.iloc[0]) if len(ensemble) else None,
        own_lane_model(): own_lane_steps(workdir, plan),
        "left_out": ", ".join(plan.get("dropped", {})),
        "cpu_use_run": round(cpu_total / (wall * cores), 3),
        "cpu_use_training": round((c1 - c0) / ((t1 - t0) * cores), 3),
        "training_seconds": round(t1 - t0, 1),
        "seed": seed,
        "peak_rss_gb": round(int(peak_file.read_text()) / 1e6, 2) if peak_file.exists() else None,
        "cpu": cpu_name(),
        "directory": str(workdir),
        "commit": code_commit(ROOT),
    }


def code_commit(checkout: Path) -> str:
    """The commit of the code measured, with "+changes" when the checkout has some."""

    def git(*args: str) -> str:
        try:
            found = subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True)
        except OSError:  # no git here
            return ""
        return found.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def own_lane_steps(workdir: Path, plan: dict) -> str:
    """The variant of the model on a lane of its own (the CNN's network), and its planned
    and trained steps."""
    name = own_lane_model()
    planned = next((m for m in plan.get("models", []) if m["model"] == name), None)
    if planned is None:
        return "left out"
    metrics = json.loads((workdir / "reports" / "latest" / "metrics.json").read_text())
    model_dir = workdir / metrics["models"][name]["model_dir"]
    trained = len(json.loads((model_dir / "params.json").read_text())["curve"]["validation_error"])
    variant = planned["variant"].split(" (")[0]
    return f"{variant}, {planned['steps']} {step_name(name)} planned, {trained} trained"


def write_float32_profile() -> Path:
    """A profile that sets every model with a `precision` setting to float32."""
    precision = {"precision": "float32"}
    models = [spec.name for spec in SPECS if "precision" in spec.params.model_fields]
    path = Path(tempfile.mkdtemp()) / "float32.json"
    path.write_text(json.dumps({"params": dict.fromkeys(models, precision)}))
    return path


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's name and its fastest instructions for the CNN: AMX and AVX-512 BF16 run
    bfloat16 convolutions, AVX2 float32 ones several times slower."""
    info, cores = read_cpuinfo(cpuinfo), usable_cores()
    return f"{info.name} ({info.fastest_for_cnn}, {cores} usable core{'s' * (cores != 1)})"


def cpu_instructions(cpu: str) -> str:
    """The instructions in a CPU's name, "AVX2" in "AMD EPYC (AVX2, 2 cores)": they, more
    than the name, set the CNN's speed."""
    return cpu.partition(" (")[2].split(",")[0] or cpu


def minutes(seconds: float) -> str:
    """Seconds as the tables show a wall time: 874.6 -> "14:34.6"."""
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


ACCURACIES = ["best_single_accuracy", "ensemble_accuracy"]


def recorded(rows: pd.DataFrame, column: str) -> pd.Series:
    """A column the oldest rows lack (seed, peak memory and commit were recorded later),
    missing in those rows."""
    return rows.get(column, pd.Series(None, index=rows.index, dtype=object))


def run_seeds(rows: pd.DataFrame) -> pd.Series:
    """Each run's seed: the pipeline's default for rows from before seeds were recorded."""
    return recorded(rows, "seed").fillna(DEFAULT_SEED)


def newest_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Per CPU instructions, setting and budget: the mean accuracies of the runs of the
    commit of its last row (a sweep appends its rows; a rerun of older code goes before
    the newer code's), which the figure's lines follow: older code's runs would pull the
    line below what the code reaches now."""
    rows = rows.assign(
        instructions=rows.cpu.map(cpu_instructions),
        commit=recorded(rows, "commit").fillna("—"),
    )
    keys = ["instructions", "setting", "budget_minutes"]
    newest = rows.groupby(keys).commit.transform("last")
    return rows[rows.commit == newest].groupby(keys)[ACCURACIES].mean().reset_index()


def shown_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """The runs as the page's tables show them, a column each."""
    return pd.DataFrame({
        "budget (min)": rows.budget_minutes.map("{:g}".format),
        "CPU": rows.cpu.map(cpu_instructions),
        "setting": rows.setting,
        "wall time": rows.wall_seconds.map(minutes),
        "best single model": rows.best_single_model + " "
        + rows.best_single_accuracy.map("{:.4f}".format),
        "ensemble": rows.ensemble_accuracy.map(lambda a: "—" if pd.isna(a) else f"{a:.4f}"),
        own_lane_model(): rows[own_lane_model()],
        "left out": rows.left_out.fillna("—"),
        "cores busy, training": rows.cpu_use_training.map("{:.0%}".format),
        "cores busy, run": rows.cpu_use_run.map("{:.0%}".format),
        "seed": run_seeds(rows).map("{:g}".format),
        "peak memory (GB)": recorded(rows, "peak_rss_gb").map(
            lambda gb: "—" if pd.isna(gb) else f"{gb:.2f}"
        ),
        "commit": recorded(rows, "commit").fillna("—"),
    })  # fmt: skip


def latest_of_each_seed(rows: pd.DataFrame) -> pd.Index:
    """Per CPU instructions, setting, budget and seed, the row of its latest run (a rerun of
    older code goes before the newer code's rows), in that order: what the code reaches
    there now, one run per seed."""
    keys = pd.DataFrame({
        "instructions": rows.cpu.map(cpu_instructions),
        "setting": rows.setting,
        "budget_minutes": rows.budget_minutes,
        "seed": run_seeds(rows),
    })  # fmt: skip
    latest = keys.groupby(list(keys.columns)).tail(1)
    return latest.sort_values(list(keys.columns), kind="stable").index


def render(rows: pd.DataFrame, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4), dpi=100)
    rows = rows.assign(instructions=rows.cpu.map(cpu_instructions))
    lines = newest_means(rows).groupby(["instructions", "setting"])
    # One colour per CPU and setting; a line through the newest code's runs at each budget
    # (solid: best single model, dashed: ensemble), every run a faint marker.
    for (kind, setting), group in rows.groupby(["instructions", "setting"]):
        where = kind if setting == "native" else f"{kind} as {setting}"
        means = lines.get_group((kind, setting))
        (line,) = axis.plot(means.budget_minutes, means.best_single_accuracy, "o-", label=where)
        axis.plot(means.budget_minutes, means.ensemble_accuracy, "s--", color=line.get_color())
        for column, marker in zip(ACCURACIES, "os", strict=True):
            axis.scatter(
                group.budget_minutes, group[column], marker=marker, color=line.get_color(),
                alpha=0.3, s=16,
            )  # fmt: skip
    axis.plot([], [], "k-", label="best single model, newest commit")
    axis.plot([], [], "k--", label="ensemble, newest commit")
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xticks(
        sorted(rows.budget_minutes.unique()),
        labels=[f"{m:g}" for m in sorted(rows.budget_minutes.unique())],
    )
    axis.set_xlabel("time budget (minutes)")
    axis.set_ylabel("test accuracy")
    axis.set_title("Accuracy for your minutes, 2 cores", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.tight_layout()
    figure.savefig(output / "budget_sweep.png")

    shown = shown_runs(rows)
    order = rows.sort_values(["instructions", "setting", "budget_minutes"], kind="stable").index
    table = markdown_table(shown.loc[order])
    latest_columns = ["budget (min)", "CPU", "setting", "seed", "wall time",
                      "best single model", "ensemble", own_lane_model(), "peak memory (GB)",
                      "commit"]  # fmt: skip
    latest = markdown_table(shown.loc[latest_of_each_seed(rows), latest_columns])
    cpus = ", ".join(sorted(rows.cpu.unique()))
    (output / "budget_sweep.md").write_text(
        "# Accuracy for your minutes\n\n"
        "`python benchmarks/budget_sweep.py`: the command at each time budget, from empty "
        "caches. Cores busy: the CPU time of the command's processes (its temporary Prefect "
        "server included) over wall time and cores. CPU: the instructions of the CPU measured "
        f'on; setting "AVX2 / float32" is `--avx2`. Measured on {cpus}.\n\n'
        "## The latest run of each seed\n\n"
        "Per CPU, setting and budget, the latest run with each seed, of the commit named."
        f"\n\n{latest}\n\n![accuracy against budget](budget_sweep.png)\n\n"
        "The figure: a colour per CPU and setting, a line through each budget's runs of the "
        "newest commit measured there (their mean), solid for the best single model and "
        "dashed for the ensemble; each run of every commit is a faint marker.\n\n"
        f"## Every run\n\n{table}\n"
    )


def record(row: dict, output: Path) -> None:
    """Append one run to `budget_sweep.csv` in `output` and redraw its pages."""
    render(appended(output / "budget_sweep.csv", [row]), output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="3,5,10,15,30")
    parser.add_argument("--avx2", action="store_true", help="ONEDNN_MAX_CPU_ISA=AVX2, float32")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmark")
    parser.add_argument("--render", action="store_true", help="only redraw from the CSV")
    args, extra = parser.parse_known_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    table = args.output / "budget_sweep.csv"
    if args.render:
        render(pd.read_csv(table), args.output)
        return 0
    for minutes in [float(b) for b in args.budgets.split(",")]:
        row = run_budget(minutes, args.avx2, extra, args.seed)
        print(json.dumps(row), flush=True)
        record(row, args.output)
    print(f"python {platform.python_version()}; wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
