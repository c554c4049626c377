"""The routing policy as its users see it: code, maths and multi-step prompts score higher than
chit-chat, long prompts and long requested answers push the score up, hints override, and every
decision explains its score feature by feature."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from router.features import SCANNED_CHARS_EACH_END, RoutingRequest, TokenCounter, TokenizerError
from router.policy import DEFAULT_WEIGHTS, Hint, Route, RoutingPolicy, batch_decision, parse_hint

CHIT_CHAT = ["hi!", "How are you doing today?", "Tell me a joke.", "I just adopted a puppy!"]
DEMANDING = {
    "code": "Fix this Python function, it returns None:\n```python\ndef add(a, b):\n    print(a + b)\n```",
    "maths": "Prove that the square root of 2 is irrational.",
    "multi-step": "Compare renting and buying a flat step by step, then explain why you would choose one.",
}


@pytest.fixture
def policy() -> RoutingPolicy:
    return RoutingPolicy(threshold=0.3)


def score(policy: RoutingPolicy, text: str, **fields: object) -> float:
    return policy.decide(RoutingRequest(text, **fields)).score


@pytest.mark.parametrize("kind", DEMANDING)
def test_code_maths_and_multi_step_prompts_score_above_chit_chat(policy, kind):
    assert score(policy, DEMANDING[kind]) > max(score(policy, text) for text in CHIT_CHAT)


def test_scores_lie_in_0_1_and_chit_chat_goes_small(policy):
    for text in [*CHIT_CHAT, *DEMANDING.values(), "x" * 100_000 + DEMANDING["code"] * 20]:
        assert 0.0 <= score(policy, text, max_tokens=100_000, user_turns=50) <= 1.0
    assert all(policy.decide(RoutingRequest(text)).route is Route.SMALL for text in CHIT_CHAT)


def test_longer_prompts_score_higher(policy):
    question = "What does this report say about next year's budget?\n\n"
    report = "The committee met to review spending and agreed on several changes to the plan. "
    scores = [score(policy, question + report * repeats) for repeats in (1, 10, 100, 1000)]
    assert scores == sorted(scores) and scores[0] < scores[-1]


def test_a_larger_max_tokens_scores_higher(policy):
    prompt = "Write a story about a lighthouse."
    scores = [score(policy, prompt, max_tokens=tokens) for tokens in (None, 128, 1024, 4096)]
    assert scores[0] == scores[1] < scores[2] < scores[3]


def test_a_deeper_conversation_scores_higher(policy):
    assert score(policy, "and then?", user_turns=1) < score(policy, "and then?", user_turns=6)


def test_the_score_is_the_sum_of_the_features_contributions(policy):
    decision = policy.decide(RoutingRequest(DEMANDING["code"], max_tokens=2048))
    assert {feature.name for feature in decision.features} == set(DEFAULT_WEIGHTS)
    assert decision.score == pytest.approx(sum(feature.contribution for feature in decision.features), abs=1e-4)
    explained = decision.as_dict()
    assert explained["route"] == decision.route.value and explained["threshold"] == 0.3
    contributions = [feature["contribution"] for feature in explained["features"].values()]
    assert contributions == sorted(contributions, reverse=True)
    code = explained["features"]["code"]
    assert "code block" in code["value"]
    assert code["contribution"] == pytest.approx(code["weight"] * code["activation"], abs=1e-4)
    assert explained["features"]["max_tokens"]["value"] == 2048


def test_score_at_or_above_the_threshold_goes_large():
    decision = RoutingPolicy(threshold=0.0).decide(RoutingRequest("hi"))
    assert decision.score == 0.0 and decision.route is Route.LARGE
    assert RoutingPolicy(threshold=1.0).decide(RoutingRequest(DEMANDING["code"])).route is Route.SMALL


def test_a_hint_overrides_the_policy(policy):
    to_large = policy.decide(RoutingRequest("hi"), Hint(Route.LARGE, "the x-route header"))
    assert (to_large.route, to_large.score) == (Route.LARGE, 1.0)
    assert to_large.as_dict()["features"] == {
        "hint": {"value": "large", "activation": 1.0, "weight": 1.0, "contribution": 1.0,
                 "detail": "the x-route header"}
    }
    to_small = policy.decide(RoutingRequest(DEMANDING["code"]), Hint(Route.SMALL, "`route` in the body"))
    assert (to_small.route, to_small.score) == (Route.SMALL, 0.0)


def test_hints_are_parsed_case_insensitively_and_refused_with_the_allowed_values():
    assert parse_hint(" Large ", "header") == Hint(Route.LARGE, "header")
    with pytest.raises(ValueError, match="header: the route must be 'small' or 'large', got 'medium'"):
        parse_hint("medium", "header")


def test_weights_can_be_overridden_by_feature_name():
    prompt = RoutingRequest(DEMANDING["code"])
    without_code = RoutingPolicy(0.5, {"code": 0.0}).decide(prompt)
    assert without_code.score < RoutingPolicy(0.5).decide(prompt).score
    with pytest.raises(ValueError, match="unknown feature.*cod; the features are prompt_tokens"):
        RoutingPolicy(0.5, {"cod": 1.0})
    with pytest.raises(ValueError, match="weights must be >= 0"):
        RoutingPolicy(0.5, {"code": -1.0})


def test_a_batch_goes_where_its_most_demanding_request_needs(policy):
    decisions = [policy.decide(RoutingRequest(text)) for text in ("hi", DEMANDING["code"], "thanks")]
    assert batch_decision(decisions) is decisions[1]


def test_tokens_are_estimated_without_a_tokenizer_and_the_decision_says_so(policy):
    feature = policy.decide(RoutingRequest("a" * 400)).as_dict()["features"]["prompt_tokens"]
    assert feature["value"] == 100 and feature["detail"] == "estimate (characters / 4)"


def test_tokens_are_counted_with_a_tokenizer_when_given_one(tokenizer_dir):
    text = "def routing_policy(request): return score " * 30
    policy = RoutingPolicy(0.5, token_counter=TokenCounter(tokenizer_dir))
    feature = policy.decide(RoutingRequest(text)).as_dict()["features"]["prompt_tokens"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    assert feature["detail"] == "tokenizer"
    assert feature["value"] == len(tokenizer.encode(text, add_special_tokens=False))


def test_a_prompt_counted_again_is_not_encoded_again(tokenizer_dir, monkeypatch):
    counter = TokenCounter(tokenizer_dir)
    first = counter.count("the gateway's reservation and the policy count the same prompt")
    monkeypatch.setattr(counter.tokenizer, "encode", lambda *args, **kwargs: pytest.fail("encoded again"))
    assert counter.count("the gateway's reservation and the policy count the same " + "prompt") == first


def test_a_tokenizer_directory_that_cannot_be_loaded_is_refused(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        TokenCounter(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="cannot load a tokenizer from"):
        TokenCounter(tmp_path)


# Each of these took the old marker patterns quadratic time (a lone `$` before many `^`, blank
# lines before a list marker, a `;` before a long run of spaces); at the body limit, seconds to hours.
PATHOLOGICAL_PROMPTS = {
    "unclosed LaTeX": "$" + "a^" * 60_000,
    "blank lines": "\n" * 500_000 + "x",
    "spaces after a semicolon": (";" + " " * 1000 + "x") * 500,
    "list markers without items": "1.\n\n" * 200_000,
    "a dollar on every line": "$ a = b\n" * 100_000,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", PATHOLOGICAL_PROMPTS)
def test_pathological_prompts_are_decided_from_their_bounded_window(policy, name):
    """Not timed: a prompt that still took the patterns superlinear time would hang this test
    past its timeout. The markers come from the prompt's ends, its length from the whole."""
    text = PATHOLOGICAL_PROMPTS[name]
    decision = policy.decide(RoutingRequest(text))
    window = text[:SCANNED_CHARS_EACH_END] + "\n" + text[-SCANNED_CHARS_EACH_END:]
    windowed = {feature.name: feature.measurement.value for feature in policy.decide(RoutingRequest(window)).features}
    measured = {feature.name: feature.measurement.value for feature in decision.features}
    assert {name: value for name, value in measured.items() if name != "prompt_tokens"} == \
        {name: value for name, value in windowed.items() if name != "prompt_tokens"}
    assert measured["prompt_tokens"] == -(-len(text) // 4)
