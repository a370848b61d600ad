"""MixtureSampler on the real length distributions of ../shared/data: proportions, coverage,
weights, repetition caps, and exact resume (same world size, across a weight change, under a
policy, from 3 ranks to 2)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from packwise.samplers import MixtureDataset, MixturePolicy, MixtureSampler, mixture_inputs

NAMES = ("c4", "alpaca", "glaive", "ag_news")
TARGET = {"c4": 0.4, "alpaca": 0.2, "glaive": 0.2, "ag_news": 0.2}
MAX = 2048


@pytest.fixture(scope="module")
def mix(real_lengths):
    """(lengths, groups) of the four real sources, concatenated."""
    lengths = np.concatenate([real_lengths[n] for n in NAMES]).astype(np.int64)
    groups = np.repeat(np.arange(len(NAMES)), [real_lengths[n].shape[0] for n in NAMES])
    return lengths, groups


def _sampler(mix, weights=TARGET, **kw) -> MixtureSampler:
    lengths, groups = mix
    kw = {"max_tokens": MAX, "names": list(NAMES), "oversize": "truncate", "num_replicas": 1, "rank": 0, **kw}
    return MixtureSampler(lengths, groups, weights, **kw)


def _source_tokens(batches, lengths, groups) -> np.ndarray:
    """Tokens (as packed: at most MAX) per batch and source."""
    out = np.zeros((len(batches), len(NAMES)))
    for k, b in enumerate(batches):
        b = np.asarray(b, dtype=np.int64)
        np.add.at(out[k], groups[b], np.minimum(lengths[b], MAX))
    return out


def _worst_deviation(tokens: np.ndarray, target: np.ndarray, span: int = 1000) -> float:
    """Largest |realised - target| token share over every run of ``span`` consecutive batches;
    ``target[b]`` is batch b's target, weighted by the tokens each batch holds."""
    c = np.vstack([np.zeros(tokens.shape[1]), np.cumsum(tokens, axis=0)])
    ct = np.vstack([np.zeros(tokens.shape[1]), np.cumsum(target * tokens.sum(1, keepdims=True), axis=0)])
    real, want = c[span:] - c[:-span], ct[span:] - ct[:-span]
    total = real.sum(1, keepdims=True)
    return float(np.abs(real / total - want / total).max())


