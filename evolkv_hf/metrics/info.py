"""The ``evaluate`` metadata shared by the metrics of :mod:`evolkv_hf.metrics`."""

from __future__ import annotations

import datasets
import evaluate

REFERENCE_LIST_FEATURES = datasets.Features(
    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
)
"""One prediction string and a list of accepted reference strings per sample."""

INPUTS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers, one per sample.
    references (`list` of `list` of `str`): accepted answers of each sample (at least one).
Returns:
    `dict`: {name}: the mean score over samples, from 0 to 100.
"""

RULER_CITATION = """@article{hsieh2024ruler,
  title={RULER: What's the Real Context Size of Your Long-Context Language Models?},
  author={Hsieh, Cheng-Ping and Sun, Simeng and Kriman, Samuel and Acharya, Shantanu and Rekesh, Dima and Jia, Fei and Zhang, Yang and Ginsburg, Boris},
  journal={arXiv preprint arXiv:2404.06654},
  year={2024}
}"""

SQUAD_CITATION = """@inproceedings{rajpurkar2016squad,
  title={SQuAD: 100,000+ Questions for Machine Comprehension of Text},
  author={Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle={EMNLP},
  year={2016}
}"""


def metric_info(name: str, description: str, citation: str = "") -> evaluate.MetricInfo:
    """``MetricInfo`` of a reference-list metric called ``name``."""
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=INPUTS_DESCRIPTION.format(name=name),
        features=REFERENCE_LIST_FEATURES,
        module_type="metric",
    )
