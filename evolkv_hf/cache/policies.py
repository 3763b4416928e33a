"""Selection policies: which prompt positions a layer keeps, as pure tensor functions.

A policy turns what a layer saw during the prefill into one score per prefix position and KV head. The
layer then keeps the ``budget - window`` best-scored prefix positions plus the observation window (the
last prompt tokens), in their original order. Pad positions always score ``-inf``, so they are evicted
first and, when a budget is larger than a row's real length, the kept pads sit first (left padding).

Two policies ship:

* ``"snapkv"``: SnapKV (Li et al., 2024). The softmax attention of the window queries to the prefix,
  averaged over the window, pooled over ``kernel_size`` neighbours, aggregated over the query heads of each
  KV head (GQA).
* ``"streaming"``: StreamingLLM (Xiao et al., 2024). A few attention-sink tokens (the first real tokens)
  plus the most recent ones. It needs no queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._validation import GQA_AGGREGATIONS, POLICIES, POOLINGS, check_positive_int


@dataclass(frozen=True)
class ScoringOptions:
    """How prefix positions are scored (the parameters of a policy).

    Attributes
    ----------
    policy:
        ``"snapkv"`` or ``"streaming"``.
    window_size:
        Number of last prompt tokens whose queries observe the prefix; they are always kept.
    kernel_size:
        Width of the 1D pooling applied to the window attention (SnapKV's clustering).
    pooling:
        ``"avg"`` or ``"max"`` pooling.
    gqa_aggregation:
        How the query heads of one KV head are combined: ``"mean"`` or ``"max"``.
    num_sink_tokens:
        Sink tokens kept by the ``"streaming"`` policy.
    """

    policy: str = "snapkv"
    window_size: int = 32
    kernel_size: int = 7
    pooling: str = "avg"
    gqa_aggregation: str = "mean"
    num_sink_tokens: int = 4

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        if self.gqa_aggregation not in GQA_AGGREGATIONS:
            raise ValueError(
                f"gqa_aggregation must be one of {GQA_AGGREGATIONS}, got {self.gqa_aggregation!r}."
            )
        # Frozen: store plain ints (numpy integers are accepted) through object.__setattr__.
        object.__setattr__(self, "window_size", check_positive_int("window_size", self.window_size))
        object.__setattr__(self, "kernel_size", check_positive_int("kernel_size", self.kernel_size))
        object.__setattr__(
            self, "num_sink_tokens", check_positive_int("num_sink_tokens", self.num_sink_tokens, minimum=0)
        )

    @property
    def needs_queries(self) -> bool:
        """Whether the policy scores with the observation-window queries."""
        return self.policy == "snapkv"


@torch.no_grad()
def snapkv_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_valid: torch.Tensor | None,
    *,
    scaling: float,
    prefix_length: int,
    kernel_size: int = 7,
    pooling: str = "avg",
    gqa_aggregation: str = "mean",
    softcap: float | None = None,
) -> torch.Tensor:
    """Score prefix positions by the window's attention to them (SnapKV).

    Parameters
    ----------
    queries:
        ``(batch, num_heads, w, head_dim)`` queries of the last ``w`` prompt tokens, after RoPE.
    keys:
        ``(batch, num_kv_heads, seq, head_dim)`` keys of the whole prompt, after RoPE.
    key_valid:
        ``(batch, seq)`` boolean, ``False`` for pad tokens; ``None`` when nothing is padded.
    scaling:
        The attention module's softmax scaling.
    prefix_length:
        Number of leading positions to score (``seq`` minus the kept window).

    Returns
    -------
    torch.Tensor
        ``(batch, num_kv_heads, prefix_length)`` float32 scores; pads are ``-inf``.
    """
    batch, num_heads, window, head_dim = queries.shape
    num_kv_heads, seq = keys.shape[1], keys.shape[2]
    groups = num_heads // num_kv_heads
    # One matmul per KV head for all its query heads: (batch, kv, groups * w, seq). The product runs in the
    # keys' dtype, as the attention itself computes it (half-precision matmuls are several times faster), with
    # the scaling applied to the queries first so that float16 logits cannot overflow; everything after it runs
    # in float32. Keys usually arrive as a transposed view of the projection: a contiguous copy makes the matmul
    # faster.
    q = (queries.reshape(batch, num_kv_heads, groups * window, head_dim).float() * scaling).to(keys.dtype)
    logits = torch.matmul(q, keys.contiguous().transpose(-1, -2)).float()
    if softcap is not None:
        logits.div_(softcap).tanh_().mul_(softcap)
    grouped = logits.view(batch, num_kv_heads, groups, window, seq)
    # Causality only bites inside the window: query i (position seq - w + i) must not see the later window keys.
    future = torch.ones(window, window, dtype=torch.bool, device=keys.device).triu_(1)
    grouped[..., seq - window :].masked_fill_(future, float("-inf"))
    if key_valid is not None:
        query_valid = key_valid[:, seq - window :]  # (batch, w)
        grouped.masked_fill_(~key_valid[:, None, None, None, :], float("-inf"))
        # Pad queries are left out of the average: empty their rows, whatever they saw (right padding) or held.
        grouped.masked_fill_(~query_valid[:, None, None, :, None], float("-inf"))
    # The softmax, written out so that it runs in place on the one large buffer: on CPU, allocating and first
    # touching fresh (groups * w, seq) buffers costs more than the arithmetic. The normalisation and the
    # average over the window are then one small matmul: mean_i exp_i / sum_i = (1 / (n * sum)) @ exp.
    row_max = logits.amax(dim=-1, keepdim=True)
    if key_valid is not None:
        row_max.masked_fill_(row_max == float("-inf"), 0.0)  # an emptied row stays all zero, not NaN
    # A real query sees at least itself, so its row sums to >= 1 (exp(0) at the maximum); emptied rows sum to 0
    # and get no weight below.
    row_sum = logits.sub_(row_max).exp_().sum(dim=-1)  # (batch, kv, groups * w)
    row_weight = row_sum.clamp_min_(1.0).reciprocal_().view(batch, num_kv_heads, groups, window)
    if key_valid is not None:
        counts = query_valid.sum(dim=-1).clamp(min=1).to(row_weight.dtype)
        row_weight = row_weight * query_valid[:, None, None, :] / counts.view(batch, 1, 1, 1)
    else:
        row_weight = row_weight / window
    # Average pooling and the mean over query heads are linear: reduce the window and the query heads in one
    # product and pool one row per KV head. Max pooling or max aggregation must pool each query head first.
    linear = pooling == "avg" and gqa_aggregation == "mean"
    if linear:
        weights = (row_weight / groups).reshape(batch, num_kv_heads, 1, groups * window)
        observed = torch.matmul(weights, logits[..., :prefix_length]).squeeze(-2)  # (batch, kv, prefix)
    else:
        # (batch, kv, groups, prefix)
        observed = torch.matmul(row_weight.unsqueeze(-2), grouped[..., :prefix_length]).squeeze(-2)
    if kernel_size > 1 and prefix_length > 0:
        shape = observed.shape
        flat = observed.reshape(-1, 1, prefix_length)
        pad = kernel_size // 2
        if pooling == "avg":
            flat = F.avg_pool1d(flat, kernel_size, stride=1, padding=pad)
        else:
            flat = F.max_pool1d(flat, kernel_size, stride=1, padding=pad)
        observed = flat[..., :prefix_length].reshape(shape)
    if linear:
        scores = observed
    else:
        scores = observed.mean(dim=2) if gqa_aggregation == "mean" else observed.amax(dim=2)
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, :prefix_length], float("-inf"))
    return scores


def streaming_scores(
    key_valid: torch.Tensor | None,
    *,
    batch: int,
    num_kv_heads: int,
    prefix_length: int,
    num_sink_tokens: int,
    device: torch.device,
) -> torch.Tensor:
    """Score prefix positions for StreamingLLM: sinks first, then recency.

    The first ``num_sink_tokens`` real (non-pad) tokens of each row score ``+inf``; the others score their
    position, so the most recent ones win; pads score ``-inf``.

    Returns
    -------
    torch.Tensor
        ``(batch, num_kv_heads, prefix_length)`` float32 scores.
    """
    positions = torch.arange(prefix_length, device=device, dtype=torch.float32)
    scores = positions.expand(batch, prefix_length).clone()
    if key_valid is not None:
        valid = key_valid[:, :prefix_length]
        real_index = valid.long().cumsum(dim=-1) - 1  # 0 for the first real token
        scores = scores.masked_fill(valid & (real_index < num_sink_tokens), float("inf"))
        scores = scores.masked_fill(~valid, float("-inf"))
    else:
        scores[:, : min(num_sink_tokens, prefix_length)] = float("inf")
    return scores[:, None, :].expand(batch, num_kv_heads, prefix_length)


def rank_positions(scores: torch.Tensor) -> torch.Tensor:
    """Prefix positions from best to worst score, ``(batch, num_kv_heads, prefix)`` int64.

    A stable sort, so that ties (pads all score ``-inf``) break the same way everywhere: keeping the first
    ``k`` ranked positions is the selection for every budget, which the fast search engine relies on.
    """
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def select_positions(scores: torch.Tensor, keep_prefix: int, seq: int, window: int) -> torch.Tensor:
    """Pick the kept positions: the ``keep_prefix`` best-scored prefix positions plus the window.

    The same selection as the first ``keep_prefix`` positions of :func:`rank_positions`: a partial top-k
    when the ``keep_prefix``-th and next scores differ in every row (the kept set is then unique), the stable
    sort otherwise (ties, such as pads that must be kept).

    Parameters
    ----------
    scores:
        ``(batch, num_kv_heads, seq - window)`` scores.
    keep_prefix:
        How many prefix positions to keep (``0 <= keep_prefix <= seq - window``).
    seq, window:
        Prompt length and number of trailing positions always kept.

    Returns
    -------
    torch.Tensor
        ``(batch, num_kv_heads, keep_prefix + window)`` int64 positions in increasing order.
    """
    prefix = scores.shape[-1]
    if 0 < keep_prefix < prefix:
        values, indices = torch.topk(scores, keep_prefix + 1, dim=-1, sorted=True)
        if bool((values[..., keep_prefix - 1] > values[..., keep_prefix]).all()):
            batch, num_kv_heads, _ = scores.shape
            top = indices[..., :keep_prefix].sort(dim=-1).values
            tail = torch.arange(seq - window, seq, device=scores.device).expand(batch, num_kv_heads, window)
            return torch.cat([top, tail], dim=-1)
    return positions_from_ranking(rank_positions(scores), keep_prefix, seq, window)


def positions_from_ranking(ranking: torch.Tensor, keep_prefix: int, seq: int, window: int) -> torch.Tensor:
    """The first ``keep_prefix`` ranked positions in increasing order, followed by the window."""
    batch, num_kv_heads, _ = ranking.shape
    top = ranking[..., :keep_prefix].sort(dim=-1).values
    tail = torch.arange(seq - window, seq, device=ranking.device).expand(batch, num_kv_heads, window)
    return torch.cat([top, tail], dim=-1)
