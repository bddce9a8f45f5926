"""The 15 few-shot tasks of LM-BFF: files, labels, templates and label words.

Templates use a small format (see `ntk_peft.tasks.templates`): ``{text_a}`` and
``{text_b}`` are the example's texts, ``{mask}`` is the slot of the label word,
and label words carry their own leading space (`" great"`).

Masked-LM templates and label words are LM-BFF's manual ones (Gao et al. 2021,
table 1); e.g. SST-2 is ``<s> {sentence} It was <mask> . </s>`` with
``great``/``terrible``. Causal-LM templates end at the label word; their wording
was chosen by zero-shot accuracy of SmolLM2-135M-Instruct (see the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ntk_peft.errors import UserError

# Where the evaluation set comes from.
EVAL_FROM_TEST = "test"  # k-shot/<TASK>/16-<seed>/test.*
EVAL_FROM_POOL_DEV = "pool-dev"  # pools/<TASK>/dev.json (MNLI, SNLI, QQP)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the toolkit knows about one task.

    Attributes:
        name: canonical LM-BFF spelling, also the data folder name (``SST-2``).
        aliases: lower-case names accepted everywhere (``sst2``).
        labels: raw label strings as spelled in the data files, in class order;
            class index c is ``labels.index(raw)``.
        file_format: ``tsv-header``, ``tsv-cola`` or ``csv``.
        text_columns: header names of text_a (and text_b) for ``tsv-header``.
        label_column: header name of the label for ``tsv-header``.
        dev_file: stem of the k-shot dev file (MNLI: ``dev_matched``).
        eval_source: EVAL_FROM_TEST or EVAL_FROM_POOL_DEV.
        mlm_template, mlm_label_words: LM-BFF's manual prompt for masked LMs.
        causal_template, causal_label_words: prompt for causal LMs ({mask} last).
        regression_threshold: STS-B only: a score >= threshold is class 1.
        label_is_last_column: MNLI/SNLI rows carry one to five annotator labels
            before gold_label, so rows may be wider than the header; the gold
            label is then the last column (as LM-BFF reads it).
        source: a user's task (`ntk_peft.tasks.custom`): where its files are; None for LM-BFF's.
    """

    name: str
    aliases: tuple[str, ...]
    labels: tuple[str, ...]
    file_format: str
    mlm_template: str
    mlm_label_words: tuple[str, ...]
    causal_template: str
    causal_label_words: tuple[str, ...]
    text_columns: tuple[str, ...] = ()
    label_column: str = ""
    dev_file: str = "dev"
    eval_source: str = EVAL_FROM_TEST
    regression_threshold: float | None = None
    label_is_last_column: bool = False
    notes: str = field(default="", compare=False)
    source: object = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def extension(self) -> str:
        return "csv" if self.file_format == "csv" else "tsv"

    def label_index(self, raw: object) -> int:
        """Class index of a label as spelled in a data file (str, int or score)."""
        text = str(raw).strip()
        if self.regression_threshold is not None:
            return int(float(text) >= self.regression_threshold)
        if text not in self.labels:
            raise KeyError(text)
        return self.labels.index(text)


_SENTIMENT_MLM = "{text_a} It was{mask} ."
_REVIEW_CAUSAL = "Review: {text_a}\nSentiment:{mask}"
_NLI_MLM = "{text_a|nopunct} ?{mask} , {text_b|lowerfirst}"
_PARA_MLM = "{text_a}{mask} , {text_b|lowerfirst}"

TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="SST-2", aliases=("sst2", "sst-2"), labels=("0", "1"),
        file_format="tsv-header", text_columns=("sentence",), label_column="label",
        mlm_template=_SENTIMENT_MLM, mlm_label_words=(" terrible", " great"),
        causal_template=_REVIEW_CAUSAL, causal_label_words=(" negative", " positive"),
    ),
    TaskSpec(
        name="sst-5", aliases=("sst5", "sst-5"), labels=("0", "1", "2", "3", "4"),
        file_format="csv",
        mlm_template=_SENTIMENT_MLM,
        mlm_label_words=(" terrible", " bad", " okay", " good", " great"),
        causal_template=_REVIEW_CAUSAL,
        causal_label_words=(" terrible", " bad", " okay", " good", " great"),
    ),
    TaskSpec(
        name="mr", aliases=("mr",), labels=("0", "1"), file_format="csv",
        mlm_template=_SENTIMENT_MLM, mlm_label_words=(" terrible", " great"),
        causal_template=_REVIEW_CAUSAL, causal_label_words=(" negative", " positive"),
    ),
    TaskSpec(
        name="cr", aliases=("cr",), labels=("0", "1"), file_format="csv",
        mlm_template=_SENTIMENT_MLM, mlm_label_words=(" terrible", " great"),
        causal_template=_REVIEW_CAUSAL, causal_label_words=(" negative", " positive"),
    ),
    TaskSpec(
        name="mpqa", aliases=("mpqa",), labels=("0", "1"), file_format="csv",
        mlm_template=_SENTIMENT_MLM, mlm_label_words=(" terrible", " great"),
        causal_template="Phrase: {text_a}\nSentiment:{mask}",
        causal_label_words=(" negative", " positive"),
    ),
    TaskSpec(
        name="subj", aliases=("subj",), labels=("0", "1"), file_format="csv",
        mlm_template="{text_a} This is{mask} .",
        mlm_label_words=(" subjective", " objective"),
        causal_template="Sentence: {text_a}\nIs this a subjective opinion or an objective fact? It is{mask}",
        causal_label_words=(" subjective", " objective"),
    ),
    TaskSpec(
        name="trec", aliases=("trec",), labels=("0", "1", "2", "3", "4", "5"),
        file_format="csv",
        mlm_template="{mask} : {text_a}",
        mlm_label_words=(" Description", " Entity", " Expression", " Human", " Location", " Number"),
        causal_template="Question: {text_a}\nThe answer to this question is a{mask}",
        causal_label_words=(" description", " thing", " abbreviation", " person", " place", " number"),
    ),
    TaskSpec(
        name="CoLA", aliases=("cola",), labels=("0", "1"), file_format="tsv-cola",
        mlm_template="{text_a} This is{mask} .",
        mlm_label_words=(" incorrect", " correct"),
        causal_template="Sentence: {text_a}\nIs this sentence grammatically correct? Answer:{mask}",
        causal_label_words=(" No", " Yes"),
    ),
    TaskSpec(
        name="MNLI", aliases=("mnli",), labels=("contradiction", "entailment", "neutral"),
        file_format="tsv-header", text_columns=("sentence1", "sentence2"),
        label_column="gold_label", dev_file="dev_matched", eval_source=EVAL_FROM_POOL_DEV,
        label_is_last_column=True,
        mlm_template=_NLI_MLM, mlm_label_words=(" No", " Yes", " Maybe"),
        causal_template="{text_a}\nQuestion: {text_b} Yes, No, or Maybe?\nAnswer:{mask}",
        causal_label_words=(" No", " Yes", " Maybe"),
    ),
    TaskSpec(
        name="SNLI", aliases=("snli",), labels=("contradiction", "entailment", "neutral"),
        file_format="tsv-header", text_columns=("sentence1", "sentence2"),
        label_column="gold_label", eval_source=EVAL_FROM_POOL_DEV, label_is_last_column=True,
        mlm_template=_NLI_MLM, mlm_label_words=(" No", " Yes", " Maybe"),
        causal_template="{text_a}\nQuestion: {text_b} Yes, No, or Maybe?\nAnswer:{mask}",
        causal_label_words=(" No", " Yes", " Maybe"),
    ),
    TaskSpec(
        name="QNLI", aliases=("qnli",), labels=("entailment", "not_entailment"),
        file_format="tsv-header", text_columns=("question", "sentence"), label_column="label",
        mlm_template=_NLI_MLM, mlm_label_words=(" Yes", " No"),
        causal_template="Question: {text_a}\nSentence: {text_b}\nDoes the sentence answer the question? Answer:{mask}",
        causal_label_words=(" Yes", " No"),
    ),
    TaskSpec(
        name="RTE", aliases=("rte",), labels=("entailment", "not_entailment"),
        file_format="tsv-header", text_columns=("sentence1", "sentence2"), label_column="label",
        mlm_template=_NLI_MLM, mlm_label_words=(" Yes", " No"),
        causal_template="{text_a}\nQuestion: {text_b} True or False?\nAnswer:{mask}",
        causal_label_words=(" True", " False"),
    ),
    TaskSpec(
        name="MRPC", aliases=("mrpc",), labels=("0", "1"),
        file_format="tsv-header", text_columns=("#1 String", "#2 String"), label_column="Quality",
        mlm_template=_PARA_MLM, mlm_label_words=(" No", " Yes"),
        causal_template="Sentence 1: {text_a}\nSentence 2: {text_b}\nDo both sentences mean the same thing? Answer:{mask}",
        causal_label_words=(" No", " Yes"),
    ),
    TaskSpec(
        name="QQP", aliases=("qqp",), labels=("0", "1"),
        file_format="tsv-header", text_columns=("question1", "question2"),
        label_column="is_duplicate", eval_source=EVAL_FROM_POOL_DEV,
        mlm_template=_PARA_MLM, mlm_label_words=(" No", " Yes"),
        causal_template="Question 1: {text_a}\nQuestion 2: {text_b}\nDo both questions ask the same thing? Answer:{mask}",
        causal_label_words=(" No", " Yes"),
    ),
    TaskSpec(
        name="STS-B", aliases=("stsb", "sts-b"), labels=("0", "1"),
        file_format="tsv-header", text_columns=("sentence1", "sentence2"), label_column="score",
        regression_threshold=2.5,
        mlm_template=_PARA_MLM, mlm_label_words=(" No", " Yes"),
        causal_template="Sentence 1: {text_a}\nSentence 2: {text_b}\nDo both sentences mean the same thing? Answer:{mask}",
        causal_label_words=(" No", " Yes"),
        notes="GLUE's similarity score (0-5) is split as LM-BFF does: score >= 2.5 is class 1.",
    ),
)

