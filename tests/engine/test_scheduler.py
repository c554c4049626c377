"""Scheduler on a real BlockManager, with steps simulated by hand the way LLMEngine.step
advances them: token budget, mixed decode and chunked prefill, max_num_seqs, FCFS and
priority order, and preemption of the newest request when the KV cache runs out."""

from __future__ import annotations

import random

from runtime.engine.block_manager import BlockManager
from runtime.engine.config import EngineConfig
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.scheduler import Scheduler, SchedulerOutput
from runtime.engine.sequence import FinishReason, Sequence, SequenceStatus
from runtime.engine.step_cost import StepCostModel

BLOCK_SIZE = 4
FAKE_TOKEN = 7


def make_scheduler(num_blocks: int = 64, max_num_seqs: int = 8, max_num_batched_tokens: int = 16,
                   **options) -> Scheduler:
    config = EngineConfig(
        model="unused",
        block_size=BLOCK_SIZE,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        **options,
    )
    return Scheduler(config, BlockManager(num_blocks, BLOCK_SIZE, enable_prefix_caching=True))


class Requests:
    """Builds requests with increasing arrival order, as LLMEngine.add_request does."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.count = 0

    def add(self, prompt_len: int, max_tokens: int = 4, priority: int = 0) -> Sequence:
        first_token = 10 + 100 * self.count  # distinct prompts: no prefix hits between requests
        seq = Sequence(
            request_id=f"r{self.count}",
            prompt_token_ids=list(range(first_token, first_token + prompt_len)),
            params=SamplingParams(max_tokens=max_tokens),
            arrival_order=self.count,
            priority=priority,
        )
        self.count += 1
        self.scheduler.add(seq)
        return seq


def run_step(scheduler: Scheduler) -> SchedulerOutput:
    """Schedule, then advance every scheduled request like LLMEngine.step does."""
    output = scheduler.schedule()
    completing = [item.completes_sequence for item in output.scheduled]
    for item, completes in zip(output.scheduled, completing):
        seq = item.seq
        seq.num_computed_tokens += item.num_new_tokens
        scheduler.block_manager.register_full_blocks(seq)
        if completes:
            seq.output_token_ids.append(FAKE_TOKEN)
            if len(seq.output_token_ids) >= seq.params.max_tokens:
                scheduler.finish(seq, FinishReason.LENGTH)
    scheduler.block_manager.check_consistency(scheduler.live_sequences())
    return output


def run_to_completion(scheduler: Scheduler, max_steps: int = 1000) -> list[SchedulerOutput]:
    outputs = []
    while scheduler.num_unfinished:
        assert len(outputs) < max_steps, "the scheduler stopped making progress"
        outputs.append(run_step(scheduler))
    return outputs


def scheduled_ids(output: SchedulerOutput) -> list[str]:
    return [item.seq.request_id for item in output.scheduled]


def admission_order(outputs: list[SchedulerOutput]) -> list[str]:
    """Request ids in the order they were first scheduled."""
    order: list[str] = []
    for output in outputs:
        order += [request_id for request_id in scheduled_ids(output) if request_id not in order]
    return order


def test_every_step_stays_within_the_token_budget():
    scheduler = make_scheduler(num_blocks=40, max_num_batched_tokens=16)
    requests = Requests(scheduler)
    rng = random.Random(0)
    seqs = [requests.add(rng.randint(1, 40), max_tokens=rng.randint(1, 8)) for _ in range(12)]
    outputs = run_to_completion(scheduler)
    assert all(0 < output.num_batched_tokens <= 16 for output in outputs)
    assert all(seq.finish_reason is FinishReason.LENGTH for seq in seqs)
    assert all(len(seq.output_token_ids) == seq.params.max_tokens for seq in seqs)
    assert scheduler.block_manager.num_free_blocks == 40


def test_decodes_and_a_chunked_prefill_share_one_step():
    scheduler = make_scheduler(max_num_batched_tokens=16)
    requests = Requests(scheduler)
    short = requests.add(3, max_tokens=10)
    run_step(scheduler)
    long = requests.add(40)

    output = run_step(scheduler)
    assert [(item.seq, item.num_new_tokens) for item in output.scheduled] == [(short, 1), (long, 15)]
    assert long.num_computed_tokens == 15 and long.output_token_ids == []
    output = run_step(scheduler)
    assert [(item.seq, item.num_new_tokens) for item in output.scheduled] == [(short, 1), (long, 15)]
    # The last chunk (10 tokens) completes the prompt and produces the first token.
    output = run_step(scheduler)
    assert [(item.seq, item.num_new_tokens) for item in output.scheduled] == [(short, 1), (long, 10)]
    assert long.output_token_ids == [FAKE_TOKEN]


def test_a_prompt_longer_than_the_budget_is_prefilled_in_budget_sized_chunks():
    scheduler = make_scheduler(max_num_batched_tokens=16)
    seq = Requests(scheduler).add(50, max_tokens=2)
    outputs = run_to_completion(scheduler)
    assert [output.num_batched_tokens for output in outputs] == [16, 16, 16, 2, 1]
    assert len(seq.output_token_ids) == 2


def test_no_more_than_max_num_seqs_run_at_once():
    scheduler = make_scheduler(max_num_seqs=2, max_num_batched_tokens=64)
    requests = Requests(scheduler)
    seqs = [requests.add(3, max_tokens=3) for _ in range(5)]
    outputs = run_to_completion(scheduler)
    assert max(len(output.scheduled) for output in outputs) == 2
    assert admission_order(outputs) == [seq.request_id for seq in seqs]
    assert all(len(seq.output_token_ids) == 3 for seq in seqs)


def test_requests_are_admitted_first_come_first_served():
    scheduler = make_scheduler(max_num_seqs=1)
    requests = Requests(scheduler)
    for prompt_len in (9, 2, 30, 1, 5):
        requests.add(prompt_len, max_tokens=2)
    assert admission_order(run_to_completion(scheduler)) == ["r0", "r1", "r2", "r3", "r4"]


def test_lower_priority_value_is_admitted_first_then_arrival_order():
    scheduler = make_scheduler(max_num_seqs=1)
    requests = Requests(scheduler)
    for priority in (0, 5, -1, 5, 0, -1):
        requests.add(3, max_tokens=2, priority=priority)
    assert admission_order(run_to_completion(scheduler)) == ["r2", "r5", "r0", "r4", "r1", "r3"]


def test_a_waiting_request_that_does_not_fit_blocks_those_behind_it():
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=64)
    requests = Requests(scheduler)
    running = requests.add(8, max_tokens=8)
    run_step(scheduler)
    big = requests.add(12)  # needs 3 blocks, only 2 are free
    small = requests.add(1)
    output = run_step(scheduler)
    assert scheduled_ids(output) == [running.request_id]
    assert big.status is SequenceStatus.WAITING and small.status is SequenceStatus.WAITING


def test_out_of_blocks_preempts_the_newest_running_request():
    # Three requests of one block each grow to three blocks; 6 blocks hold two blocks each.
    scheduler = make_scheduler(num_blocks=6, max_num_batched_tokens=64)
    requests = Requests(scheduler)
    oldest, middle, newest = (requests.add(BLOCK_SIZE, max_tokens=20) for _ in range(3))
    output = run_step(scheduler)
    while not output.preempted:
        assert not newest.num_preemptions
        output = run_step(scheduler)

    assert output.preempted == [newest]
    assert scheduled_ids(output) == [oldest.request_id, middle.request_id]
    assert newest.status is SequenceStatus.WAITING
    assert newest.num_computed_tokens == 0
    assert newest.block_table == []
    assert newest.num_preemptions == 1 and scheduler.num_preemptions == 1
    # Its tokens survive: it is recomputed, not restarted.
    assert newest.output_token_ids == [FAKE_TOKEN] * (2 * BLOCK_SIZE + 1 - BLOCK_SIZE)
    assert scheduler.waiting == [newest]


def test_the_lowest_priority_running_request_is_preempted_before_a_newer_important_one():
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=64)
    requests = Requests(scheduler)
    unimportant = requests.add(BLOCK_SIZE, max_tokens=20, priority=1)
    important = requests.add(BLOCK_SIZE, max_tokens=20, priority=0)
    output = run_step(scheduler)
    while not output.preempted:
        output = run_step(scheduler)
    assert output.preempted == [unimportant]
    assert important.status is SequenceStatus.RUNNING


def test_a_preempted_request_goes_to_the_front_of_its_priority_class_and_nothing_is_admitted():
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=64)
    requests = Requests(scheduler)
    oldest = requests.add(BLOCK_SIZE, max_tokens=20)
    victim = requests.add(BLOCK_SIZE, max_tokens=20)
    # Both hold two full blocks after 4 decodes; the next decode needs a third block.
    for _ in range(1 + BLOCK_SIZE):
        output = run_step(scheduler)
        assert not output.preempted
    assert scheduler.block_manager.num_free_blocks == 0
    later = requests.add(1, max_tokens=2)
    urgent = requests.add(1, max_tokens=2, priority=-1)

    output = run_step(scheduler)
    assert output.preempted == [victim]
    # One block is free again and both newcomers would fit, but a step that preempts admits nobody.
    assert scheduled_ids(output) == [oldest.request_id]
    assert scheduler.block_manager.num_free_blocks == 1
    assert scheduler.waiting == [urgent, victim, later]

    output = run_step(scheduler)
    assert scheduled_ids(output) == [oldest.request_id, urgent.request_id]


def test_a_preempted_request_is_recomputed_with_its_outputs_and_finishes():
    scheduler = make_scheduler(num_blocks=6, max_num_batched_tokens=64)
    requests = Requests(scheduler)
    seqs = [requests.add(BLOCK_SIZE, max_tokens=12) for _ in range(3)]
    victim = seqs[-1]
    while not run_step(scheduler).preempted:
        pass
    num_outputs = len(victim.output_token_ids)
    while victim.status is SequenceStatus.WAITING:
        run_step(scheduler)
    # Prompt and earlier outputs were recomputed in one prefill that produced the next token.
    assert victim.output_token_ids == [FAKE_TOKEN] * (num_outputs + 1)
    assert victim.num_computed_tokens == victim.num_tokens - 1
    run_to_completion(scheduler)
    assert all(len(seq.output_token_ids) == 12 for seq in seqs)
    assert scheduler.block_manager.num_free_blocks == 6


def test_finish_of_a_waiting_request_removes_it():
    scheduler = make_scheduler()
    requests = Requests(scheduler)
    seq = requests.add(5)
    scheduler.finish(seq, FinishReason.ABORT)
    assert scheduler.num_unfinished == 0
    assert seq.status is SequenceStatus.FINISHED and seq.finish_reason is FinishReason.ABORT
    assert scheduler.schedule().is_empty


def _teach_cost(scheduler: Scheduler, fixed_seconds: float, seconds_per_token: float) -> None:
    for num_tokens in (1, 8, 64, 2, 32, 16, 4, 128, 3, 48):
        scheduler.step_cost.observe(num_tokens, fixed_seconds + seconds_per_token * num_tokens)


def test_beside_decodes_a_prompt_gets_the_tokens_that_fit_the_step_target():
    # Steps cost 10 ms + 1 ms per token: a 50 ms target holds 40 tokens, 2 of them decodes.
    scheduler = make_scheduler(max_num_batched_tokens=256, decode_step_target_seconds=0.05, min_prefill_chunk_tokens=4)
    _teach_cost(scheduler, 0.010, 0.001)
    requests = Requests(scheduler)
    streams = [requests.add(3, max_tokens=50), requests.add(3, max_tokens=50)]
    run_step(scheduler)
    long = requests.add(200)

    output = run_step(scheduler)
    assert [(item.seq, item.num_new_tokens) for item in output.scheduled] == [(streams[0], 1), (streams[1], 1),
                                                                              (long, 38)]
    # Its next chunk is a running prefill's, scheduled after the decodes.
    output = run_step(scheduler)
    assert [(item.seq, item.num_new_tokens) for item in output.scheduled] == [(streams[0], 1), (streams[1], 1),
                                                                              (long, 38)]


def test_a_prompt_alone_takes_the_whole_budget_and_one_beside_slow_decodes_at_least_the_minimum():
    alone = make_scheduler(num_blocks=256, max_num_batched_tokens=256, decode_step_target_seconds=0.05)
    _teach_cost(alone, 0.040, 0.001)
    Requests(alone).add(300)
    assert run_step(alone).num_batched_tokens == 256  # no stream to keep flowing: no target

    scheduler = make_scheduler(num_blocks=256, max_num_batched_tokens=256, decode_step_target_seconds=0.05,
                               min_prefill_chunk_tokens=8)
    _teach_cost(scheduler, 0.040, 0.001)  # 10 tokens fit in 50 ms, 4 of them the decodes
    requests = Requests(scheduler)
    streams = [requests.add(3, max_tokens=50) for _ in range(4)]
    assert run_step(scheduler).num_batched_tokens == 12
    long = requests.add(300)
    output = run_step(scheduler)
    assert [(item.seq, item.num_new_tokens) for item in output.scheduled] == [*((seq, 1) for seq in streams),
                                                                              (long, 8)]


def test_the_step_cost_model_finds_the_line_through_the_steps_it_saw():
    model = StepCostModel()
    assert model.tokens_within(0.1) is None
    for num_tokens in (1, 100, 7, 300, 50, 2, 64, 200, 16, 128):
        model.observe(num_tokens, 0.004 + 0.0005 * num_tokens)
    fixed, per_token = model.line()
    assert abs(fixed - 0.004) < 1e-6 and abs(per_token - 0.0005) < 1e-8
    assert model.tokens_within(0.104) in (199, 200)  # 200, give or take a rounding
    same_size = StepCostModel()
    for _ in range(20):
        same_size.observe(32, 0.01)
    assert same_size.line() is None  # every step the same size: the cost per token is unknown


def test_a_running_prompt_short_of_blocks_is_not_overtaken_by_newcomers(monkeypatch):
    scheduler = make_scheduler(max_num_batched_tokens=16)
    requests = Requests(scheduler)
    long = requests.add(40)
    run_step(scheduler)  # its first 16 tokens
    newcomer = requests.add(4)
    can_allocate = scheduler.block_manager.can_allocate
    monkeypatch.setattr(scheduler.block_manager, "can_allocate",
                        lambda seq, *args: seq is not long and can_allocate(seq, *args))
    assert scheduler.schedule().is_empty  # the blocks freed next go to the running prompt
    assert newcomer.status is SequenceStatus.WAITING
