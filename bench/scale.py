"""Scale: the default chain at growing N, a second identical run, and the projection to COCO-Stuff-27 / Cityscapes-27.

For each N (train images; val = N / 4) a fresh project copy runs every stage of `__default__` as its own
`kedro run --env test --pipelines <stage>` process (the `test` environment: 64 px crops, 1 PiCIE epoch, 2 EM epochs),
so that each stage's peak RSS is its own process's (os.wait4). Printed per stage: seconds per image (train + val),
peak RSS, bytes written per image (growth of the project folder: data, MLflow store and artifacts). Then the whole
chain runs at the largest N in a fresh project as one `kedro run` (one process, as a user runs it), then again,
unchanged: the second run's time and bytes written against the first's. Last, what a run would write and hold at
the benchmark environments' settings, from the stores' field shapes and the environments' catalogs.

Ratios compare the largest N with the smallest, measured in this one process run (the machines are noisy). Targets
(issue 13): peak RSS within 1.25x and seconds per image within 1.3x per stage; the second run under 5 % of the first
run's bytes and under half its time; projected bytes per COCO run under 80 GB and projected host RAM under 32 GB.

    .venv/bin/python bench/scale.py [--sizes 32 128 512] [--workdir /tmp/unseg-scale] [--second-run-only]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.scale").info
STAGES = ("ingestion", "features", "picie", "primaps", "picie_primaps", "evaluation")


@dataclass
class StageRun:
    seconds: float
    peak_rss: int  # bytes
    written: int  # bytes


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`, each file once (hard links of pooled data count once, as on disk)."""
    sizes = {(s.st_dev, s.st_ino): s.st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
             for s in [p.stat()]}
    return sum(sizes.values())


