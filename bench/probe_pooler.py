"""Probe of the core method (issue #3), not product code: the whole BERT pooler inside the 1% mask.

The pooler (dense + tanh between the CLS vector and the classifier) is almost never picked by the row
scores (0-1 of its 384 rows on banking77), while full finetuning adapts all of it. This ranks its rows
first, so they are spent from the same budget (0.65% of the backbone; the rest goes to the best rows),
then runs the ``clm-explore`` command line unchanged:

    CLI="python bench/probe_pooler.py" bash bench/probe_sparse.sh pooler-in-mask 0
"""

import sys

import numpy as np

import clm_explore.masks as masks

_candidate_rows = masks._candidate_rows


def _pooler_first(report, cfg):
    rows = _candidate_rows(report, cfg)
    in_pooler = np.array([name.endswith("pooler.dense.weight") for name in rows.names])[rows.matrix]
    rows.score = rows.score + in_pooler * 1e9
    return rows


masks._candidate_rows = _pooler_first
from clm_explore.cli import main  # noqa: E402  (after the patch, so the CLI selects with it)

sys.exit(main(sys.argv[1:]))
