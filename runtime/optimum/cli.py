"""`optimum-cli export mtp-edge`: the `mtp-edge export` command behind optimum's CLI.

One implementation, two front doors: the arguments are runtime.cli's and the run is runtime.cli's
cmd_export, so both write the same bundle; only OUTPUT_DIR is positional here, as in optimum's
other exporters. Registered through runtime/optimum_register/register_mtp_edge.py.
"""

from __future__ import annotations

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from mtp_edge.runtime.commands.arguments import make_one_line
from mtp_edge.runtime.commands.cli import add_export_arguments, cmd_export, run_command

PROG = "optimum-cli export mtp-edge"


class MtpEdgeExportCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="mtp-edge",
        help="Export a Gemma 4 target + MTP drafter pair to an mtp-edge bundle (ExecuTorch .pte and/or ONNX).",
    )

    @staticmethod
    def parse_args(parser) -> None:
        make_one_line(parser)  # optimum created this subparser: a bad flag value is still one line and exit code 2
        add_export_arguments(parser, positional_output=True)

    def run(self) -> None:
        # optimum-cli ignores run()'s return value: the exit code has to leave through SystemExit.
        code = run_command(cmd_export, self.args, PROG)
        if code:
            raise SystemExit(code)
