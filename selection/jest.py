"""JEST: learnability-driven selection of a sub-batch from a super-batch, pointwise or jointly.

Learnability = learner loss - reference loss (unlearned by the learner, learnable per the
reference model trained on curated data).  Two modes:

* ``pointwise`` (per-example losses: classification, LM, diffusion): the sub-batch loss is a sum
  of per-example terms, so the learnability of a set is the sum of its members' and *joint*
  selection equals independent selection by learnability; this mode ranks examples by any policy
  (``softmax`` sampling by default), which is RHO-LOSS with an online or precomputed reference.
* ``pairwise`` (contrastive losses, which couple the examples of a batch): the sub-batch loss has
  a term for every pair inside it, so which examples are worth training on depends on which others
  are chosen.  Blocked sampling (Evans et al., 2024): split the ``k`` picks into ``n_chunks``
  blocks; draw the first block from the diagonal scores, each next block from
  ``softmax(beta * conditional learnability)`` given the blocks already chosen, without
  replacement (Gumbel-top-k).  Only here is "joint" selection claimed.

Pairwise scores, exactly:

* ``loss="sigmoid"`` (SigLIP): pair loss ``l_ij = softplus(-z_ij * logit_ij)``, ``z = +1`` on the
  diagonal and ``-1`` off it; ``A = L_learner - L_reference``; the loss of a sub-batch ``S`` is
  ``sum_{i,j in S} l_ij``, so candidate ``i`` given ``S`` scores
  ``A_ii + sum_{j in S} (A_ij + A_ji)`` (the first block: ``A_ii``).
* ``loss="softmax"`` (CLIP / InfoNCE, both directions): ``L(S) = sum_{a in S} 1/2 [(-s_aa +
  logsumexp_{j in S} s_aj) + (-s_aa + logsumexp_{j in S} s_ja)]`` is not a sum over pairs (every
  term is normalised over the whole sub-batch).  The first block is drawn from each example's
  learnability with the *whole super-batch* as negatives (``1/2`` (row + column) cross-entropy,
  learner minus reference); candidate ``i`` given ``S`` scores the exact increase
  ``[L(S + i) - L(S)]_learner - [L(S + i) - L(S)]_reference`` (its own two terms over ``S + i``,
  plus how much it raises every chosen row's and column's normaliser), updated incrementally.

Candidates in the same block do not see each other (the blocked approximation of sampling
sub-batches ``~ exp(learnability)``).  Cost: ``O(B * k)`` per super-batch after the ``B x B``
logits, in torch on the logits' device, plus one ``B``-vector copy to the host per block.
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from ._batch import BatchSelection, _PointwiseSelector, check_ids
from ._checks import as_int, rng

MODES: tuple[str, ...] = ("pointwise", "pairwise")
LOSSES: tuple[str, ...] = ("sigmoid", "softmax")


def _matrix(x, field: str):
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(
            f"{field} must be a square B x B matrix (row i: example i's first tower against every second tower), "
            f"got shape {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        t = t.float()
    t = t.detach()
    if not bool(torch.isfinite(t).all()):
        i, j = (int(v) for v in torch.nonzero(~torch.isfinite(t))[0])
        raise ValueError(f"{field}[{i}, {j}] = {float(t[i, j])} is not finite; check the embeddings and logit scale")
    return t


def sigmoid_pair_losses(logits):
    """``softplus(-z * logits)``: the SigLIP loss of every pair (``z = +1`` on the diagonal, ``-1`` off).

    Example:
        >>> import torch
        >>> from packwise.selection import sigmoid_pair_losses
        >>> sigmoid_pair_losses(torch.zeros(2, 2)).tolist() == [[0.6931471824645996] * 2] * 2
        True
    """
    import torch

    s = _matrix(logits, "logits")
    z = 2 * torch.eye(s.shape[0], dtype=s.dtype, device=s.device) - 1
    return torch.nn.functional.softplus(-z * s)


def pairwise_learnability(learner_logits, reference_logits):
    """``A = L_learner - L_reference`` of the sigmoid pair losses (``B x B``)."""
    a, b = _matrix(learner_logits, "learner_logits"), _matrix(reference_logits, "reference_logits")
    if a.shape != b.shape:
        raise ValueError(f"learner_logits {tuple(a.shape)} and reference_logits {tuple(b.shape)} differ; score one super-batch")
    return sigmoid_pair_losses(a) - sigmoid_pair_losses(b.to(a.dtype).to(a.device))


class _SigmoidScores:
    """Conditional learnability ``A_ii + sum_{j in S}(A_ij + A_ji)``, updated block by block."""

    def __init__(self, learnability):
        self.a = learnability
        self.cond = learnability.diagonal().clone()

    def add(self, block) -> None:
        self.cond += self.a[:, block].sum(1) + self.a[block, :].sum(0)


class _SoftmaxScores:
    """Exact marginal increase of the two-way InfoNCE loss of the chosen set, learner minus reference."""

    def __init__(self, learner, reference):
        import torch

        self.s = (learner, reference)
        n = learner.shape[0]
        self.row = [torch.full((n,), -torch.inf, dtype=x.dtype, device=x.device) for x in self.s]
        self.col = [r.clone() for r in self.row]
        self.chosen = torch.zeros(0, dtype=torch.int64, device=learner.device)
        self.cond = self._full(learner) - self._full(reference)

    @staticmethod
    def _full(s):
        import torch

        return 0.5 * (-torch.log_softmax(s, 1).diagonal() - torch.log_softmax(s, 0).diagonal())

    def _marginal(self, m: int):
        import torch

        s, row, col = self.s[m], self.row[m], self.col[m]
        d = s.diagonal()
        own = 0.5 * (torch.logaddexp(row, d) - d + torch.logaddexp(col, d) - d)
        if self.chosen.shape[0] == 0:
            return own
        c = self.chosen
        sp = torch.nn.functional.softplus
        cross = 0.5 * (sp(s[c, :] - row[c, None]).sum(0) + sp(s[:, c] - col[None, c]).sum(1))
        return own + cross

    def add(self, block) -> None:
        import torch

        for m, s in enumerate(self.s):
            self.row[m] = torch.logaddexp(self.row[m], torch.logsumexp(s[:, block], 1))
            self.col[m] = torch.logaddexp(self.col[m], torch.logsumexp(s[block, :], 0))
        self.chosen = torch.cat([self.chosen, block])
        self.cond = self._marginal(0) - self._marginal(1)


def _chosen_tensor(chosen, n: int, device):
    import torch

    ids = check_ids(np.asarray(chosen, np.int64).reshape(-1), "chosen")
    if ids.shape[0] and ids.max() >= n:
        j = int(np.argmax(ids >= n))
        raise ValueError(f"chosen[{j}] = {int(ids[j])} is outside the super-batch [0, {n})")
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise ValueError("chosen has repeated positions; blocks are drawn without replacement")
    return torch.from_numpy(ids).to(device)


def conditional_learnability(learnability, chosen=()):
    """Sigmoid-mode score of every candidate given the chosen positions ``chosen`` (a 1-D vector).

    Example:
        >>> import torch
        >>> from packwise.selection import conditional_learnability
        >>> A = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 3.0]])
        >>> conditional_learnability(A, [0]).tolist()  # A_ii + A_i0 + A_0i
        [3.0, 2.5, 3.0]
    """
    a = _matrix(learnability, "learnability")
    state = _SigmoidScores(a)
    c = _chosen_tensor(chosen, a.shape[0], a.device)
    if c.shape[0]:
        state.add(c)
    return state.cond


def softmax_conditional_learnability(learner_logits, reference_logits, chosen=()):
    """Softmax-mode score of every candidate given ``chosen``: with nothing chosen, each example's
    learnability against the whole super-batch; else the exact increase of the chosen set's loss."""
    a, b = _matrix(learner_logits, "learner_logits"), _matrix(reference_logits, "reference_logits")
    state = _SoftmaxScores(a, b.to(a.dtype).to(a.device))
    c = _chosen_tensor(chosen, a.shape[0], a.device)
    if c.shape[0]:
        state.add(c)
    return state.cond


