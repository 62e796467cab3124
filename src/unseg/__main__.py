"""`python -m unseg` runs the project like `kedro run`; under torchrun, one process per device.

    python -m unseg run --env cocostuff27                                  # one process: `kedro run`, unchanged
    torchrun --nproc-per-node=8 -m unseg run --env cocostuff27             # 8 processes on one machine
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m unseg run ...

With WORLD_SIZE > 1 (set by torchrun) each process joins the process group first and runs with
`unseg.runner.DistributedRunner` (docs/distributed.md). A process stopped by torchrun (because another one failed)
ends like Ctrl-C: its MLflow run, on rank 0, is recorded KILLED, and torchrun reports the failed rank's error.
"""

import signal
import sys
from pathlib import Path
from typing import Any

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

RUNNER = "unseg.runner.DistributedRunner"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}: torchrun stopped this process")


def distributed_args(args: list[str]) -> list[str]:
    """The command line of one process of a torchrun group: joins the group, runs with the distributed runner."""
    from unseg.core.distributed import env_world_size, init_from_env

    if env_world_size() <= 1:
        return args
    init_from_env()
    signal.signal(signal.SIGTERM, _interrupt)
    if any(arg == "--runner" or arg.startswith("--runner=") or arg == "-r" for arg in args):
        raise SystemExit("python -m unseg run under torchrun chooses its own runner; leave out --runner")
    return [*args, "--runner", RUNNER]


def main(*args: Any, **kwargs: Any) -> Any:
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    kwargs["standalone_mode"] = not hasattr(sys, "ps1")
    run = find_run_command(package_name)
    if not args and "args" not in kwargs:
        command = sys.argv[1:]
        if command[:1] == ["run"]:
            command = command[1:]
        kwargs["args"] = distributed_args(command)
    return run(*args, **kwargs)


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()
