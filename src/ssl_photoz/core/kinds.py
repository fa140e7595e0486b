"""The model kinds: every model whose predictions the pipeline scores, described once.

A kind is one row of ``metrics.tsv``'s ``kind`` column and the prefix of its prediction files
(``results/predictions/<name>_f<fraction>[_s<seed>].parquet``). The rules
(``workflow/rules/common.smk``: the training runs, the prediction files, the training summaries;
``evaluate.smk``: which kinds the ``predict`` and ``baseline_colours`` rules serve), the figures,
``summary.md``, the galaxy explorer and ``scripts/science_report.py`` read this registry, so
adding a kind is one :class:`Kind` in ``KINDS`` plus the rule (and module) that makes its
predictions. A catalogue baseline's rule is ``baseline_colours`` whatever the baseline: its
module is in ``ssl_photoz.baselines`` and the config key ``baselines`` selects it
(:func:`selected`).

Each fine-tuning arm (``ssl_photoz.core.arms``) is a kind of its own, made from its arm: the
paper's (``full``) keeps the name ``finetune``. An arm kind is selected where the config's
``finetune.arms`` lists it. Its texts say "self-supervised", not a method: the pretraining
method is a config choice (``pretrain.method``), which summary.md's recipe table names.

Comparisons the paper makes between two particular kinds (the label-efficiency factor: how many
more labels ``SUPERVISED`` needs to match ``SELF_SUPERVISED``) name them by the constants below.

Only the standard library here: the Snakefile imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssl_photoz.core import arms

__all__ = [
    "CATALOGUE_BASELINE",
    "KINDS",
    "SELF_SUPERVISED",
    "SUPERVISED",
    "Kind",
    "get",
    "kind_of",
    "names",
    "selected",
    "table_order",
]

IMAGE, CATALOGUE = "image", "catalogue"


@dataclass(frozen=True)
class Kind:
    """One model kind.

    ``name``: metrics' ``kind`` and the prediction files' prefix; ``label``: the figures' legend
    and panel titles; ``summary_name``: the method as summary.md's tables print it;
    ``fraction_column``: its column header in summary.md's table over label fractions;
    ``report_name``: its name in scripts/science_report.py (docs/science.md); ``colour`` and
    ``marker``: how the figures draw it; ``dodge``: the factor its points are shifted by along
    the label-fraction axis, so that kinds at one fraction stand side by side.
    ``rule``: the Snakemake rule writing its predictions; ``train_rule``: the rule training its
    models, one per label fraction and seed in ``results/models/<name>/f<fraction>_s<seed>/``
    (None for a baseline fitted inside ``rule``); ``section``: the config section of its recipe.
    ``seeds``: one run per (label fraction, seed) of ``labels`` (else one per label fraction);
    ``pdf``: its predictions carry a redshift PDF (PIT, CRPS and coverage are scored);
    ``family``: ``"image"`` (a network on the cut-outs) or ``"catalogue"`` (a baseline on the
    catalogue's photometry); ``predicts``: how it predicts, in words; ``table_rank``: its place
    in summary.md's tables (smallest first); ``arm``: the fine-tuning arm it is (None: no arm).
    """

    name: str
    label: str
    summary_name: str
    fraction_column: str
    report_name: str
    colour: str
    marker: str
    rule: str
    train_rule: str | None
    section: str
    seeds: bool
    pdf: bool
    family: str
    predicts: str
    table_rank: int
    dodge: float = 1.0
    arm: str | None = None

    def __post_init__(self):
        if self.family not in (IMAGE, CATALOGUE):
            raise ValueError(f"kind {self.name!r}: family {self.family!r} is not image/catalogue")
        if self.train_rule is not None and not self.seeds:
            raise ValueError(
                f"kind {self.name!r}: a trained kind has a model per fraction and seed"
            )

    @property
    def image(self) -> bool:
        return self.family == IMAGE

    def stem(self, fraction, seed=None) -> str:
        """The prediction file's name without ``.parquet`` (and metrics' ``model``)."""
        if self.seeds:
            return f"{self.name}_f{fraction}_s{seed}"
        return f"{self.name}_f{fraction}"

    def runs(self, labels: dict) -> list[tuple[float, int | None]]:
        """(fraction, seed) of every run of the config section ``labels`` (seed None: unseeded)."""
        if self.seeds:
            from ssl_photoz.core.config import label_runs

            return label_runs(labels)
        return [(fraction, None) for fraction in labels["fractions"]]


# How each fine-tuning arm's kind is drawn and ranked: (colour, marker, dodge, table rank).
_ARM_STYLE = {
    "full": ("tab:blue", "o", 1 / 1.04, 1),
    "lpft": ("tab:purple", "D", 1 / 1.08, 2),
    "frozen": ("tab:cyan", "v", 1 / 1.12, 3),
}


def _arm_kind(arm: arms.Arm) -> Kind:
    colour, marker, dodge, rank = _ARM_STYLE[arm.name]
    paper = arm.name == "full"  # the paper's arm keeps the names its tables always had
    return Kind(
        name=arm.kind,
        label=f"self-supervised + {arm.words}",
        summary_name="ours, self-supervised + fine-tuning"
        if paper
        else f"ours, self-supervised + {arm.words}",
        fraction_column="SSL + fine-tune sigma_MAD" if paper else f"SSL {arm.name} sigma_MAD",
        report_name="SSL + FT" if paper else f"SSL {arm.name}",
        colour=colour,
        marker=marker,
        dodge=dodge,
        rule="predict",
        train_rule="finetune",
        section="finetune",
        seeds=True,
        pdf=True,
        family=IMAGE,
        predicts=f"the self-supervised backbone ({arm.words}: arm {arm.name}) as a 180-bin "
        "redshift classifier; z_p = E(z) of its PDF",
        table_rank=rank,
        arm=arm.name,
    )


# The order is the figures' and the explorer's: the self-supervised networks first.
KINDS: tuple[Kind, ...] = (
    *(_arm_kind(arm) for arm in arms.ARMS),
    Kind(
        name="supervised",
        label="supervised (from scratch)",
        summary_name="ours, supervised",
        fraction_column="supervised sigma_MAD",
        report_name="supervised CNN",
        colour="tab:orange",
        marker="o",
        dodge=1.04,
        rule="predict",
        train_rule="supervised",
        section="supervised",
        seeds=True,
        pdf=True,
        family=IMAGE,
        predicts="the same classifier trained from scratch on the labels; z_p = E(z) of its PDF",
        table_rank=0,
    ),
    Kind(
        name="colours_knn",
        label="colours kNN",
        summary_name="ours, colours 10-NN",
        fraction_column="colours 10-NN sigma_MAD (seed 0's labels)",
        report_name="colours 10-NN",
        colour="tab:green",
        marker="s",
        rule="baseline_colours",
        train_rule=None,
        section="baseline_colours",
        seeds=False,
        pdf=False,
        family=CATALOGUE,
        predicts="mean z_spec of the 10 nearest training galaxies in dereddened "
        "(r, u-g, g-r, r-i, i-z), on the image models' labels of that fraction (seed 0's)",
        table_rank=4,
    ),
    Kind(
        name="colours_mlp",
        label="colours MLP",
        summary_name="ours, colours MLP (180-bin PDF)",
        fraction_column="colours MLP sigma_MAD (seed 0's labels)",
        report_name="colours MLP",
        colour="tab:red",
        marker="P",
        rule="baseline_colours",
        train_rule=None,
        section="baseline_colours_mlp",
        seeds=False,
        pdf=True,
        family=CATALOGUE,
        predicts="a multi-layer perceptron classifying dereddened (r, u-g, g-r, r-i, i-z) into "
        "the networks' redshift bins, on the image models' labels of that fraction (seed 0's); "
        "z_p = E(z) of its PDF",
        table_rank=5,
    ),
)

# The label-efficiency comparison: labels SUPERVISED needs to match SELF_SUPERVISED.
SELF_SUPERVISED = "finetune"
SUPERVISED = "supervised"
# The catalogue baseline that issue 13's targets (scripts/science_report.py) compare with.
CATALOGUE_BASELINE = "colours_knn"


def get(name: str) -> Kind:
    """The registered kind ``name``; a KeyError naming the registered ones otherwise."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(f"model kind {name!r} is not registered (ssl_photoz.core.kinds: {names()})")