class JEST(_PointwiseSelector):
    """Select ``round((1 - filter_ratio) * B)`` of each super-batch of ``B`` by learnability.

    ``mode="pointwise"``: :meth:`select` takes per-example ``learner`` losses and ``reference``
    losses (or ids looked up in ``reference``, a :class:`ReferenceScores`), gathered across DDP
    ranks; ``policy`` / ``beta`` rank them (see :mod:`packwise.selection.policies`).
    ``mode="pairwise"``: :meth:`select` takes the ``B x B`` learner and reference logits of the
    whole super-batch (gather each rank's embeddings with :func:`gather_rows`), ``loss`` says
    which contrastive loss they feed, and the sub-batch is drawn in ``n_chunks`` blocks (see the
    module docstring for the exact scores).  Seeded by ``(seed, step)``; identical on every rank.

    Example:
        >>> import torch
        >>> from packwise.selection import JEST
        >>> A = torch.tensor([[3.0, 0, 0, 0], [0, 2.0, 0, 5.0], [0, 0, 1.0, 0], [0, 5.0, 0, 0.0]])
        >>> jest = JEST("pairwise", filter_ratio=0.25, n_chunks=3, beta=1e6)  # keep 3 of 4, one per block
        >>> sel = jest.select_learnability(torch.arange(10, 14), A)
        >>> [b.tolist() for b in sel.blocks], sel.ids.tolist()  # 3 is worth taking once 1 is in
        ([[0], [1], [3]], [10, 11, 13])
        >>> one_block = JEST("pairwise", filter_ratio=0.25, n_chunks=1, beta=1e6)  # = top-k of the diagonal
        >>> one_block.select_learnability(torch.arange(10, 14), A).ids.tolist()
        [10, 11, 12]
    """

    _kind = "jest"

    def __init__(
        self,
        mode: str = "pointwise",
        reference=None,
        filter_ratio: float = 0.8,
        *,
        n_chunks: int = 16,
        loss: str = "sigmoid",
        policy: str = "softmax",
        beta: float = 1.0,
        seed: int = 0,
        threshold: float | None = None,
        importance_weights: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (pairwise for contrastive losses), got {mode!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES} (the contrastive loss the logits feed), got {loss!r}")
        if mode == "pairwise" and policy != "softmax":
            raise ValueError(
                f"pairwise mode samples every block from softmax(beta * conditional learnability); policy={policy!r} "
                f"applies to mode='pointwise' only (use a large beta for near-greedy blocks)"
            )
        super().__init__(reference, filter_ratio, policy, beta, seed, threshold, importance_weights)
        self.mode = mode
        self.n_chunks = as_int(n_chunks, "n_chunks", 1)
        self.loss = loss

    def _settings(self) -> dict:
        return {**super()._settings(), "mode": self.mode, "n_chunks": self.n_chunks, "loss": self.loss}

    def select(self, ids, learner, reference=None, *, k: int | None = None) -> BatchSelection:
        """Pointwise: ``learner`` / ``reference`` are per-example losses of this rank's share.
        Pairwise: ``B x B`` learner and reference logits of the whole super-batch, ``ids`` its ids."""
        if self.mode == "pointwise":
            if getattr(learner, "ndim", 1) != 1:
                raise ValueError(
                    f"mode='pointwise' takes per-example losses (1-D), got shape {tuple(learner.shape)}; for B x B "
                    f"contrastive logits use JEST('pairwise')"
                )
            return super().select(ids, learner, reference, k=k)
        if reference is None:
            raise ValueError("mode='pairwise' needs reference= (the reference model's B x B logits of the super-batch)")
        a = _matrix(learner, "learner_logits")
        if getattr(reference, "shape", None) is not None and tuple(reference.shape) != tuple(a.shape):
            raise ValueError(
                f"learner_logits {tuple(a.shape)} and reference_logits {tuple(reference.shape)} differ; score one "
                f"super-batch with both models"
            )
        if self.loss == "sigmoid":
            return self._blocked(ids, _SigmoidScores(pairwise_learnability(a, reference)), k)
        b = _matrix(reference, "reference_logits").to(a.dtype).to(a.device)
        return self._blocked(ids, _SoftmaxScores(a, b), k)

    def select_learnability(self, ids, learnability, *, k: int | None = None) -> BatchSelection:
        """Pairwise blocked sampling from a given ``B x B`` learnability matrix (sigmoid-style sums)."""
        if self.mode != "pairwise":
            raise ValueError("select_learnability is the pairwise sampler; build JEST('pairwise')")
        return self._blocked(ids, _SigmoidScores(_matrix(learnability, "learnability")), k)

    def block_logits(self, learnability, chosen=()) -> np.ndarray:
        """The logits (``beta * conditional learnability``, ``-inf`` at chosen positions) that the
        next block is drawn from; with nothing chosen, the first block's ``beta * A_ii``."""
        cond = conditional_learnability(learnability, chosen).double().cpu().numpy()
        out = self.beta * cond
        out[np.asarray(chosen, np.int64)] = -np.inf
        return out

    def _block_sizes(self, k: int) -> np.ndarray:
        base, extra = divmod(k, self.n_chunks)
        return np.array([base + (c < extra) for c in range(self.n_chunks)], np.int64)

    def _blocked(self, ids, state, k) -> BatchSelection:
        import torch

        ids = check_ids(ids)
        n = int(state.cond.shape[0])
        if ids.shape[0] != n:
            raise ValueError(f"ids has {ids.shape[0]} entries but the logits are {n} x {n}; pass the super-batch's ids")
        k = self._k(k, n)
        diag = state.cond.double().cpu().numpy().astype(np.float32)
        taken = np.zeros(n, np.bool_)
        blocks = []
        for c, size in enumerate(self._block_sizes(k).tolist()):
            if size == 0:
                continue
            logits = self.beta * state.cond.double().cpu().numpy()
            logits[taken] = -np.inf
            logits -= logits[~taken].max()
            keys = _kernels.exponential_keys(logits, rng(self.seed, self.step, 3, c).standard_exponential(n))
            block, _ = _kernels.bottom_k(keys, size)
            taken[block] = True
            blocks.append(block)
            if int(taken.sum()) < k:
                state.add(torch.from_numpy(block).to(state.cond.device))
        positions = np.flatnonzero(taken).astype(np.int64)
        selection = BatchSelection(
            ids[positions], positions, np.ones(k, np.float32), diag, ids, self.step, tuple(blocks)
        )
        self.step += 1
        return selection