_BY_NAME = {alias: spec for spec in TASKS for alias in (spec.name.lower(), *spec.aliases)}
_BUILT_IN = dict(_BY_NAME)


def register_task(spec: TaskSpec, *, replace: bool = True) -> TaskSpec:
    """Make a task known by its name and aliases (e.g. a user's task from `ntk_peft.tasks.custom_task`).

    A built-in LM-BFF task cannot be replaced; a registered user's task is replaced unless ``replace`` is False.
    """
    names = (spec.name.lower(), *spec.aliases)
    for alias in names:
        if alias in _BUILT_IN:
            raise UserError(f"task name {alias!r} is a built-in LM-BFF task; give your task another name")
        if not replace and alias in _BY_NAME:
            raise UserError(f"a task named {alias!r} is registered already")
    for alias in names:
        _BY_NAME[alias] = spec
    return spec


def task_names() -> list[str]:
    """Canonical task names in registry order."""
    return [spec.name for spec in TASKS]


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a task up by canonical name or alias (case-insensitive)."""
    if isinstance(name, TaskSpec):
        return name
    spec = _BY_NAME.get(str(name).strip().lower())
    if spec is None:
        valid = ", ".join(f"{s.name} ({s.aliases[0]})" for s in TASKS)
        raise UserError(f"unknown task {name!r}; valid tasks: {valid}, or a .csv/.tsv/.jsonl file or a folder of "
                        f"them (a task of your own)")
    return spec
