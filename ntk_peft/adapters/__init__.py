"""Adapter families on one protocol (see ../shared/DESIGN.md, "Adapter protocol").

`apply_adapter(model, "lora8")` wraps the targeted Linear layers and returns
an `AdapterHandle`; `parse_spec` reads the spec grammar shared by the CLI,
kernels and result files. Each family is one entry of the registry
(`register_adapter_family`; the built-in ones in `families`).
"""

from ntk_peft.adapters import families  # noqa: F401  (registers the built-in families)
from ntk_peft.adapters.base import AdaptedLinear
from ntk_peft.adapters.cp import CPAdapter, CPFactors
from ntk_peft.adapters.handle import (
    AdapterHandle,
    ShiftedLinear,
    apply_adapter,
    fold_adapter,
    input_feature_norms,
    load_adapter,
)
from ntk_peft.adapters.lora import LoRAAdapter
from ntk_peft.adapters.lorma import LoRMAPiAdapter, LoRMAPlusAdapter, inflated_matrix
from ntk_peft.adapters.monarch import MonarchAdapter
from ntk_peft.adapters.registry import (
    FAMILIES,
    AdapterFamily,
    BuildContext,
    get_family,
    register_adapter_family,
    valid_forms,
)
from ntk_peft.adapters.rowcol import ColAdapter, RandomEntriesAdapter, RowAdapter, select_indices
from ntk_peft.adapters.scaling import BiasAdapter, IA3Adapter
from ntk_peft.adapters.spec import SELECTIONS, AdapterSpec, parse_spec
from ntk_peft.adapters.targets import resolve_targets

__all__ = [
    "FAMILIES",
    "SELECTIONS",
    "AdaptedLinear",
    "AdapterFamily",
    "AdapterHandle",
    "AdapterSpec",
    "BiasAdapter",
    "BuildContext",
    "CPAdapter",
    "CPFactors",
    "ColAdapter",
    "IA3Adapter",
    "LoRAAdapter",
    "LoRMAPiAdapter",
    "LoRMAPlusAdapter",
    "MonarchAdapter",
    "RandomEntriesAdapter",
    "RowAdapter",
    "ShiftedLinear",
    "apply_adapter",
    "fold_adapter",
    "get_family",
    "inflated_matrix",
    "input_feature_norms",
    "load_adapter",
    "parse_spec",
    "register_adapter_family",
    "resolve_targets",
    "select_indices",
    "valid_forms",
]
