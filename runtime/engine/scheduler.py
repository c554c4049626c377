"""Iteration-level scheduling: which requests run in the next step, and how many tokens each.

Every step has a token budget (`max_num_batched_tokens`). Running decodes go first, oldest
first, one token each: a prompt never holds up the streams already generating. When the KV
cache cannot hold a decode's next token, the newest running request is preempted (its blocks
freed, to be recomputed later) until it can. Prompts come next: unfinished prefills of running
requests, then waiting requests admitted in priority then arrival order (only in steps that
preempted nothing, while `max_num_seqs` and free blocks allow), each taking the next chunk that
fits. Beside decodes, prompts share a smaller budget when `decode_step_target_seconds` is set:
as many tokens as the step cost model (step_cost.py) says fit in that time with the decodes, and
at least `min_prefill_chunk_tokens`, so every stream's next token stays within about that time
while long prompts stream in chunk by chunk.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .config import EngineConfig
from .sequence import FinishReason, Sequence, SequenceStatus
from .step_cost import StepCostModel


@dataclass(slots=True)
class ScheduledSequence:
    seq: Sequence
    num_new_tokens: int

    @property
    def completes_sequence(self) -> bool:
        """After this chunk every known token is computed, so the step samples a new one."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(item.num_new_tokens for item in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.decode_step_target_seconds = config.decode_step_target_seconds
        self.min_prefill_chunk_tokens = config.min_prefill_chunk_tokens
        self.step_cost = StepCostModel()
        self.block_manager = block_manager
        # Both lists stay sorted by Sequence.sort_key: the front is served first,
        # the back of `running` is preempted first.
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.sort_key)

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput()
        budget = self._schedule_decodes(output, self.max_num_batched_tokens)
        prompt_budget = min(budget, self._prompt_budget(num_decodes=len(output.scheduled)))
        prompt_budget, starved = self._schedule_running_prefills(output, prompt_budget)
        # A running prompt short of blocks gets the next ones freed: none go to newcomers meanwhile.
        if not output.preempted and not starved:
            self._schedule_waiting(output, prompt_budget)
        return output

    def _prompt_budget(self, num_decodes: int) -> int:
        """The prompt tokens a step with `num_decodes` decodes may compute: all it has room for
        without a target (or without decodes to keep flowing, or before the cost is known)."""
        if self.decode_step_target_seconds is None or not num_decodes:
            return self.max_num_batched_tokens
        fitting = self.step_cost.tokens_within(self.decode_step_target_seconds)
        if fitting is None:
            return self.max_num_batched_tokens
        return max(self.min_prefill_chunk_tokens, fitting - num_decodes)

    def _schedule_decodes(self, output: SchedulerOutput, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            if seq.num_uncomputed_tokens != 1 or seq.num_output_tokens >= seq.params.max_tokens:
                # A prompt (scheduled after the decodes), or a request whose last token is still
                # being sampled (async scheduling): it finishes by length once that token is
                # fetched, so there is nothing more to compute for it.
                index += 1
                continue
            while not self.block_manager.can_allocate(seq, 1):
                # The newest is preempted first: it is at the back, after every decode scheduled.
                victim = self.running[-1]
                self._preempt(victim)
                output.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break
            self.block_manager.allocate_slots(seq, 1)
            output.scheduled.append(ScheduledSequence(seq, 1))
            budget -= 1
            index += 1
        return budget

    def _schedule_running_prefills(self, output: SchedulerOutput, budget: int) -> tuple[int, bool]:
        """The next chunk of each running request's unfinished prompt, oldest first, while the
        blocks allow (a prompt never preempts: the decodes have been served). Returns the budget
        left and whether a prompt was left without the blocks for its chunk."""
        for seq in self.running:
            if budget <= 0:
                break
            if seq.num_uncomputed_tokens <= 1:
                continue
            num_new_tokens = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.can_allocate(seq, num_new_tokens):
                return budget, True
            self.block_manager.allocate_slots(seq, num_new_tokens)
            output.scheduled.append(ScheduledSequence(seq, num_new_tokens))
            budget -= num_new_tokens
        return budget, False

    def _schedule_waiting(self, output: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_pending_tokens:
                # Preempted while a token of it was still being sampled: recompute it once the
                # token is known (next step; admissions never share a step with a preemption).
                break
            cached_prefix = self.block_manager.find_cached_prefix(seq)
            num_new_tokens = min(seq.num_tokens - len(cached_prefix) * self.block_manager.block_size, budget)
            if not self.block_manager.can_allocate(seq, num_new_tokens, cached_prefix):
                break
            self.waiting.pop(0)
            self.block_manager.take_cached_prefix(seq, cached_prefix)
            self.block_manager.allocate_slots(seq, num_new_tokens)
            seq.status = SequenceStatus.RUNNING
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.monotonic()
            bisect.insort(self.running, seq, key=lambda s: s.sort_key)
            output.scheduled.append(ScheduledSequence(seq, num_new_tokens))
            budget -= num_new_tokens

    def _preempt(self, seq: Sequence) -> None:
        """Recompute preemption: drop the KV, keep the tokens, queue the request again."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.add(seq)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Remove a request from whichever queue holds it and release its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.finished_time = time.monotonic()

    def live_sequences(self) -> list[Sequence]:
        return self.running + self.waiting
