"""Super-batch selection under real DDP (2 gloo processes) on real AG News features: the reference
pass gathers every rank's share into one Parquet file, RHO-LOSS and pairwise JEST choose the same
sub-batch on both ranks (equal to a single-process selection on the gathered scores), and each rank
trains on an equal, disjoint share of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from conftest import end_ddp_worker

from test_selection_ddp import _free_port, agnews_features  # noqa: F401  (the real-data fixture)

WORLD = 2
STEPS = 3


def _worker(rank: int, port: int, data_path: str, out_dir: str) -> None:
    import torch.distributed as dist

    from packwise.samplers import SuperBatch
    from packwise.selection import JEST, ReferenceScores, RhoLoss, gather_rows, reference_scores

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    data = np.load(data_path)
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    n = x.shape[0]
    torch.manual_seed(0)
    learner, ref_model = torch.nn.Linear(x.shape[1], 4), torch.nn.Linear(x.shape[1], 4)
    towers = (torch.nn.Linear(x.shape[1], 8), torch.nn.Linear(x.shape[1], 8))

    def ce(model, ids):
        return torch.nn.functional.cross_entropy(model(x[ids]), y[ids], reduction="none")

    mine = np.array_split(np.arange(n), WORLD)[rank]
    path = Path(out_dir) / "reference.parquet"
    reference_scores(lambda ids: (ids, ce(ref_model, ids)), [mine[:20], mine[20:]], n, path)
    ref = ReferenceScores.from_parquet(path, num_examples=n)
    sb = SuperBatch(np.full(n, 4), batch_size=8, filter_ratio=0.75, buckets=1, seed=3)  # world from dist
    rho, jest = RhoLoss(ref, seed=1), JEST("pairwise", filter_ratio=0.75, n_chunks=4, seed=1)
    record = {"ref": ref[np.arange(n)].tolist(), "steps": []}
    for _, super_ids in zip(range(STEPS), sb):
        share = sb.score_share(super_ids)
        with torch.no_grad():
            losses = ce(learner, share)
            t, d = gather_rows(towers[0](x[share])), gather_rows(towers[1](x[share]))
            rt, rd = gather_rows(0.5 * towers[0](x[share])), gather_rows(2.0 * towers[1](x[share]))
        k = sb.sub_batch_size(super_ids)
        r = rho.select(share, losses, k=k)
        j = jest.select(np.asarray(super_ids), t @ d.T, rt @ rd.T, k=k)
        record["steps"].append(
            {
                "super": list(super_ids),
                "k": k,
                "share": share.tolist(),
                "losses": losses.tolist(),
                "rho": r.ids.tolist(),
                "rho_super": r.super_ids.tolist(),
                "rho_train": sb.train_batch(r).ids.tolist(),
                "jest": j.ids.tolist(),
                "jest_train": sb.train_batch(j).ids.tolist(),
                "logits": [(t @ d.T).tolist(), (rt @ rd.T).tolist()],
            }
        )
    Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(record))
    end_ddp_worker()


def test_ranks_select_the_same_sub_batch_and_get_equal_shares(agnews_features, tmp_path):  # noqa: F811
    from packwise.selection import JEST, ReferenceScores, RhoLoss

    mp.spawn(_worker, args=(_free_port(), agnews_features, str(tmp_path)), nprocs=WORLD, join=True)
    recs = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(WORLD)]
    n = 90
    assert recs[0]["ref"] == recs[1]["ref"] and len(recs[0]["ref"]) == n  # both ranks' shares in one file
    ref = ReferenceScores.from_parquet(tmp_path / "reference.parquet")
    assert ref.num_scored == n
    rho, jest = RhoLoss(ref, seed=1), JEST("pairwise", filter_ratio=0.75, n_chunks=4, seed=1)
    for s0, s1 in zip(recs[0]["steps"], recs[1]["steps"]):
        size, k = len(s0["super"]), s0["k"]
        assert s0["super"] == s1["super"] and size <= 32  # 8 / (1 - 0.75); a bucket remainder is shorter
        assert k == s1["k"] == min(8, int(0.25 * size + 0.5)) // 2 * 2 and k >= 6
        assert s0["share"] + s1["share"] == s0["super"] and len(s0["share"]) == len(s1["share"])
        assert s0["rho_super"] == s1["rho_super"] == s0["super"]  # gathered in rank order
        assert s0["rho"] == s1["rho"] and len(s0["rho"]) == k
        assert s0["jest"] == s1["jest"] and len(s0["jest"]) == k and s0["logits"] == s1["logits"]
        for key in ("rho", "jest"):
            a, b = s0[f"{key}_train"], s1[f"{key}_train"]
            assert len(a) == len(b) == k // 2 and not set(a) & set(b) and sorted(a + b) == sorted(s0[key])
        # one process, same seed and step, on the gathered scores: the same choice
        single = rho.select(np.array(s0["super"]), torch.tensor(s0["losses"] + s1["losses"]), k=k)
        assert single.ids.tolist() == s0["rho"]
        logits = [torch.tensor(m) for m in s0["logits"]]
        assert jest.select(np.array(s0["super"]), *logits, k=k).ids.tolist() == s0["jest"]
