"""Run the audio reasoning pipeline.

    python jobs/transcribe.py                                   # configs/local.yaml on the sample audio
    python jobs/transcribe.py --config configs/step-audio-r1.yaml --set input.uri=s3://bucket/calls/
    ray job submit --working-dir . -- python jobs/transcribe.py --config ...
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from contract.config import ConfigError, load_config  # noqa: E402
from pipeline.lease import LeaseLost, OutputBusy  # noqa: E402
from pipeline.sources import SourceError  # noqa: E402
from pipeline.writable import OutputNotWritable, check_writable  # noqa: E402

OUR_PACKAGES = ("contract", "pipeline", "deployments", "jobs", "__main__")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config file (default: configs/local.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set output.uri=/tmp/out (repeatable)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also redo the rows whose error is marked retryable (their rows are replaced)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress line (by default on stderr: in place on a terminal, else a log line)")
    args = parser.parse_args(argv)
    # Our own messages at INFO; libraries' (botocore's "Found credentials ...") only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for package in OUR_PACKAGES:
        logging.getLogger(package).setLevel(logging.INFO)
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
    from deployments.app import EngineStartFailed, serving
    from pipeline.run import Interrupted, run

    # SIGTERM (a scheduler stopping the job) ends the run as Ctrl-C does, its answers committed: SystemExit(15) in
    # the main thread, as Ray's driver handler (installed by ray.init) also does.
    sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    try:
        # The pipeline opens the app (starts it, or reuses a running one) only if there is work, and an app
        # started here is deleted however the run ends.
        summary = run(config, serving, retry_failed=args.retry_failed, progress=None if args.quiet else sys.stderr)
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
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
