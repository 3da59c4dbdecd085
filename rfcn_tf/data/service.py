"""tf.data service: the training input pipeline's preprocessing on other processes or hosts.

With `data.service: "grpc://HOST:PORT"` (a dispatcher's address), `build_dataset(...,
training=True)` builds the whole per-image pipeline (read, decode, resize, augment, pad, batch)
as usual, then hands it to TensorFlow's tf.data service (`tf.data.experimental.service.
distribute`): the service's workers run it and the trainer only receives finished batches.

    python -m rfcn_tf.data.service --dispatcher --port 5050            # one, anywhere
    python -m rfcn_tf.data.service --worker --dispatcher-address HOST:5050   # N of them
    python -m rfcn_tf.train --config bccd --set data.service=grpc://HOST:5050   # M trainers

Processing mode: `distributed_epoch` (tf.data's ShardingPolicy.DYNAMIC). The dispatcher hands
out the source's splits (files, or records of the annotation list) to whichever worker asks
next, so every image is processed once per epoch across all workers (with `parallel_epochs`
each worker would run the whole, identically seeded pipeline and the trainers would see every
augmented image once per worker). All trainers read ONE job (same `job_name`, derived from the
data config, the split and the per-replica batch, so the M trainers of a multi-worker run meet
in it without configuration): each batch goes to exactly one trainer, so the trainers receive
distinct elements; the pipeline is therefore not sharded by the input context in this mode.

What changes against the local pipeline: batches arrive in the order the workers finish them
(not deterministic), per-image augmentation seeds restart at each worker (images differ, so
no two batches repeat), and the sources' end-of-pass warnings (skipped images) are not logged:
they are Python callbacks, which a worker in another process cannot run. Evaluation never uses
the service (one ordered pass on the chief).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import socket
import sys
from collections.abc import Sequence

from rfcn_tf.cli_args import add_common_arguments, run_cli

__all__ = [
    "PROCESSING_MODE",
    "build_parser",
    "distribute",
    "job_name",
    "main",
    "parse_address",
    "start_dispatcher",
    "start_worker",
]

PROCESSING_MODE = "distributed_epoch"
_ADDRESS = re.compile(r"^grpc://(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d{1,5})$")


def parse_address(address: str, *, key: str = "data.service") -> tuple[str, str]:
    """`grpc://host:port` -> ("grpc", "host:port").

    Raises:
      DataError: the address is not of that form (the message names `key` and the value).
    """
    from rfcn_tf.data.errors import DataError

    match = _ADDRESS.match(str(address).strip())
    if not match or not 0 < int(match.group("port")) < 65536:
        raise DataError(
            f"{key} must be a tf.data service dispatcher address grpc://HOST:PORT, got {address!r}"
        )
    return "grpc", f"{match.group('host')}:{match.group('port')}"


def job_name(data_cfg, *, split: str, per_replica_batch: int) -> str:
    """The job every trainer of one run reads: the same data config -> the same name.

    A resumed run (another `data.seed`) or a changed config gets another job, so it never joins
    the leftovers of an earlier one on a long-lived dispatcher.
    """
    payload = json.dumps(
        [dataclasses.asdict(data_cfg), split, int(per_replica_batch)], sort_keys=True, default=str
    )
    return f"rfcn_tf-{split}-{hashlib.sha1(payload.encode()).hexdigest()[:16]}"


def distribute(dataset, *, address: str, job: str):
    """`dataset` processed by the tf.data service at `address` (module docstring)."""
    import tensorflow as tf

    protocol, target = parse_address(address)
    return dataset.apply(
        tf.data.experimental.service.distribute(
            processing_mode=PROCESSING_MODE, service=f"{protocol}://{target}", job_name=job
        )
    )


def start_dispatcher(*, port: int = 0, work_dir: str | None = None):
    """An in-process tf.data service dispatcher (started); `.target` is its grpc:// address.

    Args:
      port: TCP port (0: any free port).
      work_dir: journal folder: with it the dispatcher is fault tolerant (a restarted one
        resumes its jobs).
    """
    import tensorflow as tf

    config = tf.data.experimental.service.DispatcherConfig(
        port=int(port), work_dir=work_dir, fault_tolerant_mode=bool(work_dir)
    )
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(*, dispatcher_address: str, port: int = 0, host: str | None = None):
    """An in-process tf.data service worker (started) registered with the dispatcher.

    Args:
      dispatcher_address: `grpc://host:port` or `host:port` of the dispatcher.
      port: this worker's TCP port (0: any free port).
      host: the name trainers reach this worker by (default: this machine's hostname; the
        dispatcher tells trainers `host:port`).
    """
    import tensorflow as tf

    address = dispatcher_address if "://" in dispatcher_address else f"grpc://{dispatcher_address}"
    _, target = parse_address(address, key="--dispatcher-address")
    host = host or socket.gethostname()
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=target, worker_address=f"{host}:%port%", port=int(port)
    )
    return tf.data.experimental.service.WorkerServer(config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.data.service",
        description="Start a tf.data service dispatcher or worker for training with "
        "data.service=grpc://HOST:PORT (the training input pipeline then runs on "
        "the workers). Runs until interrupted.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument(
        "--dispatcher",
        action="store_true",
        help="start the dispatcher (one per training run or cluster)",
    )
    role.add_argument(
        "--worker",
        action="store_true",
        help="start a preprocessing worker (as many as the input needs)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port to listen on (dispatcher default 5050; worker default 0 = any free port)",
    )
    parser.add_argument(
        "--dispatcher-address",
        default=None,
        metavar="HOST:PORT",
        help="worker: the dispatcher to register with (grpc:// optional)",
    )
    parser.add_argument(
        "--host",
        default=None,
        help="worker: the name trainers reach this machine by (default: its hostname)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="dispatcher: journal folder for a fault-tolerant dispatcher",
    )
    add_common_arguments(parser, progress=False)
    return parser


def _serve(args: argparse.Namespace) -> int:
    if args.dispatcher:
        server = start_dispatcher(
            port=5050 if args.port is None else args.port, work_dir=args.work_dir
        )
        print(
            f"tf.data service dispatcher at {server.target} (train with --set "
            f"data.service={server.target.replace('localhost', socket.gethostname())})",
            flush=True,
        )
    else:
        server = start_worker(
            dispatcher_address=args.dispatcher_address, port=args.port or 0, host=args.host
        )
        print(f"tf.data service worker registered with {args.dispatcher_address}", flush=True)
    try:
        server.join()
    except KeyboardInterrupt:  # the way to stop a server: not an error
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: starts the server and blocks; 2 on bad flags; 1 with one `error: ...` line
    (an address in use, an unreachable dispatcher; traceback with --debug) via `run_cli`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker and not args.dispatcher_address:
        parser.error("--worker needs --dispatcher-address HOST:PORT")
    return run_cli(parser, _serve, argv)


if __name__ == "__main__":
    sys.exit(main())
