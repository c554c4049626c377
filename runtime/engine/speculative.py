"""Speculative decoding: a small draft model proposes up to K tokens per sequence, the target
verifies them all in one forward pass, and rejection sampling keeps the target's distribution.

The draft runs in the same engine on its own paged KV cache (its own ModelRunner and
BlockManager, as many blocks as the target's, no prefix caching). Its cache lags the target's
and catches up lazily: the first draft pass of a step feeds it every token it has not seen
(the whole prompt the first time, one or two tokens after a speculative step, more after
steps that decoded normally), so preemption or a normal step needs nothing but freeing.

A step speculates only when it holds decodes only, fewer than `speculative_disable_by_batch_size`
of them, and the KV caches have room for every draft token; otherwise it decodes normally, and so
does every request the speculative path does not serve (DESIGN: refuse or fall back, never wrong
output): one with penalties, a structured output, unmet min_tokens, or a seed with temperature > 0
(whose tokens must depend on its seed alone, however the batch around it speculates). Those rows
still ride the step's verification pass, as one-token chunks sampled by the normal sampler.

Acceptance (Leviathan et al. / Chen et al.): draft token x, drawn from the draft's distribution q
(after the request's bias, temperature, min-p, top-k and top-p), is kept with probability
min(1, p(x) / q(x)) under the target's distribution p at that position; the first rejected one
is replaced by a draw from norm(max(0, p - q)); when all are kept, a bonus token is drawn from p
at the next position. A greedy row's p and q are one-hot, so it keeps exactly the target's argmax.

After verification the target's KV is kept up to the last accepted token and the draft's up to
the last one it computed among them; the blocks past those are given back (BlockManager.trim).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .block_manager import BlockManager
from .config import ConfigError, EngineConfig
from .model_loader import LoadedModel
from .model_runner import ModelRunner, TokenChunk
from .penalties import apply_bias_and_penalties
from .sampler import draw, sampling_probs
from .scheduler import ScheduledSequence
from .sequence import Sequence


@dataclass(slots=True, eq=False)
class DraftSequence:
    """The draft model's KV of one request (BlockManager reads these three fields)."""

    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_hashed_blocks: int = 0


@dataclass(slots=True)
class AcceptedTokens:
    """What one speculating sequence gets from a step: accepted draft tokens, then the corrected
    or bonus one; their logprobs under the target when the request asked."""

    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None


@dataclass(slots=True)
class SpeculativeStep:
    """A verified step: the speculating sequences and their tokens; the others and their logits
    (one row each), for the normal sampler."""

    speculated: list[Sequence]
    accepted: list[AcceptedTokens]
    regular: list[Sequence]
    regular_logits: torch.Tensor


