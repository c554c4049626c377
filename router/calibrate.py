"""Calibrate the router's threshold to a share of large-model traffic, as RouteLLM does.
Score a sample of prompts like the ones the router will see, take the (1 - share) quantile of the
scores as the threshold, and write it into the router's YAML config (`policy.threshold` only).

    python -m router.calibrate router/data/calibration_prompts.jsonl --large_share 0.3

The prompts file has one JSON object per line: `prompt` (a string) or `messages` (a chat),
optionally `max_tokens` and a `category` that the report breaks the result down by."""

from __future__ import annotations

import argparse
import json
import re
import sys
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from router.cli import CONFIG_FLAG, config_flag_hidden_from_kserve
from router.features import TokenCounter, TokenizerError
from router.policy import SCORE_DECIMALS
from router.schemas import Instance

with config_flag_hidden_from_kserve():
    from router.config import ConfigError, load_config, parse_config
    from router.learned_policy import LearnedModelError, load_policy
    from serving.errors import describe_validation_errors

DEFAULT_CONFIG = "router/router.yaml"

_POLICY_BLOCK = re.compile(r"^policy:\s*(#.*)?$")
_THRESHOLD_LINE = re.compile(r"^(?P<key>\s+threshold:\s*)(?P<value>[^\s#]+)(?P<rest>.*)$")


class CalibrationError(Exception):
    """The prompts or the config cannot be used: the message says where."""


def read_prompts(path: Path) -> list[Instance]:
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompts.append(Instance.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{path} line {number}: not JSON: {exc}") from None
        except ValidationError as exc:
            raise CalibrationError(f"{path} line {number}: {describe_validation_errors(exc.errors())}") from None
    if not prompts:
        raise CalibrationError(f"{path}: no prompts")
    return prompts


def choose_threshold(scores: Sequence[float], large_share: float) -> float:
    """The threshold that sends `large_share` of `scores` to the large model (score >= threshold),
    or as close to it as ties allow. Thresholds are cut halfway between neighbouring distinct
    scores, so a score a little off a calibration prompt's lands on the same side."""
    target = large_share * len(scores)
    ascending = sorted(scores)
    distinct = sorted(set(scores), reverse=True)
    # Candidate cuts from "none large" (above the top score, when there is room) to "all large".
    cuts = [_between(distinct[0], 1.0)] if distinct[0] < 1.0 else []
    cuts += [_between(lower, higher) for higher, lower in zip(distinct, distinct[1:])]
    cuts.append(distinct[-1])
    # The first of equally good cuts is the highest threshold: the cheaper choice.
    return min(cuts, key=lambda cut: abs(len(ascending) - bisect_left(ascending, cut) - target))


def _between(lower: float, higher: float) -> float:
    """A short decimal in (lower, higher], near the middle."""
    middle = (lower + higher) / 2
    for decimals in range(2, SCORE_DECIMALS + 3):
        rounded = round(middle, decimals)
        if lower < rounded <= higher:
            return rounded
    return higher


def write_threshold(config_path: Path, threshold: float) -> bool:
    """Set `policy.threshold` in the YAML file and change nothing else. Returns whether the file's
    comments and layout were kept: they are when `policy` is a block with a `threshold:` line;
    otherwise the file is rewritten from its parsed YAML (keys and their order kept)."""
    text = config_path.read_text()
    edited = _replace_threshold_line(text, threshold)
    kept_layout = edited is not None
    if edited is None:
        data = yaml.safe_load(text) or {}
        data["policy"] = {**(data.get("policy") or {}), "threshold": threshold}
        edited = yaml.safe_dump(data, sort_keys=False)
    # Checked before writing, so that a file the edit got wrong is never left behind.
    if parse_config(yaml.safe_load(edited), str(config_path)).policy.threshold != threshold:
        raise CalibrationError(f"{config_path}: the edited file does not read back with threshold {threshold}")
    config_path.write_text(edited)
    return kept_layout


def _replace_threshold_line(text: str, threshold: float) -> str | None:
    """The text with the threshold line of the top-level `policy:` block replaced, or None when
    the file has no such line."""
    lines = text.split("\n")
    in_policy = False
    child_indent = None
    for index, line in enumerate(lines):
        if _POLICY_BLOCK.match(line):
            in_policy = True
            continue
        if not in_policy or not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            return None
        child_indent = child_indent or indent
        match = _THRESHOLD_LINE.match(line)
        if indent == child_indent and match:
            value = str(threshold)
            lines[index] = match["key"] + value + _keep_comment_column(match, value)
            return "\n".join(lines)
    return None


def _keep_comment_column(match: re.Match[str], new_value: str) -> str:
    """What follows the old value, with its comment (if any) kept in the same column."""
    rest = match["rest"]
    comment = rest.lstrip(" ")
    if not comment.startswith("#"):
        return rest
    spaces = len(rest) - len(comment) + len(match["value"]) - len(new_value)
    return " " * max(1, spaces) + comment


def report(prompts: Sequence[Instance], scores: Sequence[float], threshold: float) -> str:
    """How many prompts the threshold sends to the large model, overall and by category."""
    large = [score >= threshold for score in scores]
    lines = [f"threshold {threshold}: {sum(large)} of {len(scores)} prompts "
             f"({100 * sum(large) / len(scores):.1f} %) go to the large model"]
    categories = [(prompt.model_extra or {}).get("category") for prompt in prompts]
    if any(categories):
        totals = Counter(categories)
        to_large = Counter(category for category, is_large in zip(categories, large) if is_large)
        width = max(len(str(category)) for category in totals)
        lines += [f"  {str(category):<{width}}  {to_large[category]:>4} of {totals[category]:>4} large"
                  for category in sorted(totals, key=lambda category: -to_large[category] / totals[category])]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m router.calibrate",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("prompts", type=Path, help="JSON lines: prompt or messages, optionally max_tokens, category")
    parser.add_argument("--large_share", type=float, required=True,
                        help="the share of prompts to send to the large model, in [0, 1]")
    parser.add_argument(CONFIG_FLAG, type=Path, default=Path(DEFAULT_CONFIG),
                        help="the router config whose policy.threshold is set (its weights or learned model score)")
    parser.add_argument("--tokenizer_dir", default=None,
                        help="count prompt tokens with this tokenizer, as the router will (unset: estimate)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if not 0.0 <= args.large_share <= 1.0:
        parser.error(f"--large_share must be in [0, 1], got {args.large_share}")
    try:
        prompts = read_prompts(args.prompts)
        config = load_config(args.config)
        counter = TokenCounter(args.tokenizer_dir)
        policy = load_policy(config.policy, counter)
        scores = [policy.decide(prompt.routing_request()).score for prompt in prompts]
        threshold = choose_threshold(scores, args.large_share)
        kept_layout = write_threshold(args.config, threshold)
    except (CalibrationError, ConfigError, TokenizerError, LearnedModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"scored {len(scores)} prompts; prompt tokens counted by {counter.method}")
    print(report(prompts, scores, threshold))
    layout = "" if kept_layout else " (rewritten from its YAML: comments were not kept)"
    print(f"wrote policy.threshold: {threshold} into {args.config}{layout}")


if __name__ == "__main__":
    main()