def make_project(folder: Path) -> Path:
    """A project copy: conf/, pyproject.toml, .telemetry, empty data/, MLflow in sqlite inside it."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(ROOT / "conf", folder / "conf", ignore=shutil.ignore_patterns("local"))
    (folder / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / name, folder / name)
    (folder / "src").mkdir()
    (folder / "data").mkdir()
    return folder


def run_stage(project: Path, stage: str, num_train: int) -> StageRun:
    params = f"dataset.synthetic.num_train={num_train},dataset.synthetic.num_val={max(num_train // 4, 4)}"
    command = [sys.executable, "-m", "kedro", "run", "--env", "test", "--pipelines", stage, "--params", params]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "KEDRO_DISABLE_TELEMETRY": "1"}
    before = folder_bytes(project)
    start = time.perf_counter()
    with open(project / f"{stage}.log", "w") as log:
        process = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{stage} failed at N={num_train}; see {project / f'{stage}.log'}")
    return StageRun(seconds, usage.ru_maxrss * 1024, folder_bytes(project) - before)


def run_chain(project: Path, num_train: int) -> dict[str, StageRun]:
    return {stage: run_stage(project, stage, num_train) for stage in STAGES}


# ---------------------------------------------------------------------------------------------------- projection
def env_params(env: str) -> dict:
    from kedro.config import OmegaConfigLoader

    from unseg.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env}, env=env)
    return loader["parameters"]


def online_entries(env: str) -> set[str]:
    """Catalog entries of `env` that are computed where they are read, not stored (OnlineStoreDataset)."""
    from kedro.config import OmegaConfigLoader

    from unseg.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env}, env=env)
    return {name for name, entry in loader["catalog"].items()
            if isinstance(entry, dict) and str(entry.get("type", "")).endswith("OnlineStoreDataset")}


def projection(env: str, num_train: int, num_val: int) -> dict[str, float]:
    """Bytes the stores of one run take at `env`'s settings (each computed once; a second run adds records only),
    from the fields the streams declare, leaving out what the env's catalog computes where it is read: prepared
    images + labels, frozen features, PiCIE features, train masks, val predictions of every method."""
    from unseg.core.backbones.registry import backbone_cfg
    from unseg.pipelines.evaluation.pipeline import METHODS

    params = env_params(env)
    online = online_entries(env)
    crop = params["dataset"]["crop"]
    label = 1 if params["dataset"]["num_classes"] < 255 else 2
    backbone = backbone_cfg(params["features"]["backbone"])
    grid = crop // backbone.stride
    picie_grid = params["picie"]["views"]["input_size"] // 4
    picie_dim = {"resnet50": 256}.get(params["picie"]["network"]["arch"], 128)
    frozen, picie = backbone.dim * grid**2 * 2, picie_dim * picie_grid**2 * 2
    stores = {  # catalog entry: (items, bytes per item)
        "prm_train_images": (num_train, crop * crop * (3 + label)),
        "prm_val_images": (num_val, crop * crop * (3 + label)),
        f"feat_train ({backbone.name}, {backbone.dim} x {grid} x {grid} fp16)": (num_train, frozen),
        "feat_val": (num_val, frozen),
        f"feat_picie_train ({picie_dim} x {picie_grid} x {picie_grid} fp16)": (num_train, picie),
        "feat_picie_val": (num_val, picie),
        "mi_primaps_train_masks (uint8 at the crop)": (num_train, crop * crop),
        f"val predictions ({len(METHODS)} methods, uint8)": (len(METHODS) * num_val, crop * crop),
    }
    return {(f"{name} [computed where read: 0]" if name.split(" ")[0] in online else name):
            (0 if name.split(" ")[0] in online else items * size) for name, (items, size) in stores.items()}


def ram_projection(env: str, measured_peak: int) -> dict[str, float]:
    """Host RAM beyond what the bench measured (flat in N): the buffers whose size follows settings, not N."""
    from unseg.core.backbones.registry import backbone_cfg

    params = env_params(env)
    dim = backbone_cfg(params["features"]["backbone"]).dim
    kmeans = params["evaluation"]["kmeans"]["sample_size"] * dim * 4 * 2       # sample + its normalised copy
    picie = params["picie"]["clustering"]["sample_size"] * 128 * 4 * 2 + params["picie"]["clustering"]["cache_mb"] * 1e6
    em = params["primaps"]["em"]["init_sample"] * dim * 4 * 2
    return {"measured peak (largest N)": measured_peak, "largest settings-sized buffer": max(kmeans, picie, em)}


def second_run(workdir: Path, num_train: int) -> None:
    """The whole default pipeline as one `kedro run` in a fresh project, then the same again."""
    project = make_project(workdir / f"chain{num_train}")
    first, again = (run_stage(project, "__default__", num_train) for _ in range(2))
    log(f"\nthe whole chain at N = {num_train}, one `kedro run` each: first {first.seconds:.0f} s, "
        f"{first.written / 1e6:.1f} MB written, {first.peak_rss / 1e6:.0f} MB peak RSS; second identical run "
        f"{again.seconds:.0f} s ({again.seconds / first.seconds:.2f}x, target < 0.5), {again.written / 1e6:.2f} MB "
        f"written ({100 * again.written / first.written:.1f} %, target < 5 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unseg-scale"))
    parser.add_argument("--second-run-only", action="store_true", help="only the whole chain twice, at the largest N")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.second_run_only:
        second_run(args.workdir, max(args.sizes))
        return
    results: dict[int, dict[str, StageRun]] = {}
    for num_train in args.sizes:
        project = make_project(args.workdir / f"n{num_train}")
        results[num_train] = run_chain(project, num_train)
        images = num_train + max(num_train // 4, 4)
        log(f"\nN = {num_train} train + {images - num_train} val")
        log(f"{'stage':15s} {'s/image':>9s} {'peak RSS MB':>12s} {'written kB/image':>17s}")
        for stage, r in results[num_train].items():
            log(f"{stage:15s} {r.seconds / images:9.3f} {r.peak_rss / 1e6:12.0f} {r.written / images / 1e3:17.1f}")
    small, large = min(args.sizes), max(args.sizes)
    n_small, n_large = small + max(small // 4, 4), large + max(large // 4, 4)
    log(f"\nlargest N ({large}) against smallest ({small}), per stage (targets: RSS <= 1.25x, s/image <= 1.3x)")
    for stage in STAGES:
        a, b = results[small][stage], results[large][stage]
        log(f"{stage:15s} RSS {b.peak_rss / a.peak_rss:5.2f}x   s/image "
              f"{(b.seconds / n_large) / (a.seconds / n_small):5.2f}x")
    second_run(args.workdir, large)
    peak = max(r.peak_rss for r in results[large].values())
    for env, train, val in (("cocostuff27", 49_629, 2_175), ("cityscapes27", 2_975, 500)):
        stores = projection(env, train, val)
        ram = ram_projection(env, peak)
        log(f"\n{env} ({train} train, {val} val): bytes written by one run, projected "
              f"(target for COCO < 80 GB): {sum(stores.values()) / 1e9:.1f} GB")
        for name, size in stores.items():
            log(f"  {name:60s} {size / 1e9:7.1f} GB")
        log(f"  host RAM, projected: {sum(ram.values()) / 1e9:.1f} GB (target < 32 GB): " +
              ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in ram.items()))


if __name__ == "__main__":
    main()
