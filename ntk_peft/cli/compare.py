"""``ntk-compare``: the RoCoFT eNTK study (kernels, kernel logistic regression).

Not built yet: it arrives with the ntk-compare issue, after the adapters and
the eNTK engine. Until then it says so and exits with status 2.
"""

from __future__ import annotations

import sys

from ntk_peft.errors import UserError
from ntk_peft.cli.common import run_cli


def main(argv: list[str] | None = None) -> int:
    raise UserError("ntk-compare is not built yet (it needs the adapters and the eNTK engine); "
                    "for now run `ntk-peft zeroshot --task sst2`")


def entry() -> None:
    sys.exit(run_cli(main))
