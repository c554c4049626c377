"""The idle phase's matched requests: one prompt length per group, different texts."""

from __future__ import annotations

from benchmarks.load.workload import RequestSource, WorkloadSpec
from runtime.demo import build_demo_model
from transformer.tokenizer import TextTokenizer


def test_matched_groups_share_lengths_but_not_texts():
    source = RequestSource(TextTokenizer(build_demo_model("small")), WorkloadSpec(), seed=3)
    groups = source.take_matched(12, 3)
    assert len(groups) == 12 and all(len(group) == 3 for group in groups)
    exact = 0
    for group in groups:
        lengths = [len(request.prompt_ids) for request in group]
        assert max(lengths) - min(lengths) <= 1
        exact += len(set(lengths)) == 1
        assert len({request.prompt for request in group}) == 3
        assert len({request.max_tokens for request in group}) == 1
    assert exact >= 10
