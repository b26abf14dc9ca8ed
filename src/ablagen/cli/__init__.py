"""Command-line interface: typer commands only. Logic lives in the library modules.

Every :class:`~ablagen.core.errors.AblagenError` becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import sys

import typer

from ablagen.cli.app import app
from ablagen.core.errors import AblagenError

# Importing a command module registers its commands on ``app``.
from ablagen.cli import analyze as _analyze  # noqa: E402,F401
from ablagen.cli import generate as _generate  # noqa: E402,F401
from ablagen.cli import run as _run  # noqa: E402,F401
from ablagen.cli import rank as _rank  # noqa: E402,F401
from ablagen.cli import study as _study  # noqa: E402,F401
from ablagen.cli import export as _export  # noqa: E402,F401
from ablagen.cli import sweep as _sweep  # noqa: E402,F401
from ablagen.cli import prune as _prune  # noqa: E402,F401

from ablagen.cli.app import plain_help  # noqa: E402

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    args = _export.optional_values(sys.argv[1:] if argv is None else argv)
    try:
        # a "[default: ...]" in a help text is shown, not read as rich markup
        command = plain_help(typer.main.get_command(app))
        command.main(args=args, prog_name="ablagen", standalone_mode=True)
    except SystemExit as exc:  # typer/click exit codes pass through unchanged
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except AblagenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def _entry() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())
