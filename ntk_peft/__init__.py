"""ntk_peft: why parameter-efficient fine-tuning works, through kernels and matrix structure.

Stable entry points: `load_model`, `label_logits`, and `ntk_peft.tasks`
(`load_split`, `make_batch`).
"""

from ntk_peft.errors import UserError
from ntk_peft.models import label_logits, load_model

__version__ = "0.1.0"

__all__ = ["UserError", "__version__", "label_logits", "load_model"]
