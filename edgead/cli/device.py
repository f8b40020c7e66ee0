"""`edgead device ...`: the device CLI from the host.

The device commands have one definition: firmware_sim's own argparse parser (`python -m firmware_sim`), the
program a Raspberry Pi runs. This verb hands every argument to it unchanged, so the options, the help and
the exit codes are the same on both sides.
"""

from __future__ import annotations

import click


@click.command("device", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                            "help_option_names": []},
               short_help="Run artifacts as a device would; replay buffer; latency/RAM/flash profile.",
               help="Run an exported model as the device does, manage its replay buffer, profile it. "
                    "The same program as `python -m firmware_sim`: try `edgead device --help`.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def device(args: tuple[str, ...]) -> None:
    from firmware_sim.__main__ import main

    code = main(list(args), prog="edgead device")
    if code:
        raise SystemExit(code)