@pytest.mark.parametrize("window", [32, 128])
def test_static_token_proportions_stay_within_half_a_percent_over_every_1000_batches(mix, window):
    lengths, groups = mix
    s = _sampler(mix, tokens_per_epoch=6_000_000, seed=3, window=window)
    batches = s.global_batches()
    assert len(batches) == len(s) == -(-6_000_000 // (window * 2048)) * window
    tokens = _source_tokens(batches, lengths, groups)
    target = np.tile(np.array([TARGET[n] for n in NAMES]), (len(batches), 1))
    assert _worst_deviation(tokens, target) <= 0.005
    st = s.stats()
    assert st.names == NAMES and st.target == pytest.approx(tuple(TARGET.values()), abs=1e-12)
    assert np.abs(np.array(st.realised) - np.array(st.target)).max() < 0.001
    assert st.source_tokens == tuple(int(x) for x in tokens.sum(0))
    assert st.efficiency > 0.99 and st.capped_windows == (0, 0, 0, 0)


def test_scheduled_proportions_track_the_schedule_over_every_1000_batches(mix):
    lengths, groups = mix
    a, b, c = [0.7, 0.1, 0.1, 0.1], [0.1, 0.3, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25]
    schedule = [(0, a), (1200, b), (1200, c), (2400, a)]  # a ramp to b, a jump to c, a ramp back to a
    s = _sampler(mix, weights=schedule, tokens_per_epoch=6_000_000, batches_per_step=1)
    batches = s.global_batches()
    tokens = _source_tokens(batches, lengths, groups)
    steps = (np.arange(len(batches)) // s.window) * s.window  # weights are evaluated per window
    target = np.empty_like(tokens)
    for k, step in enumerate(steps):
        if step < 1200:
            t = step / 1200
            target[k] = (1 - t) * np.array(a) + t * np.array(b)
        else:
            t = min((step - 1200) / 1200, 1.0)
            target[k] = (1 - t) * np.array(c) + t * np.array(a)
    assert _worst_deviation(tokens, target) <= 0.005
    jump = -(-1200 // s.window) * s.window  # the first window starting at or after step 1200
    for lo, hi in ((jump - 200, jump), (jump + 8, jump + 208)):  # the jump lands at its step
        share = tokens[lo:hi].sum(0) / tokens[lo:hi].sum()
        assert np.abs(share - target[lo:hi].mean(0)).max() < 0.01
    assert target[jump - 1, 0] == pytest.approx(0.7 - 0.6 * (jump - s.window) / 1200) and target[jump, 0] == pytest.approx(0.25 + 0.45 * (jump - 1200) / 1200)


def test_natural_weights_cover_every_example_exactly_once(mix):
    lengths, groups = mix
    s = _sampler(mix, weights=None)
    seen = np.concatenate([np.asarray(b, np.int64) for b in s.global_batches()])
    assert sorted(seen.tolist()) == list(range(lengths.shape[0]))
    st = s.stats()
    assert st.passes == (1.0, 1.0, 1.0, 1.0) and st.left_over == 0
    assert st.tokens == int(np.minimum(lengths, MAX).sum())


def test_no_example_repeats_within_its_source_before_the_source_is_exhausted(mix):
    lengths, groups = mix
    s = _sampler(mix, weights={"c4": 0.5, "alpaca": 0.1, "glaive": 0.2, "ag_news": 0.2}, tokens_per_epoch=2_000_000)
    counts = np.bincount(np.concatenate([np.asarray(b, np.int64) for b in s.global_batches()]), minlength=lengths.shape[0])
    passes = s.stats().passes
    for g, name in enumerate(NAMES):
        c = counts[groups == g]
        full = int(np.floor(passes[g]))
        assert c.min() >= full and c.max() <= full + 1, name  # cycle k+1 starts only after cycle k is done
        assert (c == full + 1).sum() == round((passes[g] - full) * c.shape[0]), name
    assert passes[0] > 4 and passes[1] < 1  # c4 cycled, alpaca never repeated
    assert counts[groups == 1].max() == 1


def test_a_tiny_source_never_puts_an_example_twice_in_one_window(mix):
    """lhotse #1271: up-sampled sources put duplicates in one mini-batch."""
    lengths, groups = mix
    tiny = np.flatnonzero(groups == 1)[:6]  # 6 alpaca examples as a source of their own, at 30%
    keep = np.concatenate([np.flatnonzero(groups == 0), tiny])
    g = np.where(groups[keep] == 0, 0, 1)
    s = MixtureSampler(lengths[keep], g, [0.7, 0.3], MAX, oversize="truncate", tokens_per_epoch=400_000, num_replicas=1, rank=0)
    batches = s.global_batches()
    for w in range(0, len(batches), s.window):
        window = [i for b in batches[w : w + s.window] for i in b]
        assert len(window) == len(set(window)), w
    counts = np.bincount(np.concatenate([np.asarray(b, np.int64) for b in batches]), minlength=keep.shape[0])
    st = s.stats()
    # cycled evenly: draws differ by at most 1 per example; the epoch's last window can leave one more out
    assert counts[g == 1].max() - counts[g == 1].min() <= 2 and counts[g == 1].min() >= 3
    assert st.capped_windows[1] > 0 and st.realised[1] < 0.3  # it could not reach its share: counted


def test_temperature_and_two_level_weights_are_exact(mix):
    lengths, groups = mix
    tokens = np.array([np.minimum(lengths[groups == g], MAX).sum() for g in range(4)], float)
    s = _sampler(mix, weights=None, temperature=0.3)
    assert s.schedule.points[0].tolist() == (tokens**0.3 / (tokens**0.3).sum()).tolist()
    counts = np.bincount(groups).astype(float)
    s = _sampler(mix, weights=None, temperature=0.5, by="examples")
    assert s.schedule.points[0].tolist() == (counts**0.5 / (counts**0.5).sum()).tolist()
    # two levels (mHuBERT-147): parents by temperature, sources inside a parent by their own weights
    parents = {"c4": "web", "glaive": "web", "alpaca": "chat", "ag_news": "chat"}
    s = _sampler(mix, weights={"c4": 3, "glaive": 1, "alpaca": 1, "ag_news": 1}, parents=parents, parent_temperature=0.5)
    web, chat = (tokens[0] + tokens[2]) ** 0.5, (tokens[1] + tokens[3]) ** 0.5
    pw, pc = web / (web + chat), chat / (web + chat)
    assert s.schedule.points[0].tolist() == pytest.approx([pw * 0.75, pc * 0.5, pw * 0.25, pc * 0.5], rel=1e-15)


def test_max_repetition_refuses_a_static_mixture_that_needs_more_passes(mix):
    with pytest.raises(ValueError) as err:
        _sampler(mix, weights={"c4": 0.5, "alpaca": 0.1, "glaive": 0.2, "ag_news": 0.2}, tokens_per_epoch=2_000_000, max_repetition=2)
    tokens = int(np.minimum(mix[0][mix[1] == 0], MAX).sum())
    assert str(err.value) == (
        f"source 'c4' needs {0.5 * 2_000_000 / tokens:.2f} passes per epoch at weight 0.5000 (tokens_per_epoch=2000000) "
        f"but max_repetition=2; lower its weight, lower tokens_per_epoch or raise max_repetition"
    )


def test_a_scheduled_source_at_its_cap_is_left_out_and_counted(mix):
    lengths, groups = mix
    s = _sampler(mix, weights=[(0, [0.1, 0.3, 0.3, 0.3]), (100, [0.7, 0.1, 0.1, 0.1])], batches_per_step=1,
                 tokens_per_epoch=750_000, max_repetition=1)
    counts = np.bincount(np.concatenate([np.asarray(b, np.int64) for b in s.global_batches()]), minlength=lengths.shape[0])
    st = s.stats()
    assert counts[groups == 0].tolist() == [1] * int((groups == 0).sum())  # c4 used once, then left out
    assert st.capped_windows[0] > 0 and st.capped_windows[1:] == (0, 0, 0)
    assert st.realised[0] < st.target[0] - 0.1


def _run(sampler, steps=None) -> list[list[int]]:
    out = []
    if steps == 0:
        return out
    for batch in sampler:
        out.append(batch)
        if steps is not None and len(out) == steps:
            break
    return out


@pytest.mark.parametrize("stop", [0, 5, 37])
def test_resume_after_n_batches_yields_exactly_the_rest(mix, stop):
    kw = {"tokens_per_epoch": 800_000, "num_replicas": 2, "rank": 1, "seed": 9, "attention_weight": 1 / 2048}
    expected = _sampler(mix, **kw).rank_batches(epoch=1)
    first = _sampler(mix, **kw)
    first.set_epoch(1)
    head = _run(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # plain JSON: nothing pickled
    second = _sampler(mix, **kw)
    second.load_state_dict(state)
    assert len(second) == len(expected)
    assert head + _run(second) == expected


def test_resume_across_a_weight_change_loses_and_repeats_nothing(mix):
    old, new = [0.7, 0.1, 0.1, 0.1], [0.1, 0.3, 0.3, 0.3]
    schedule = [(0, old), (48, old), (48, new)]  # a jump at step 48, where a window starts (batch 96)
    kw = {"weights": schedule, "tokens_per_epoch": 1_000_000, "num_replicas": 2, "rank": 0, "batches_per_step": 2}
    whole = _sampler(mix, **kw)
    expected = whole.rank_batches()
    plain = _sampler(mix, tokens_per_epoch=1_000_000, num_replicas=2, rank=0).rank_batches()
    assert expected[:20] != plain[:20] and expected[48:] != plain[48:]
    assert whole._weights_at(47).tolist() == pytest.approx(old) and whole._weights_at(48).tolist() == pytest.approx(new)
    for stop in (47, 48, 49):  # just before, at and after the change
        first = _sampler(mix, **kw)
        head = _run(first, stop)
        second = _sampler(mix, **kw)
        second.load_state_dict(first.state_dict())
        assert head + _run(second) == expected, stop
    both = [whole.rank_batches(rank=r) for r in (0, 1)]
    seen = np.concatenate([np.asarray(b, np.int64) for rank in both for b in rank])
    assert np.bincount(seen).max() <= 2  # c4 at 0.7 then 0.1 repeats at most once


class LagPolicy:
    """A deterministic test policy: interval k's weights are the base tilted towards the sources
    with the highest mean loss in interval k - 2 (one interval of lag)."""

    def __init__(self):
        self.seen: dict[int, list[float]] = {}

    def weights(self, interval: int, base: np.ndarray) -> np.ndarray:
        if interval < 2:
            return base
        if interval - 2 not in self.seen:
            raise RuntimeError(f"LagPolicy needs interval {interval - 2}: call observe({interval - 2}, loss_sum, tokens) after it")
        return base * np.exp(2.0 * np.asarray(self.seen[interval - 2]))

    def observe(self, interval: int, loss_sum: np.ndarray, tokens: np.ndarray) -> None:
        self.seen[int(interval)] = (np.asarray(loss_sum) / np.maximum(np.asarray(tokens), 1)).tolist()

    def state_dict(self) -> dict:
        return {"seen": {str(k): v for k, v in self.seen.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.seen = {int(k): v for k, v in state["seen"].items()}


def fake_loss(lengths: np.ndarray) -> np.ndarray:
    """A deterministic stand-in for a model's summed loss per example."""
    return (lengths % 13) / 13.0 * lengths


def train_with_policy(samplers, lengths, steps=None, tracker=None):
    """Iterate ranks' samplers in lockstep like DDP ranks and feed the policy per interval.

    ``tracker`` = [interval, loss_sum, tokens] of the interval in progress (saved with a checkpoint).
    Returns (batches per rank, tracker)."""
    s0 = samplers[0]
    tracker = tracker or [0, np.zeros(s0.num_sources), np.zeros(s0.num_sources)]
    out = [[] for _ in samplers]
    step = s0._resume_at  # steps already trained this epoch (one batch per rank per step)
    for group in zip(*samplers):
        for r, batch in enumerate(group):
            out[r].append(batch)
            b = np.asarray(batch, np.int64)
            np.add.at(tracker[1], s0.sources_of(b), fake_loss(lengths[b]))
            np.add.at(tracker[2], s0.sources_of(b), lengths[b])
        step += 1
        interval = s0.interval_of(s0.global_step(step))
        if interval != tracker[0]:  # the interval is over: one all-reduce, then every rank observes
            for s in samplers:
                s.policy.observe(tracker[0], tracker[1].copy(), tracker[2].copy())
            tracker = [interval, np.zeros(s0.num_sources), np.zeros(s0.num_sources)]
        if steps is not None and step == steps:
            break
    return out, tracker


def test_resume_under_a_policy_is_exact(mix):
    lengths, _ = mix
    kw = {"tokens_per_epoch": 1_200_000, "num_replicas": 2, "update_every": 8, "batches_per_step": 2, "window": 16}
    whole, _ = train_with_policy([_sampler(mix, rank=r, policy=LagPolicy(), **kw) for r in (0, 1)], lengths)
    assert whole[0] != _sampler(mix, rank=0, **kw).rank_batches()  # the policy moved the mixture
    first = [_sampler(mix, rank=r, policy=LagPolicy(), **kw) for r in (0, 1)]
    head, tracker = train_with_policy(first, lengths, steps=21)
    state = json.loads(json.dumps(first[1].state_dict()))
    second = [_sampler(mix, rank=r, policy=LagPolicy(), **kw) for r in (0, 1)]
    for s in second:
        s.load_state_dict(state)
    tail, _ = train_with_policy(second, lengths, tracker=tracker)
    assert [h + t for h, t in zip(head, tail)] == whole
    st = second[0].stats()
    assert st.windows == len(second[0]._log) and st.target != st.realised


def test_a_policy_missing_an_observation_stops_with_the_fix(mix):
    s = _sampler(mix, policy=LagPolicy(), tokens_per_epoch=1_000_000, update_every=4, window=4)
    with pytest.raises(RuntimeError, match=r"^LagPolicy needs interval 0: call observe\(0, loss_sum, tokens\) after it$"):
        _run(s)

    class Broken(LagPolicy):
        def weights(self, interval, base):
            return -base

    with pytest.raises(RuntimeError, match=r"^Broken.weights\(0, base\) returned \[-0\.4, .*\]; it must return 4 finite weights >= 0, not all zero$"):
        _run(_sampler(mix, policy=Broken()))
    assert isinstance(LagPolicy(), MixturePolicy)
    with pytest.raises(ValueError) as err:
        _sampler(mix, policy=LagPolicy(), update_every=4, num_replicas=2, rank=0)
    assert str(err.value) == (
        "update_every=4 steps (8 global batches at batches_per_step=2) is shorter than one window (32 batches), "
        "whose weights are fixed; raise update_every or lower window"
    )


def test_resume_from_three_ranks_on_two_deals_the_rest_of_the_same_stream(mix):
    kw = {"weights": [(0, [0.7, 0.1, 0.1, 0.1]), (30, [0.1, 0.3, 0.3, 0.3])], "tokens_per_epoch": 1_000_000, "batches_per_step": 6}
    canonical = _sampler(mix, **kw).global_batches()
    three = [_sampler(mix, num_replicas=3, rank=r, **kw) for r in range(3)]
    stop = 17
    head = [_run(s, stop) for s in three]
    state = json.loads(json.dumps(three[2].state_dict()))
    assert state["global_batches"] == 3 * stop
    two = [_sampler(mix, num_replicas=2, rank=r, **kw) for r in range(2)]
    for s in two:
        s.load_state_dict(state)
    tail = [_run(s) for s in two]
    rest = len(canonical) - 3 * stop
    assert [len(s) for s in two] == [len(t) for t in tail] == [-(-rest // 2)] * 2
    for t in range(len(tail[0])):  # step t of the new ranks holds canonical batches 3*stop + 2t and + 2t + 1
        group = [b for b in canonical[3 * stop + 2 * t : 3 * stop + 2 * t + 2]]
        group += [[]] * (2 - len(group))
        assert sorted([tail[0][t], tail[1][t]]) == sorted(group)
    for t in range(stop):
        assert sorted(h[t] for h in head) == sorted(canonical[3 * t : 3 * t + 3])
    # without the saved run's step size the schedule would move: refused with the fix
    other = _sampler(mix, num_replicas=2, rank=0, weights=kw["weights"], tokens_per_epoch=1_000_000)
    with pytest.raises(ValueError, match="pass the saved run's batches_per_step explicitly"):
        other.load_state_dict(state)


def test_a_policy_run_saved_on_three_ranks_finishes_on_two_exactly(mix):
    lengths, _ = mix
    kw = {"tokens_per_epoch": 800_000, "update_every": 4, "batches_per_step": 6, "window": 24}
    (canonical,), _ = train_with_policy([_sampler(mix, policy=LagPolicy(), **kw)], lengths)  # one rank, same intervals
    three = [_sampler(mix, num_replicas=3, rank=r, policy=LagPolicy(), **kw) for r in range(3)]
    stop = 20  # inside interval 2 (intervals are 24 global batches = 8 steps of 3 ranks)
    head, tracker = train_with_policy(three, lengths, steps=stop)
    state = json.loads(json.dumps(three[0].state_dict()))
    two = [_sampler(mix, num_replicas=2, rank=r, policy=LagPolicy(), **kw) for r in range(2)]
    for s in two:
        s.load_state_dict(state)
    tail, _ = train_with_policy(two, lengths, tracker=tracker)
    assert [sorted(h[t] for h in head) for t in range(stop)] == [sorted(canonical[3 * t : 3 * t + 3]) for t in range(stop)]
    rest = canonical[3 * stop :]
    assert [sorted([tail[0][t], tail[1][t]]) for t in range(len(tail[0]))] == [
        sorted(rest[2 * t : 2 * t + 2] + [[]] * (2 - len(rest[2 * t : 2 * t + 2]))) for t in range(len(tail[0]))
    ]
    assert canonical != _sampler(mix, **kw).global_batches()  # the policy moved the mixture


def test_state_is_small_and_world_size_free(mix):
    s = _sampler(mix, tokens_per_epoch=3_000_000, num_replicas=4, rank=3, policy=LagPolicy(), update_every=1000)
    _run(s, 100)
    state = s.state_dict()
    assert len(json.dumps(state)) <= 4096
    assert state["global_batches"] == 400 and len(state["cursor"]["drawn"]) == 4


def test_mixture_inputs_and_dataset_from_files_tables_datasets_and_arrays(tmp_path):
    import datasets

    pq.write_table(pa.table({"length": [5, 7, 9], "text": ["a", "b", "c"]}), tmp_path / "web.parquet")
    chat = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3, 4, 5, 6]]})
    with pytest.raises(ValueError) as err:
        mixture_inputs({"web": tmp_path / "web.parquet", "chat": chat})
    assert str(err.value) == "source 'chat'='length' is not a column of the dataset; columns are ['input_ids']"
    lengths, groups, names = mixture_inputs({"web": tmp_path / "web.parquet", "news": pa.table({"length": [4]}), "code": np.array([11, 3])})
    assert (lengths.tolist(), groups.tolist(), names) == ([5, 7, 9, 4, 11, 3], [0, 0, 0, 1, 2, 2], ["web", "news", "code"])
    lengths, groups, names = mixture_inputs({"chat": chat, "more": chat}, length="input_ids")
    assert (lengths.tolist(), groups.tolist(), names) == ([2, 4, 2, 4], [0, 0, 1, 1], ["chat", "more"])
    with pytest.raises(ValueError) as err:
        mixture_inputs({"web": tmp_path / "web.parquet"}, length="n_tokens")
    assert str(err.value) == (
        f"source 'web': {str(tmp_path / 'web.parquet')!r} has no column 'n_tokens' (columns: ['length', 'text']); "
        f"pass length=<its length column>"
    )
    # the dataset indexes the sources in the same order, so a DataLoader reads the sampled rows
    web = [{"src": "web", "i": i} for i in range(3)]
    ds = MixtureDataset({"web": web, "chat": chat.map(lambda r, i: {"src": "chat", "i": i}, with_indices=True)})
    sampler = MixtureSampler(np.array([5, 7, 9, 2, 4]), np.array([0, 0, 0, 1, 1]), None,
                             max_tokens=12, names=ds.names, window=1, num_replicas=1, rank=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=lambda rows: [(r["src"], r["i"]) for r in rows])
    got = [pair for batch in loader for pair in batch]
    assert sorted(got) == [("chat", 0), ("chat", 1), ("web", 0), ("web", 1), ("web", 2)]
    assert [ds.source_of(i) for i in range(5)] == [0, 0, 0, 1, 1]


def test_bad_inputs_name_the_field_and_the_fix(mix):
    lengths, groups = mix
    with pytest.raises(ValueError, match=r"^weights has no entry for \['ag_news'\]; give every source a weight \(0 leaves it out\)$"):
        _sampler(mix, weights={"c4": 1, "alpaca": 1, "glaive": 1})
    with pytest.raises(ValueError, match=r"^weights has key 'wiki', which is not a source; sources are \['c4', 'alpaca', 'glaive', 'ag_news'\]$"):
        _sampler(mix, weights={**TARGET, "wiki": 1})
    with pytest.raises(ValueError, match=r"^groups has 3 entries but lengths has 9199; give one source id per example$"):
        MixtureSampler(lengths, np.array([0, 1, 0]), None, MAX)
    with pytest.raises(ValueError, match=r"^source 'b' has no examples \(groups never holds id 1, or all were dropped\) but a weight > 0; give it weight 0$"):
        MixtureSampler(np.array([3, 4]), np.array([0, 0]), [0.5, 0.5], 8, names=["a", "b"])
    with pytest.raises(ValueError, match=r"^schedule steps must be >= 0 and non-decreasing, got \[10, 5\]$"):
        _sampler(mix, weights=[(10, TARGET), (5, TARGET)])
    s = MixtureSampler(np.array([3, 4, 5]), np.array(["x", "y", "x"]), {"x": 1, "y": 1}, 8, window=1, num_replicas=1, rank=0)
    assert s.names == ["x", "y"] and s.sources_of([2, 1]).tolist() == [0, 1]


def test_ranks_get_equal_counts_and_the_whole_stream(mix):
    kw = {"tokens_per_epoch": 700_000, "attention_weight": 1 / 2048}
    canonical = _sampler(mix, **kw).global_batches()
    for world in (3, 5):
        per_rank = [_sampler(mix, num_replicas=world, rank=r, **kw).rank_batches() for r in range(world)]
        assert {len(p) for p in per_rank} == {-(-len(canonical) // world)}
        for t in range(len(per_rank[0])):
            group = canonical[world * t : world * (t + 1)]
            assert sorted(p[t] for p in per_rank) == sorted(group + [[]] * (world - len(group)))
        dropped = [_sampler(mix, num_replicas=world, rank=r, drop_last=True, **kw).rank_batches() for r in range(world)]
        assert {len(p) for p in dropped} == {len(canonical) // world}


def test_rows_per_batch_and_dataloader_workers(mix):
    lengths, groups = mix
    s = _sampler(mix, rows_per_batch=2, tokens_per_epoch=400_000, algorithm="fill")
    batches = s.global_batches()
    assert len(batches) == -(-400_000 // (32 * 2 * MAX)) * 32
    assert max(int(np.minimum(lengths[b], MAX).sum()) for b in batches) <= 2 * MAX
    ids = torch.utils.data.TensorDataset(torch.arange(lengths.shape[0]))
    loader = DataLoader(ids, batch_sampler=s, num_workers=2, collate_fn=lambda rows: [int(r[0]) for r in rows])
    assert [b for b in loader] == batches


def test_accelerate_batch_sampler_shard_hands_each_rank_its_planned_batches(mix):
    from accelerate.data_loader import BatchSamplerShard

    kw = {"tokens_per_epoch": 300_000, "num_replicas": 2}
    for rank in (0, 1):
        sampler = _sampler(mix, rank=rank, **kw)
        shard = BatchSamplerShard(sampler, num_processes=2, process_index=rank)
        assert list(shard) == sampler.rank_batches() and len(shard) == len(sampler.rank_batches())
    with pytest.raises(ValueError, match=r"^MixtureSampler plans for num_replicas=1, rank=0 but accelerate deals"):
        list(BatchSamplerShard(_sampler(mix, tokens_per_epoch=300_000), num_processes=2, process_index=1))


def test_stateful_dataloader_with_workers_resumes_the_rest(mix):
    from torchdata.stateful_dataloader import StatefulDataLoader

    lengths, _ = mix
    kw = {"tokens_per_epoch": 400_000, "num_replicas": 2, "rank": 0, "seed": 2}
    ids = torch.utils.data.TensorDataset(torch.arange(lengths.shape[0]))

    def loader(sampler):
        return StatefulDataLoader(ids, batch_sampler=sampler, num_workers=2, collate_fn=lambda rows: [int(r[0]) for r in rows])

    expected = _sampler(mix, **kw).rank_batches()
    first = loader(_sampler(mix, **kw))
    head = []
    for batch in first:
        head.append(batch)
        if len(head) == 6:
            state = first.state_dict()
            break
    second = loader(_sampler(mix, **kw))
    second.load_state_dict(state)
    assert head + list(second) == expected


def test_a_trainer_counting_more_consumed_steps_resumes_after_them(mix):
    kw = {"tokens_per_epoch": 400_000, "num_replicas": 2, "rank": 1}
    expected = _sampler(mix, **kw).rank_batches()
    first = _sampler(mix, **kw)
    _run(first, 10)
    state = first.state_dict()
    state["batches_yielded"] = 13  # what PackwiseTrainer writes: the steps it trained on
    second = _sampler(mix, **kw)
    second.load_state_dict(state)
    assert _run(second) == expected[13:]
    state["batches_yielded"] = 9
    with pytest.raises(ValueError, match=r"^state_dict batches_yielded=9 is below the 10 steps its cursor was saved at"):
        _sampler(mix, **kw).load_state_dict(state)


def test_bucketed_mixture_keeps_the_padded_budget_and_the_proportions(mix):
    lengths, groups = mix
    s = _sampler(mix, batching="bucket", buckets=[64, 128, 256, 512, 1024], tokens_per_epoch=3_000_000, seed=1)
    batches = s.global_batches()
    clipped = np.minimum(lengths, MAX)
    edges = np.array([0, 64, 128, 256, 512, 1024, MAX])
    for b in batches:
        if b:
            assert len(b) * clipped[b].max() <= MAX
            assert len(set(np.searchsorted(edges[1:-1], clipped[b], side="left").tolist())) == 1  # one bucket per batch
    tokens = _source_tokens(batches, lengths, groups)
    assert _worst_deviation(tokens, np.tile([TARGET[n] for n in NAMES], (len(batches), 1))) <= 0.005
    st = s.stats()
    assert st.slots == sum(len(b) * int(clipped[b].max()) for b in batches if b) and 0.8 < st.efficiency < 0.99
    natural = _sampler(mix, weights=None, batching="bucket", buckets=[64, 128, 256, 512, 1024])
    assert sorted(i for b in natural.global_batches() for i in b) == list(range(lengths.shape[0]))
    assert (natural.stats().left_over, natural.stats().empty_batches) == (0, 26)  # the epoch was sized for padding
    with pytest.raises(ValueError, match=r"^rows_per_batch applies to packed rows"):
        _sampler(mix, batching="bucket", rows_per_batch=2)


def test_a_state_saved_after_the_last_batch_resumes_to_nothing(mix):
    kw = {"tokens_per_epoch": 300_000, "num_replicas": 3, "rank": 2}
    first = _sampler(mix, **kw)
    whole = _run(first)
    assert len(whole) == len(first) and whole[-1] == []  # the short last step is padded
    state = first.state_dict()
    assert state["cursor"] is None and state["global_batches"] == first.batches_per_epoch
    second = _sampler(mix, **kw)
    second.load_state_dict(state)
    assert _run(second) == []
    second.set_epoch(1)
    assert _run(second) == _sampler(mix, **kw).rank_batches(epoch=1)


def test_example_proportions_with_by_examples(mix):
    lengths, groups = mix
    s = _sampler(mix, by="examples", tokens_per_epoch=4_000_000)
    batches = s.global_batches()
    counts = np.zeros((len(batches), len(NAMES)))
    for k, b in enumerate(batches):
        np.add.at(counts[k], groups[np.asarray(b, np.int64)], 1)
    c = np.vstack([np.zeros(4), np.cumsum(counts, axis=0)])
    span = c[1000:] - c[:-1000]
    assert len(batches) > 1500 and np.abs(span / span.sum(1, keepdims=True) - list(TARGET.values())).max() <= 0.005
    assert s.stats().realised == pytest.approx(tuple(TARGET.values()), abs=0.001)


def test_pruning_inside_the_sources_keeps_the_mixture(mix):
    from packwise.selection import InfoBatch

    lengths, groups = mix
    ib = InfoBatch(lengths.shape[0], num_epochs=4, prune_ratio=0.5, seed=0)
    ib.update(np.arange(lengths.shape[0]), torch.tensor(fake_loss(lengths) / lengths, dtype=torch.float32))
    s = _sampler(mix, pruning=ib, tokens_per_epoch=300_000)
    kept = ib.indices_for_epoch(1)
    assert 0.5 * lengths.shape[0] < kept.shape[0] < lengths.shape[0]
    s.set_epoch(1)
    seen = np.concatenate([np.asarray(b, np.int64) for b in s])
    assert np.isin(seen, kept).all() and np.bincount(seen).max() == 1  # only kept examples, none twice
    tokens = _source_tokens(s.global_batches(epoch=1), lengths, groups).sum(0)
    assert np.abs(tokens / tokens.sum() - list(TARGET.values())).max() < 0.002
    assert s.stats(epoch=1).passes[3] == pytest.approx(s.stats(epoch=1).source_examples[3] / np.isin(kept, np.flatnonzero(groups == 3)).sum())
    with pytest.raises(ValueError, match=r"^pruning covers 10 examples but lengths has 9199; build it over the whole mixture$"):
        _sampler(mix, pruning=InfoBatch(10, num_epochs=2))


def test_groups_from_datasets_and_arrow_columns():
    import datasets

    ds = datasets.Dataset.from_dict({"length": [5, 7, 3, 4], "src": ["web", "chat", "web", "chat"], "sid": [0, 1, 0, 1]})
    for lengths, groups, kw in (
        ("length", ds["src"], {"dataset": ds}),
        (ds.data.column("length"), ds.data.column("src"), {}),
        (np.array([5, 7, 3, 4]), pa.array(["web", "chat", "web", "chat"]).dictionary_encode(), {}),
    ):
        s = MixtureSampler(lengths, groups, None, 8, window=1, num_replicas=1, rank=0, **kw)
        assert (s.names, s.groups.tolist(), s.lengths.tolist()) == (["chat", "web"], [1, 0, 1, 0], [5, 7, 3, 4])
    s = MixtureSampler("length", "sid", {"a": 1, "b": 3}, 8, names=["a", "b"], dataset=ds, window=1, num_replicas=1, rank=0)
    assert s.schedule.points[0].tolist() == [0.25, 0.75]


def test_distinct_kernel_keeps_first_occurrences_in_pool_order_and_clears_its_scratch():
    from packwise.samplers import _mixture_kernels

    seen = np.zeros(10, np.bool_)
    keep, rest = _mixture_kernels.distinct(np.array([4, 2, 4, 9, 2, 2, 0], np.int64), seen)
    assert keep.tolist() == [4, 2, 9, 0] and rest.tolist() == [4, 2, 2]
    assert not seen.any()