@dataclass(slots=True)
class SpeculativeStats:
    """Counters with vLLM's meaning: proposals (one per sequence and step), draft tokens
    proposed, and those the target accepted."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0


class SpeculativeDecoder:
    def __init__(
        self,
        draft: LoadedModel,
        config: EngineConfig,
        target_runner: ModelRunner,
        target_blocks: BlockManager,
        target_vocab_size: int,
        max_model_len: int,
    ) -> None:
        if draft.vocab_size != target_vocab_size:
            raise ConfigError(
                f"the draft model {config.speculative_model} has a vocabulary of {draft.vocab_size} tokens but the "
                f"target {config.model} has {target_vocab_size}: speculative decoding needs both to share one "
                "tokenizer and vocabulary size"
            )
        self.num_speculative_tokens = config.num_speculative_tokens
        self.disable_by_batch_size = config.speculative_disable_by_batch_size
        self.max_model_len = max_model_len
        self.target_runner = target_runner
        self.target_blocks = target_blocks
        self.runner = ModelRunner(draft, config.block_size, config.attention_backend, max_model_len)
        self.runner.allocate_kv_cache(target_blocks.num_blocks)
        self.runner.warm_up(min(config.max_num_batched_tokens, max_model_len))
        self.block_manager = BlockManager(target_blocks.num_blocks, config.block_size, enable_prefix_caching=False)
        self.stats = SpeculativeStats()
        self._drafts: dict[Sequence, DraftSequence] = {}

    # Planning -----------------------------------------------------------------------

    def draft_length(self, seq: Sequence) -> int:
        """Draft tokens to propose for `seq` this step: 0 where it decodes normally, and never more
        than its max_tokens and max_model_len leave room for (a step adds one token beyond them)."""
        params = seq.params
        if (
            seq.grammar is not None
            or params.penalizes
            or (params.seed is not None and not params.greedy)
            or seq.num_output_tokens < params.min_tokens
        ):
            return 0
        room = min(params.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens) - 1
        return max(0, min(self.num_speculative_tokens, room))

    def plan(self, scheduled: list[ScheduledSequence]) -> list[int] | None:
        """The draft length of each scheduled sequence, with the KV slots for them allocated in
        both caches; None when this step decodes normally."""
        if len(scheduled) >= self.disable_by_batch_size:
            return None
        if any(item.num_new_tokens != 1 or not item.completes_sequence for item in scheduled):
            return None
        lengths = [self.draft_length(item.seq) for item in scheduled]
        if not any(lengths):
            return None
        speculating = [(item.seq, length) for item, length in zip(scheduled, lengths) if length]
        drafts = [self._drafts.setdefault(seq, DraftSequence()) for seq, _ in speculating]
        # The target computes the last known token and the K drafts; the draft catches up and
        # computes all but its last proposal.
        target_needs = [(seq, length + 1) for seq, length in speculating]
        draft_needs = [(draft, seq.num_tokens + length - 1 - draft.num_computed_tokens)
                       for draft, (seq, length) in zip(drafts, speculating)]
        if not (_fits(self.target_blocks, target_needs) and _fits(self.block_manager, draft_needs)):
            return None
        for seq, num_tokens in target_needs:
            self.target_blocks.allocate_slots(seq, num_tokens)
        for draft, num_tokens in draft_needs:
            self.block_manager.allocate_slots(draft, num_tokens)
        return lengths

    # Running ------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, scheduled: list[ScheduledSequence], lengths: list[int]) -> SpeculativeStep:
        """Draft, verify in one target pass, accept; leaves each sequence's computed tokens and
        both block tables at what the accepted tokens keep. Tokens are not appended here."""
        speculating = [(item.seq, length) for item, length in zip(scheduled, lengths) if length]
        regular = [item.seq for item, length in zip(scheduled, lengths) if not length]
        draft_tokens, draft_probs = self._propose(speculating)
        chunks = [
            TokenChunk(seq.tokens(seq.num_computed_tokens, seq.num_known_tokens) + tokens, seq.num_computed_tokens,
                       seq.block_table, num_logits=len(tokens) + 1)
            for (seq, _), tokens in zip(speculating, draft_tokens)
        ]
        chunks += [TokenChunk([seq.token_at(seq.num_computed_tokens)], seq.num_computed_tokens, seq.block_table)
                   for seq in regular]
        logits = self.target_runner.forward_chunks(chunks)
        num_speculative_rows = sum(length + 1 for _, length in speculating)
        accepted = self._verify(speculating, draft_tokens, draft_probs, logits[:num_speculative_rows])
        for (seq, length), tokens in zip(speculating, accepted):
            self._keep_accepted(seq, length, len(tokens.token_ids) - 1)
        for seq in regular:
            seq.num_computed_tokens += 1
            self.target_blocks.register_full_blocks(seq)
        return SpeculativeStep([seq for seq, _ in speculating], accepted, regular, logits[num_speculative_rows:])

    def _propose(self, speculating: list[tuple[Sequence, int]]) -> tuple[list[list[int]], torch.Tensor | None]:
        """Each sequence's draft tokens, and the draft's distributions they were drawn from
        [sequences, longest draft, vocab] (zero past a sequence's own length); None when every
        sequence is greedy, as its draft tokens are then the draft's argmax."""
        longest = max(length for _, length in speculating)
        all_greedy = all(seq.params.greedy for seq, _ in speculating)
        draft_tokens: list[list[int]] = [[] for _ in speculating]
        draft_probs = None
        for step in range(longest):
            rows = [row for row, (_, length) in enumerate(speculating) if length > step]
            chunks = []
            for row in rows:
                seq = speculating[row][0]
                if step == 0:
                    start = self._drafts[seq].num_computed_tokens
                    tokens = seq.tokens(start, seq.num_known_tokens)
                else:
                    start, tokens = seq.num_known_tokens + step - 1, [draft_tokens[row][-1]]
                chunks.append(TokenChunk(tokens, start, self._drafts[seq].block_table))
            seqs = [speculating[row][0] for row in rows]
            logits = self.runner.forward_chunks(chunks).float()
            apply_bias_and_penalties(logits, seqs)
            if all_greedy:
                tokens = logits.argmax(dim=-1)
            else:
                probs = sampling_probs(logits, [seq.params for seq in seqs])
                if draft_probs is None:
                    draft_probs = probs.new_zeros((len(speculating), longest, probs.shape[1]))
                draft_probs[rows, step] = probs
                tokens = draw(probs, [seq.generator for seq in seqs])
            for row, token in zip(rows, tokens.tolist()):
                draft_tokens[row].append(token)
        return draft_tokens, draft_probs

    def _verify(
        self,
        speculating: list[tuple[Sequence, int]],
        draft_tokens: list[list[int]],
        draft_probs: torch.Tensor | None,
        logits: torch.Tensor,
    ) -> list[AcceptedTokens]:
        """Rejection-sample each sequence's drafts against the target's `logits` (its K+1 rows,
        sequence after sequence)."""
        raw_logprobs = None
        if any(seq.params.logprobs for seq, _ in speculating):
            raw_logprobs = torch.log_softmax(logits.float(), dim=-1)
        row_seqs = [seq for seq, length in speculating for _ in range(length + 1)]
        # A copy: float() of float32 logits is the tensor itself, and the bias goes in in place.
        biased = logits.float().clone()
        apply_bias_and_penalties(biased, row_seqs)
        starts, offset = [], 0
        for _, length in speculating:
            starts.append(offset)
            offset += length + 1
        lengths = [length for _, length in speculating]
        if draft_probs is None:
            token_ids = greedy_accept(draft_tokens, biased.argmax(dim=-1).tolist(), starts)
        else:
            target_probs = sampling_probs(biased, [seq.params for seq in row_seqs])
            longest = draft_probs.shape[1]
            # [sequences, longest + 1, vocab]: position j of a sequence is its row start + j (padded).
            index = torch.tensor([[start + min(j, length) for j in range(longest + 1)]
                                  for start, length in zip(starts, lengths)], device=logits.device)
            token_ids = rejection_sample(target_probs[index], draft_probs,
                                         _padded(draft_tokens, longest, logits.device), lengths,
                                         [seq.generator for seq, _ in speculating])
        self.stats.num_drafts += len(speculating)
        self.stats.num_draft_tokens += sum(lengths)
        self.stats.num_accepted_tokens += sum(len(tokens) - 1 for tokens in token_ids)
        return [_accepted(tokens, seq, raw_logprobs, start) for tokens, (seq, _), start
                in zip(token_ids, speculating, starts)]

    def _keep_accepted(self, seq: Sequence, length: int, num_accepted: int) -> None:
        """The target's KV now holds the sequence up to its last accepted draft token, the draft's
        up to the last of those it computed itself; the slots past them go back."""
        seq.num_computed_tokens += num_accepted + 1
        self.target_blocks.trim(seq, seq.num_computed_tokens)
        # A block the previous step's last token filled is computed only now.
        self.target_blocks.register_full_blocks(seq)
        draft = self._drafts[seq]
        draft.num_computed_tokens = seq.num_known_tokens + min(num_accepted, length - 1)
        self.block_manager.trim(draft, draft.num_computed_tokens)

    # Lifecycle ----------------------------------------------------------------------

    def free(self, seq: Sequence) -> None:
        """Drop the draft's KV of a finished or preempted request."""
        draft = self._drafts.pop(seq, None)
        if draft is not None:
            self.block_manager.free(draft)

    def check_consistency(self, live: list[Sequence]) -> None:
        if any(seq not in live for seq in self._drafts):
            raise RuntimeError("the draft holds KV of a request that is no longer live")
        self.block_manager.check_consistency(list(self._drafts.values()))


def rejection_sample(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    draft_tokens: torch.Tensor,
    lengths: list[int],
    generators: list[torch.Generator | None],
) -> list[list[int]]:
    """Speculative sampling. Row i proposed draft_tokens[i, :lengths[i]], drawn from
    draft_probs[i, j] [rows, K, vocab]; target_probs [rows, K + 1, vocab] is the target's
    distribution at each of those positions and the one after. Returns each row's tokens: the
    accepted drafts, then a draw from norm(max(0, p - q)) at the first rejection, or from p after
    the last draft when all were accepted. Row i's randomness comes from generators[i]."""
    rows = range(len(lengths))
    longest = draft_probs.shape[1]
    uniforms = torch.stack([torch.rand(longest, generator=generators[row], device=draft_probs.device)
                            for row in rows])
    picked = draft_tokens.unsqueeze(-1)
    p = target_probs[:, :longest].gather(-1, picked).squeeze(-1)
    q = draft_probs.gather(-1, picked).squeeze(-1)
    kept = (uniforms * q < p).tolist()
    num_accepted = [next((j for j in range(lengths[row]) if not kept[row][j]), lengths[row]) for row in rows]
    at = torch.tensor(num_accepted, device=target_probs.device)
    row_index = torch.arange(len(lengths), device=target_probs.device)
    final_p = target_probs[row_index, at]
    # The draft's distribution past a row's own drafts is zero, so there the residual is p itself.
    final_q = torch.cat([draft_probs, draft_probs.new_zeros(draft_probs[:, :1].shape)], dim=1)[row_index, at]
    residual = (final_p - final_q).clamp_min(0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    final = torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(mass.dtype).tiny), final_p)
    last = draw(final, generators).tolist()
    drafts = draft_tokens.tolist()
    return [drafts[row][: num_accepted[row]] + [last[row]] for row in rows]


