"""Run the audio reasoning pipeline.

    python jobs/transcribe.py                                   # configs/local.yaml on the sample audio
    python jobs/transcribe.py --config configs/step-audio-r1.yaml --set input.uri=s3://bucket/calls/
    ray job submit --working-dir . -- python jobs/transcribe.py --config ...
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from contract.config import ConfigError, load_config  # noqa: E402
from pipeline.lease import LeaseLost, OutputBusy  # noqa: E402
from pipeline.sources import SourceError  # noqa: E402
from pipeline.writable import OutputNotWritable, check_writable  # noqa: E402

OUR_PACKAGES = ("contract", "pipeline", "deployments", "jobs", "__main__")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def ray_output_to(path: Path | None) -> Iterator[TextIO]:
    """While the block runs, this process's fds 1 and 2 (Ray's C++ and Python logs, and the worker logs Ray
    forwards to the driver) go to the file at `path`; yields the terminal's stderr for our own lines. Both fds are
    restored however the block ends. `path` None: nothing is redirected."""
    if path is None:
        yield sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)
        terminal.close()


@contextlib.contextmanager
def our_logs_to(stream: TextIO) -> Iterator[None]:
    """Our packages' log lines, from INFO up, to `stream`; other libraries' go to the root logger's handler from
    WARNING up (botocore's "Found credentials ..." is not for the user)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    loggers = [logging.getLogger(name) for name in OUR_PACKAGES]
    before = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, before):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def ray_log_path() -> Path:
    """Where a run's Ray output goes unless --verbose: a new file in the temp folder."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    return Path(tempfile.gettempdir()) / f"transcribe-{stamp}-{os.getpid()}.log"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config file (default: configs/local.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set output.uri=/tmp/out (repeatable)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also redo the rows whose error is marked retryable (their rows are replaced)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress line (by default on stderr: in place on a terminal, else a log line)")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray's own logs on the terminal too (by default they go to a file, named at the end)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    with our_logs_to(sys.stderr):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        check_writable(config.output.uri, config.storage.model_dump())
    except OutputNotWritable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Ray is imported only once the config is known to be good and the output writable.
    import ray

    from deployments.app import EngineStartFailed, serving
    from pipeline.run import Interrupted, run

    log_path = None if args.verbose else ray_log_path()
    ray_was_up = ray.is_initialized()
    # SIGTERM (a scheduler stopping the job) ends the run as Ctrl-C does, its answers committed: SystemExit(15) in
    # the main thread, as Ray's driver handler (installed by ray.init) also does.
    sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    try:
        # The pipeline opens the app (starts it, or reuses a running one) only if there is work, and an app
        # started here is deleted however the run ends.
        with ray_output_to(log_path) as terminal, our_logs_to(terminal):
            try:
                summary = run(config, serving, retry_failed=args.retry_failed,
                              progress=None if args.quiet else terminal)
            finally:
                if not ray_was_up and ray.is_initialized():
                    ray.shutdown()  # the local cluster this run started: its goodbyes go to the log too
    except (ConfigError, SourceError, OutputNotWritable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OutputBusy, LeaseLost) as e:  # another run writes the same output
        print(f"error: {e}", file=sys.stderr)
        return 3
    except EngineStartFailed as e:  # a wrong model path, out of memory at load, no nodes for the replicas
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:  # stopped while answering: what it answered is written, and counted
        print(e, file=sys.stderr)
        return 128 + (signal.SIGINT if e.how == "interrupted" else signal.SIGTERM)
    except KeyboardInterrupt:  # before any answer
        print("interrupted: what was written stays; run the same command again to resume", file=sys.stderr)
        return 130
    except SystemExit as e:
        if e.code != signal.SIGTERM:
            raise
        print("terminated: what was written stays; run the same command again to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        if log_path and log_path.exists():
            if log_path.stat().st_size:
                print(f"ray logs: {log_path}", file=sys.stderr)
            else:
                log_path.unlink()
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
