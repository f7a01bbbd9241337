"""The options of one eval task beyond the retrieval eval's shared ones (modeling/eval_options.py), defined once
and torch-free: `clipforge eval`'s flags are built from these fields (eval/cli.py: add_fields) and a suite
entry's keys are the same fields (eval/tasks.py's TaskSpec extends TaskOptions and ProbeDataOptions).
"""
from dataclasses import dataclass
from typing import Optional

from clipforge.dataclass_cli import option


@dataclass
class TaskOptions:
    """What a task reads of its data: `clipforge eval`'s flags (eval/cli.py builds them from these fields) and a
    suite entry's keys (TaskSpec extends it), so each default and help text is written once."""
    split: str = option("test", "wds / ImageFolder split to evaluate (default test; linear probe: tested)")
    label_key: str = option("label", "classification: the KEY.json field holding the class (name, or index into "
                                     "--classnames); KEY.cls is used when the field is absent")
    classnames: Optional[str] = option(None, "classification: class names file (one per line, JSON list or "
                                             "{index: name}); default: the sorted distinct label names")
    templates: Optional[str] = option(None, "classification: prompt set (simple, imagenet7, cifar) or a file of "
                                            "templates with {c} (default: the dataset's "
                                            "zeroshot_classification_templates.txt, else imagenet7)")


@dataclass
class ProbeDataOptions:
    """The linear probe's training and validation data (flags in --help's linear probe group)."""
    train_data: Optional[str] = option(None, "training images (default: --data's --train-split)")
    train_split: str = option("train", "the split of --data the probe trains on without --train-data")
    val_data: Optional[str] = option(None, "validation images that choose the weight decay")
    val_split: Optional[str] = option(None, "or a split of --data that does")
    val_proportion: float = option(0.2, "without a val split: this share of train does (0: no sweep, weight "
                                        "decay 0)")


@dataclass
class ProbeConfig:
    """The probe's training; the option() fields are `clipforge eval`'s flags (CLIP_benchmark's --fewshot_lr,
    --fewshot_epochs, --seed, --fewshot_k spellings too)."""
    lr: float = option(0.1, "the probe's learning rate", "--fewshot-lr")
    epochs: int = option(10, "the probe's training epochs", "--fewshot-epochs")
    batch_size: int = 64  # the CLI's --batch-size (a suite's probe_batch_size)
    seed: int = option(0, "the probe's random seed")
    fewshot_k: int = option(-1, "training samples per class (-1: all)")
