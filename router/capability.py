"""Capability: a request the router places goes only to a target that can serve it. A chat needs a
model with a chat template (a base model has none: `chat: false` in its target's config), so when
the policy or a route hint picks a target that cannot serve a chat, the chat goes to the other
target and the decision says why. A chat that names its model goes where it says, and gets that
model's own answer (its transformer's 400)."""

from __future__ import annotations

import dataclasses

from kserve.errors import InvalidInput

from router.config import Targets
from router.policy import Decision


def placed(decision: Decision, targets: Targets, chat: bool) -> Decision:
    """`decision`, moved to the other target when its own cannot serve the request (a `chat`);
    InvalidInput when neither can."""
    chosen = targets.of(decision.route)
    if chosen.serves(chat):
        return decision
    other = targets.of(decision.route.other)
    if not other.serves(chat):
        raise InvalidInput(f"neither {chosen.model} nor {other.model} serves chat (their targets say chat: false); "
                           "send a plain prompt to the completions API")
    return dataclasses.replace(decision, route=decision.route.other, capability=f"{chosen.model} serves no chat")