def names(**where) -> list[str]:
    """The registered kinds' names in registry order, those whose fields equal ``where``
    (e.g. ``names(rule="predict")``, ``names(pdf=True)``, ``names(family="image")``)."""
    return [k.name for k in KINDS if all(getattr(k, f) == v for f, v in where.items())]


def selected(config: dict) -> list[Kind]:
    """The kinds a run of ``config`` predicts and scores, in registry order: the supervised
    network, the fine-tuning arms its ``finetune.arms`` lists and the catalogue baselines its
    key ``baselines`` names (a registered arm or baseline it does not name is neither made nor
    expected)."""
    chosen = config["baselines"]
    unknown = [name for name in chosen if name not in names(family=CATALOGUE)]
    if unknown:
        raise KeyError(
            f"config key baselines: {unknown} not registered catalogue baselines "
            f"(ssl_photoz.core.kinds: {names(family=CATALOGUE)})"
        )
    arms_run = config["finetune"]["arms"]
    return [
        k for k in KINDS if (k.image and (k.arm is None or k.arm in arms_run)) or k.name in chosen
    ]


def table_order() -> list[Kind]:
    """The kinds in summary.md's table order."""
    return sorted(KINDS, key=lambda k: k.table_rank)


def kind_of(model: str) -> Kind | None:
    """The kind of a model name or prediction file stem (``finetune_f1.0_s0``), or None: the
    longest registered name it equals or begins with, followed by ``_``."""
    found = [k for k in KINDS if model == k.name or model.startswith(k.name + "_")]
    return max(found, key=lambda k: len(k.name)) if found else None
