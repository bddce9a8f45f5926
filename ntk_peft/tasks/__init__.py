"""Few-shot tasks: the 15 LM-BFF tasks and your own (`custom_task`), data loading, k-shot splits, prompts."""

from ntk_peft.tasks.batch import iter_batches, make_batch, prompt_mode, slice_batch, to_device
from ntk_peft.tasks.custom import custom_task, is_custom_path
from ntk_peft.tasks.data import Example, Split, load_split, resolve_data_dir, sample_kshot
from ntk_peft.tasks.registry import TASKS, TaskSpec, get_task, register_task, task_names
from ntk_peft.tasks.templates import CAUSAL, MASKED, Prompt, parse_template, resolve_prompt

__all__ = [
    "CAUSAL",
    "MASKED",
    "TASKS",
    "Example",
    "Prompt",
    "Split",
    "TaskSpec",
    "custom_task",
    "get_task",
    "is_custom_path",
    "iter_batches",
    "load_split",
    "make_batch",
    "parse_template",
    "prompt_mode",
    "register_task",
    "resolve_data_dir",
    "resolve_prompt",
    "sample_kshot",
    "slice_batch",
    "task_names",
    "to_device",
]