def greedy_accept(draft_tokens: list[list[int]], target_tokens: list[int], starts: list[int]) -> list[list[int]]:
    """Rejection sampling where p and q are one-hot: each sequence keeps its drafts while they are
    the target's argmax (target_tokens[starts[i] + j] at its position j), then takes the target's."""
    accepted = []
    for drafts, start in zip(draft_tokens, starts):
        tokens = []
        for position, draft in enumerate(drafts):
            tokens.append(target_tokens[start + position])
            if draft != tokens[-1]:
                break
        else:
            tokens.append(target_tokens[start + len(drafts)])
        accepted.append(tokens)
    return accepted


def _fits(block_manager: BlockManager, needs: list[tuple[object, int]]) -> bool:
    needed = sum(block_manager.num_blocks_needed(seq, num_tokens) for seq, num_tokens in needs)
    return needed <= block_manager.num_free_blocks


def _padded(rows: list[list[int]], width: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=torch.long, device=device)


def _accepted(tokens: list[int], seq: Sequence, raw_logprobs: torch.Tensor | None, start: int) -> AcceptedTokens:
    params = seq.params
    if not params.logprobs:
        return AcceptedTokens(tokens)
    rows = raw_logprobs[start:start + len(tokens)]
    logprobs = rows.gather(1, torch.tensor(tokens, device=rows.device).unsqueeze(1)).squeeze(1).tolist()
    top = None
    if params.top_logprobs:
        values, indices = rows.topk(params.top_logprobs, dim=-1)
        top = [dict(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    return AcceptedTokens(tokens, logprobs, top)
