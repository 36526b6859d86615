"""Installed as `optimum.commands.register.register_mtp_edge` (pyproject maps this folder there).

optimum-cli imports every module of that namespace at start-up and registers its REGISTER_COMMANDS,
which is how optimum's own exporter plugins add `optimum-cli export <name>`. Both imports are light
(argparse only): heavy ones wait until the command runs.
"""

from optimum.commands.export.base import ExportCommand

from mtp_edge.runtime.optimum.cli import MtpEdgeExportCommand

REGISTER_COMMANDS = [(MtpEdgeExportCommand, ExportCommand)]
