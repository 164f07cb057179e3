"""The error policy shared by the training stages' commands (sft, grpo, reward, ppo, dpo).

A user's mistake (an unknown ``--key``, a value of the wrong type, a model dir or data file that does
not exist or cannot be read, a device this machine lacks) reaches the command as a ``ValueError``
subclass (``TaskError``, ``TokenizerError``, ``ModelFormatError``, ``DataError``, ...), a path
error (:data:`PATH_ERRORS`) or a ``CheckpointError``, each with a message that names the key or file.
The command prints that message as one ``error:`` line and exits 2 instead of showing a traceback, the
same contract as ``fastgpt pretrain``; a run stopped by non-finite losses exits 1. The process group
is released either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

# A path the user gave that cannot be used as given (an --out_dir that is a file, a dir without write
# permission, ...): the message names the path.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def interrupted(name: str) -> int:
    """Ctrl-C (SIGINT; torchrun forwards it to every rank): one line from rank 0 instead of each rank's
    KeyboardInterrupt traceback (170 lines on 2 ranks); exit status 130 as a shell reports SIGINT."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(
            f"fastgpt {name}: interrupted; run the same command again to resume from the newest checkpoint "
            "in its --out_dir, if one was saved (--save_every=N saves every N steps)",
            file=sys.stderr,
        )
    return 130


def run_stage(name: str, body: Callable[[], int | None]) -> int:
    """Run a stage's ``body`` and turn user errors into one line on stderr and an exit status."""
    from fastgpt import dist
    from fastgpt.checkpoint import CheckpointError
    from fastgpt.train.trainer import NonFiniteLossError

    try:
        status = int(body() or 0)
        dist.destroy(wait_for_peers=True)  # every rank finished: leave together
        return status
    except (ValueError, CheckpointError, dist.DeepSpeedUnavailable, *PATH_ERRORS) as e:
        print(f"fastgpt {name}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"fastgpt {name}: stopped: {e}", file=sys.stderr)
        return 1
    except dist.PeerFailed:  # rank 0 printed the reason
        return 2
    except KeyboardInterrupt:
        return interrupted(name)
    finally:
        dist.destroy()
