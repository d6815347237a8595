"""Start-up of the ``gan2flow`` command: TensorFlow's C++ log hidden unless asked for (``GAN2FLOW_TF_LOG=1``).

TensorFlow's C++ libraries write notes to the process's standard error while they load and start:
``I0000 ... oneDNN custom operations are on``, ``Could not find cuda drivers``, "rebuild TensorFlow
with the appropriate compiler flags", ``E0000 ... failed call to cuInit``. Some come from absl's
logging before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``, so that variable alone cannot hide them.
:func:`import_tensorflow_quietly` therefore points file descriptor 2 at a temporary file while
TensorFlow loads (replaying it if the import fails), and :func:`quiet_tensorflow_log` sets
``TF_CPP_MIN_LOG_LEVEL=3`` (unless it is set already) for what the runtime logs later.

Only the command does this: the ``gan2flow`` console script and ``python -m gan2flow`` (see
:func:`started_as_command`); ``import gan2flow`` in a user's program changes nothing. It runs when
``gan2flow/__init__.py`` imports this module, first, because both start by importing the package, and the
package imports TensorFlow: it has to, since Keras finds gan2flow's layers and models in a ``.keras`` file only once
their modules have registered them. Nothing here imports TensorFlow at module level.
"""
from __future__ import annotations

import os
import sys
import tempfile

__all__ = ["SHOW_LOG_VARIABLE", "started_as_command", "show_tensorflow_log", "quiet_tensorflow_log",
           "import_tensorflow_quietly"]

#: Set to 1 to see TensorFlow's log when running the ``gan2flow`` command.
SHOW_LOG_VARIABLE = "GAN2FLOW_TF_LOG"
_COMMAND = "gan2flow"


def started_as_command(argv=None, orig_argv=None):
    """Whether this process is the ``gan2flow`` console script or ``python -m gan2flow`` (or a submodule).

    Args:
        argv: ``sys.argv`` by default. The console script runs with ``argv[0]`` its own path; while
            ``python -m`` locates its module (importing the package first), ``argv[0]`` is ``"-m"``.
        orig_argv: ``sys.orig_argv`` by default (the interpreter's own command line), which names the
            module after ``-m``.
    """
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if not argv:
        return False
    if argv[0] == "-m":
        module = _module_after_dash_m(orig_argv)
        return module == _COMMAND or module.startswith(_COMMAND + ".")
    name = os.path.splitext(os.path.basename(argv[0].replace("\\", "/")))[0]  # a Windows path too
    return name in (_COMMAND, _COMMAND + "-script")


def _module_after_dash_m(orig_argv):
    for index, argument in enumerate(orig_argv[1:], start=1):
        if argument == "-m":
            return orig_argv[index + 1] if index + 1 < len(orig_argv) else ""
        if argument.startswith("-m"):
            return argument[2:]
    return ""


def show_tensorflow_log():
    """Whether ``GAN2FLOW_TF_LOG`` asks for TensorFlow's log (any value but empty or ``0``)."""
    return os.environ.get(SHOW_LOG_VARIABLE, "").strip() not in ("", "0")


def quiet_tensorflow_log():
    """Set ``TF_CPP_MIN_LOG_LEVEL=3`` and ``ABSL_MIN_LOG_LEVEL=3`` where unset, unless the log was asked for.

    Effective for a TensorFlow loaded afterwards; an explicit value of either variable is kept.
    """
    if show_tensorflow_log():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def import_tensorflow_quietly():
    """Import TensorFlow with its start-up log hidden (see the module docstring); no-op if loaded or asked for.

    If the import fails, what TensorFlow wrote is replayed on standard error before the error propagates.
    """
    if show_tensorflow_log() or "tensorflow" in sys.modules:
        return
    quiet_tensorflow_log()
    _flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            _flush()
            os.dup2(saved, 2)
            captured.seek(0)
            os.write(2, captured.read())
            raise
        finally:
            _flush()
            os.dup2(saved, 2)
            os.close(saved)


def _flush():
    if sys.stderr is not None:
        sys.stderr.flush()


if started_as_command():  # once, as gan2flow/__init__.py imports this module before anything else
    import_tensorflow_quietly()
