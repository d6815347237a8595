"""Command line: ``gan2flow demo | train | convert | refine | compare`` (also ``python -m gan2flow``).

Errors in user input print one line (``gan2flow: error: ...``) and exit with status 2; pass
``--traceback`` to see the full trace.
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "build_parser"]


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def _demo(args):
    from gan2flow import demo

    if args.kernel:
        demo.kernel_demo(out_dir=args.out or "gan2flow-out/kernel-demo", seed=args.seed)
    else:
        demo.gan_demo(out_dir=args.out or "gan2flow-out/demo", seed=args.seed, quick=args.quick)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gan2flow",
        description="Turn GANs into score-difference flows: train, convert, refine, compare.",
    )
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="run the embedded demo (no data download, about a minute on 2 cores)",
        description="Train a small, visibly imperfect GAN on the 25-Gaussian grid, convert it into a flow, "
                    "refine its samples in data and latent space, print a metrics table and write a PNG "
                    "figure and a JSON of the numbers. With --kernel: the training-free kernel SD flow from "
                    "N(0, I) to the grid instead.",
    )
    demo.add_argument("--kernel", action="store_true", help="run the training-free kernel SD flow demo")
    demo.add_argument("--out", default=None, help="output folder (default gan2flow-out/demo or .../kernel-demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quick", action="store_true", help="smaller budget (for smoke tests)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv=None):
    """Entry point of the ``gan2flow`` console script. Returns the exit status."""
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("gan2flow: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        if args.traceback:
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"gan2flow: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
