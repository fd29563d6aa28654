"""Multi-process launch: ``sfcompile train ... --nproc-per-node N`` starts ``torch.distributed.run`` itself.

    sfcompile train --model qwen3-8b ... --nproc-per-node 8                                  # one node
    sfcompile train --model qwen3-8b ... --nproc-per-node 8 --nnodes 4 --node-rank R --master-addr HOST
    torchrun --nproc-per-node 8 -m sfcompile train --model qwen3-8b ...                      # the same

The launcher process runs torch's elastic agent in-process (``torch.distributed.run``, static rendezvous at
``--master-addr:--master-port``; no restarts: a failed rank ends the run) and re-runs ``python -m sfcompile
train`` with the same arguments minus the launch flags on every local rank. Each worker joins the group in
`distributed.init_from_env`.

Shutdown: workers run in their own session, so Ctrl-C reaches the launcher only, which forwards ONE SIGINT to
every worker (SIGTERM likewise); the workers agree (`distributed.any_rank`) to stop after the current step,
write their checkpoint together and exit 130/143. The agent waits ``SHUTDOWN_TIMEOUT_S`` for that before it
kills them; checkpoints are atomic (written to a temporary folder, renamed), so a kill leaves the previous one
intact. A rank that raises makes the agent stop the others the same way; the launcher returns the failing
worker's exit code.
"""

from __future__ import annotations

import os
import sys

SHUTDOWN_TIMEOUT_S = 300  # time the workers get to finish a step and write a sharded checkpoint

# flags consumed by the launcher (all take one value); everything else goes to the workers unchanged
LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


class LaunchError(RuntimeError):
    """A launch request that cannot work."""


def add_arguments(parser) -> None:
    """The distributed flags of ``sfcompile train``."""
    g = parser.add_argument_group("distributed (FSDP2 by default; see sfcompile plan for memory)")
    g.add_argument("--nproc-per-node", type=int, default=1, help="processes (GPUs) on this node (default 1)")
    g.add_argument("--nnodes", type=int, default=1, help="number of nodes (default 1)")
    g.add_argument("--node-rank", type=int, default=0, help="this node's rank, 0 .. nnodes-1")
    g.add_argument("--master-addr", default="127.0.0.1", help="address of node 0 (default 127.0.0.1)")
    g.add_argument("--master-port", type=int, default=29500, help="a free port on node 0 (default 29500)")
    g.add_argument("--engine", default="fsdp2", choices=("fsdp2", "deepspeed"), help="sharding engine")
    g.add_argument("--zero", type=int, default=3, choices=(3,), help="DeepSpeed ZeRO stage (3 only)")
    g.add_argument(
        "--activation-checkpointing", action="store_true", help="recompute each block in the backward"
    )
    g.add_argument(
        "--no-reshard-after-forward", dest="reshard_after_forward", action="store_false",
        help="FSDP2: keep each block's gathered parameters from forward to backward (one all-gather fewer per "
        "block and step; more memory: see sfcompile plan --no-reshard-after-forward)",
    )


def in_worker() -> bool:
    """Whether this process was started by torchrun / the launcher (the group is in the environment)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def wants_launch(args) -> bool:
    """Launch flags asking for more than one process, and not already inside a launched worker."""
    return (args.nproc_per_node > 1 or args.nnodes > 1) and not in_worker()


def strip_launch_flags(argv: list[str]) -> list[str]:
    """``argv`` without the launcher's flags (``--flag value`` and ``--flag=value`` forms)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0].replace("_", "-")
        if name in LAUNCH_FLAGS:
            skip = "=" not in a
            continue
        out.append(a)
    return out


def torchrun_argv(
    train_argv: list[str],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
) -> list[str]:
    """The ``torch.distributed.run`` command line that runs ``sfcompile train <train_argv>`` on every rank."""
    if nproc_per_node < 1 or nnodes < 1:
        raise LaunchError(f"--nproc-per-node {nproc_per_node} and --nnodes {nnodes} must be >= 1")
    if not 0 <= node_rank < nnodes:
        raise LaunchError(f"--node-rank {node_rank} must lie in 0 .. {nnodes - 1} (--nnodes {nnodes})")
    if nnodes > 1 and master_addr in ("127.0.0.1", "localhost"):
        raise LaunchError(
            f"--nnodes {nnodes}: pass --master-addr, the address of node 0 that every node can reach"
        )
    from torch.distributed.run import get_args_parser

    known = {s for a in get_args_parser()._actions for s in a.option_strings}
    argv = [
        f"--nproc-per-node={nproc_per_node}",
        f"--nnodes={nnodes}",
        f"--node-rank={node_rank}",
        f"--master-addr={master_addr}",
        f"--master-port={master_port}",
        "--max-restarts=0",
    ]
    if "--shutdown-timeout" in known or "--shutdown_timeout" in known:  # torch >= 2.12
        flag = "--shutdown-timeout" if "--shutdown-timeout" in known else "--shutdown_timeout"
        argv.append(f"{flag}={SHUTDOWN_TIMEOUT_S}")
    return [*argv, "-m", "sfcompile", "train", *strip_launch_flags(train_argv)]


def launch(argv: list[str]) -> int:
    """Run ``torch.distributed.run`` with ``argv`` (see `torchrun_argv`) in this process; the exit code."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except SignalException as err:  # Ctrl-C / SIGTERM: the agent forwarded it and waited for the workers
        print(f"sfcompile train: stopped by {err.sigval.name}; the workers wrote their checkpoint (resume "
              "with --resume RUN_DIR)", file=sys.stderr)
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values()]
        code = next((c for c in codes if c not in (None, 0)), 1)
        if code < 0:  # killed by a signal
            code = 128 - code
        print(f"sfcompile train: a worker exited with code {code}; the others were stopped", file=sys.stderr)
        return code
    return 0


def launch_from_args(args, train_argv: list[str] | None = None) -> int:
    """`launch` for a parsed ``sfcompile train`` command; ``train_argv`` defaults to this process's own
    arguments after ``train``."""
    if train_argv is None:
        argv = sys.argv[1:]
        train_argv = argv[argv.index("train") + 1 :] if "train" in argv else argv
    try:
        cmd = torchrun_argv(
            train_argv,
            nproc_per_node=args.nproc_per_node,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
        )
    except LaunchError as err:
        print(f"sfcompile train: error: {err}", file=sys.stderr)
        return 2
    return launch(cmd)
