"""The online trainer of both tiers: score (progressive validation), then train, one micro-batch at a time.

``method="ghcl"`` trains the light tier on the harmonized easy and hard paths and the
expressive tier on the hard path (the plausible items DAMR routes to it); the baselines train
both tiers with one loss: ``method="mixed"``, one pointwise BCE over all sources, and ``method="softmax"``, one
within-request softmax of each positive against every negative pooled (no paths, no
harmonization). ``harmonize_gradients``, ``conflict_sampling`` and ``prior`` switch GHCL's
parts off for ablations, and ``gate`` the tiers' plausibility gate.

Which path moves what (GHCL's light tier): by default the replay's constructed ranking negatives
(``rn``, ordered by a made-up reference scorer) sit on the easy path with ``gn`` and ``prn``
(``rn_path="easy"``), so the hard path is the real labels alone (``exp_pos`` against
``exp_neg``); the wide part learns from the hard path only (``wide_paths="hard"``); the gate
learns "was shown" (every exposed item against the constructed negatives, a logistic loss on the
easy path, ``gate_paths="shown"``), so that it saturates on exposed items and cannot re-order
them (``"easy"``: the gate on the easy path's softmax; ``"both"``: on both paths); the preference
head learns from both. The expressive tier trains on the hard path's items.
``residual_l2`` adds ``λ · mean(preference²)`` over the exposed items to the hard path: the
learned residual is shrunk towards the wide part unless the real labels pay for it. Embedding tables use
Adagrad, so a row without gradient never moves and the rows touched since the last publish are
exactly the delta to send.

Examples
--------
>>> from streams.contract.schemas import SampleGroup, SampleItem
>>> items = [SampleItem("a", "exp_pos", 1, 0, 0, "video"), SampleItem("b", "exp_neg", 0, 1, 1, "video"),
...          SampleItem("c", "gn", 0, None, None, "news")]
>>> t = OnlineTrainer(method="ghcl", seed=0)
>>> report = t.step([SampleGroup("g1", "r1", "u1", 0, 0, items)])
>>> report.samples, t.steps
(3, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from feature_store.policies import DAMR_BUDGET, budget_count, score_policy
from feature_store.registry import METHODS
from learner.batching import EASY, HARD, SOURCE_CODE, Batch
from learner.distributed import Reducer
from learner.ghcl import ConflictSampler, contrastive_path_loss, harmonize, path_positives
from learner.mixing import MixSelector
from learner.models import DENSE_HIDDEN, ExpressiveCross, LightTwoTower, Tier, combine
from learner.progressive import ProgressiveMetrics
from streams.contract.schemas import SOURCES, SampleGroup

# The id tables' gradients are sparse tensors built from unique sorted rows; torch's invariant
# checks stay off (its default), said explicitly so that it does not warn on every step.
torch.sparse.check_sparse_tensor_invariants.disable()

NEGATIVE = tuple(code for name, code in SOURCE_CODE.items() if name != "exp_pos")
REAL_NEGATIVE = (SOURCE_CODE["exp_neg"],)
GATE_PATHS = ("shown", "easy", "both")
#: shrinkage of the light tier's learned preference towards the wide part (chosen on the EB-NeRD dev split)
RESIDUAL_L2 = 1.0
DROPPABLE = (SOURCE_CODE["rn"],)  # constructed hard negatives; exp_neg (real labels) is never dropped


@dataclasses.dataclass(frozen=True, slots=True)
class StepReport:
    samples: int
    losses: dict[str, float]
    grad_cosine: float | None
    grad_norms: dict[str, float]
    hard_share: float


class OnlineTrainer:
    """Both tiers, their optimizers and the progressive metrics of three scorers."""

    def __init__(self, method: str = "ghcl", *, dim: int = 16, lr: float = 0.01, emb_lr: float = 0.05,
                 k: int = 10, damr_budget: float = DAMR_BUDGET, temperature: float = 1.0, seed: int = 0,
                 harmonize_gradients: bool = True, conflict_sampling: bool = True, prior: bool = True,
                 gate: bool = True, rn_path: str = "easy", wide_paths: str = "hard", gate_paths: str = "shown",
                 residual_l2: float = RESIDUAL_L2, mix_selection: bool = True, device: str = "cpu",
                 extra_budgets: tuple[float, ...] = (), measure_conflict: bool = False,
                 keep_requests: bool = False, dense_hidden: int = DENSE_HIDDEN, reducer: Reducer | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        torch.manual_seed(seed)
        self.device = resolve_device(device)
        #: the data-parallel ranks this trainer steps with (``learner.distributed``; one by default)
        self.reducer = reducer or Reducer()
        self.method = method
        self.temperature = temperature
        self.harmonize_gradients = harmonize_gradients
        self.conflict_sampling = conflict_sampling
        self.budgets = {"damr": damr_budget, **{f"damr@{b:g}": b for b in extra_budgets}}
        self.measure_conflict = measure_conflict
        if rn_path not in ("easy", "hard") or wide_paths not in ("hard", "both") or gate_paths not in GATE_PATHS:
            raise ValueError(f"rn_path easy|hard, wide_paths hard|both, gate_paths {'|'.join(GATE_PATHS)}; "
                             f"got {rn_path!r}, "
                             f"{wide_paths!r}, {gate_paths!r}")
        self.rn_path, self.wide_paths, self.gate_paths = rn_path, wide_paths, gate_paths
        self.residual_l2 = residual_l2
        #: GHCL serves (1 - α) light + α counters, α picked by progressive validation (``learner.mixing``)
        self.mixer = MixSelector() if mix_selection and method == "ghcl" and prior else None
        self.light = LightTwoTower(dim=dim, prior=prior, gate=gate, dense_hidden=dense_hidden).to(self.device)
        self.expressive = ExpressiveCross(dim=dim, prior=prior, gate=gate).to(self.device)
        self.optimizers = [opt for m in (self.light, self.expressive) for opt in _optimizers(m, lr, emb_lr)]
        self.sampler = ConflictSampler(seed=seed)
        self.k, self.keep_requests = k, keep_requests
        self.metrics, self.expressive_evals = self._new_metrics()
        self.touched: dict[str, dict[str, set[int]]] = {"light": {}, "expressive": {}}
        self.steps = 0
        self.samples_seen = 0

    def _new_metrics(self) -> tuple[dict[str, ProgressiveMetrics], dict[str, int]]:
        metrics = {name: ProgressiveMetrics(self.k, keep_requests=self.keep_requests)
                   for name in ("light", *self.budgets, "expressive_all")}
        return metrics, dict.fromkeys(self.budgets, 0)  # expressive scorings, summed over groups

    def take_metrics(self) -> tuple[dict[str, ProgressiveMetrics], dict[str, int]]:
        """The progressive metrics and expressive-eval counts since the previous call (or the
        start), then restarted: how an evaluation reports disjoint blocks of the stream."""
        taken = self.metrics, self.expressive_evals
        self.metrics, self.expressive_evals = self._new_metrics()
        return taken

    def quality(self) -> dict[str, dict]:
        """Each scorer's progressive metrics (:meth:`ProgressiveMetrics.report`), their counts summed
        over the ranks (every rank calls it at once)."""
        return {n: self.metrics[n].with_counts(c).report() for n, c in self._summed_counts().items()}

    def fold_metrics(self) -> None:
        """Move every rank's progressive counts to rank 0 (their sum, what :meth:`quality` reports,
        is unchanged): rank 0's checkpoint then holds them all."""
        if self.reducer.world == 1:
            return
        fresh, _ = self._new_metrics()
        self.metrics = {n: self.metrics[n].with_counts(c) if self.reducer.rank == 0 else fresh[n]
                        for n, c in self._summed_counts().items()}

    def _summed_counts(self) -> dict[str, np.ndarray]:
        """Each scorer's progressive counts (:meth:`ProgressiveMetrics.counts`) summed over the ranks."""
        names = list(self.metrics)
        summed = self.reducer.sum(torch.as_tensor(np.stack([self.metrics[n].counts() for n in names])))
        return dict(zip(names, summed.numpy(), strict=True))

    # -- progressive validation ---------------------------------------------------------
    def _scored(self, batch: Batch, expressive_rows: torch.Tensor | None = None
                ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Both tiers' scores of ``batch`` for training, after the progressive metrics recorded
        them (the weights are still those from before this batch; one forward pass serves both):
        the light tier's as its parts (``LightTwoTower.parts``) and its counters model's score, the
        expressive tier's whole; last, the batch's evidence for the mixing weight (empty without a
        mixer), which :meth:`_totals` adds up over the ranks.

        With ``expressive_rows`` (a mask) the expressive tier is trained on those rows only: it
        scores the whole batch for the metrics without gradients, and returns the scores of the
        rows, with gradients."""
        parts = self.light.parts(batch.users, batch.items, batch.group)
        counter = self.light.counter_score(batch.items)
        full = combine(*parts).detach()
        light = self.light.served(full, None if counter is None else counter.detach())  # the served score
        if expressive_rows is None:
            expressive = self.expressive(batch.users, batch.items, batch.group)
            scored = expressive.detach()
        else:
            with torch.no_grad():
                scored = self.expressive(batch.users, batch.items, batch.group)
            items = {k: v[expressive_rows] for k, v in batch.items.items()}
            expressive = self.expressive(batch.users, items, batch.group[expressive_rows])
        self._record(batch, light.cpu().numpy(), scored.cpu().numpy())
        evidence = torch.zeros(0, dtype=torch.float64)
        if self.mixer is not None:  # this batch was scored before training on it: evidence for the next
            exposed = batch.mask(REAL_NEGATIVE) | (batch.source == SOURCE_CODE["exp_pos"])
            positive = (batch.source == SOURCE_CODE["exp_pos"])[exposed]
            evidence = torch.as_tensor(self.mixer.evidence(
                full[exposed].cpu().numpy().astype(np.float64),
                (counter.detach() - full)[exposed].cpu().numpy().astype(np.float64),
                batch.group[exposed].cpu().numpy(), positive.cpu().numpy()))
        return parts, counter, expressive, evidence

    def _totals(self, counts: list[int], evidence: torch.Tensor) -> list[float]:
        """``counts`` (the step's losses' denominators) summed over the ranks; the mixing weight's
        ``evidence`` too, added to the selector (``learner.mixing``): one reduction."""
        summed = self.reducer.sum(torch.cat([torch.tensor(counts, dtype=torch.float64), evidence]))
        if self.mixer is not None:
            self.mixer.add(summed[len(counts):].numpy())
            self.light.fallback.fill_(self.mixer.beta)
        return summed[:len(counts)].tolist()

    def _record(self, batch: Batch, light: np.ndarray, expressive: np.ndarray) -> None:
        group, names = batch.group.cpu().numpy(), np.array(SOURCES)[batch.source.cpu().numpy()]
        k = self.metrics["light"].k
        routed = {name: light.astype(np.float64) for name in self.budgets}
        for g in range(batch.n_groups):
            rows = np.flatnonzero(group == g)
            light_g, expressive_g = light[rows], expressive[rows]
            for name, budget in self.budgets.items():
                # the group's scores are computed already: the tiers are "asked" by slicing them
                routed[name][rows], hard = score_policy("damr", k, budget_count(len(rows), budget),
                                                        light_g.copy, expressive_g.__getitem__)
                self.expressive_evals[name] += len(hard)
        for name, scores in (("light", light), *routed.items(), ("expressive_all", expressive)):
            self.metrics[name].update(scores, group, names, batch.rank_pos)

    # -- training -----------------------------------------------------------------------
    def step(self, groups: list[SampleGroup]) -> StepReport:
        """Evaluate (progressive validation), then train one micro-batch of groups: with several
        ranks (``reducer``), every rank at once, each on its own groups (possibly none), and every
        rank takes the step one trainer would take on all of their groups."""
        batch = Batch.from_groups(groups).to(self.device)
        start, total = self.reducer.offset(len(batch.label))
        if self.method == "ghcl":
            report = self._train_ghcl(batch, start, total)
        elif self.method == "mixed":
            report = self._train_single(batch, "mixed", [total], lambda scores, n: F.binary_cross_entropy_with_logits(
                scores, batch.label, reduction="sum") / max(n, 1.0))
        else:
            positive, negative = batch.source == SOURCE_CODE["exp_pos"], batch.mask(NEGATIVE)
            report = self._train_single(
                batch, "softmax", [path_positives(batch.group, positive, negative, batch.n_groups)],
                lambda scores, n: contrastive_path_loss(scores, batch.group, positive, negative, batch.n_groups,
                                                        self.temperature, count=n))
        self.steps += 1
        self.samples_seen += total
        return report

    def _train_single(self, batch: Batch, name: str, counts: list[int],
                      loss_of: Callable[[torch.Tensor, float], torch.Tensor]) -> StepReport:
        """Both tiers on one loss of their scores (the baselines); ``loss_of`` takes the scores and
        the loss's denominator over every rank (``counts`` of this rank, summed)."""
        parts, _, expressive, evidence = self._scored(batch)
        (denominator,) = self._totals(counts, evidence)
        values = []
        for model, scores in zip((self.light, self.expressive), (combine(*parts), expressive), strict=True):
            loss = loss_of(scores, denominator)
            model.zero_grad()
            loss.backward()
            values.append(loss.detach())
        losses = dict(zip((name, "expressive"), self.reducer.sum(torch.stack(values)).tolist(), strict=True))
        self._sum_gradients(self.light, self.expressive)
        cosine = self._measure_conflict(batch) if self.measure_conflict else None
        self._apply()
        return StepReport(len(batch.label), losses, cosine, {}, 1.0)

    def _sum_gradients(self, *modules: torch.nn.Module) -> None:
        """Replace the gradients of ``modules``' parameters with their sums over the ranks."""
        if self.reducer.world == 1:
            return
        params, sparse = _parameters(*modules)
        for param, grad in zip(params, self.reducer.sum_gradients(params, [p.grad for p in params], sparse),
                               strict=True):
            param.grad = grad

    def _measure_conflict(self, batch: Batch) -> float:
        """Cosine of the GHCL paths' gradients at the current weights (observed, not applied; each
        path's loss the mean over this rank's positives)."""
        scores = self.light(batch.users, batch.items, batch.group)
        positive = batch.source == SOURCE_CODE["exp_pos"]
        paths = [contrastive_path_loss(scores, batch.group, positive, batch.mask(m), batch.n_groups)
                 for m in (EASY, HARD)]
        params, sparse = _parameters(self.light)
        g_easy, g_hard = (self.reducer.sum_gradients(params, grads, sparse)
                          for grads in path_gradients(self.light, *paths))
        return _cosine(*flat_gradients(self.light, g_easy, g_hard)[:2])

    def _train_ghcl(self, batch: Batch, start: int, total: int) -> StepReport:
        """GHCL's step; ``start`` and ``total``: this rank's first item among the step's items of
        every rank, and their number (:meth:`learner.distributed.Reducer.offset`)."""
        keep = (self.sampler.keep(batch.mask(DROPPABLE), start, total).to(batch.source.device)
                if self.conflict_sampling else None)

        def mask(codes: tuple[int, ...]) -> torch.Tensor:
            return batch.mask(codes) if keep is None else batch.mask(codes) & keep

        positive = batch.source == SOURCE_CODE["exp_pos"]
        rn = (SOURCE_CODE["rn"],)
        easy_codes, hard_codes = (EASY + rn, REAL_NEGATIVE) if self.rn_path == "easy" else (EASY, HARD)
        hard_rows = mask(hard_codes) | positive  # the expressive tier's training set: the hard path
        (wide, preference, gate), counter, x, evidence = self._scored(batch, hard_rows)
        exposed = positive | batch.mask(REAL_NEGATIVE)
        # every loss is a sum over this rank's items divided by its count over every rank: the
        # ranks' gradients add up to the gradient of the mean over all of their items
        n_easy, n_hard, n_exposed, n_counter, n_x = self._totals([
            path_positives(batch.group, positive, mask(easy_codes), batch.n_groups),
            path_positives(batch.group, positive, mask(hard_codes), batch.n_groups),
            int(exposed.sum()),
            path_positives(batch.group, positive, mask(REAL_NEGATIVE), batch.n_groups),
            path_positives(batch.group[hard_rows], positive[hard_rows], mask(hard_codes)[hard_rows], batch.n_groups),
        ], evidence)
        # each path moves only the parts it is meant to: the wide part learns from real labels,
        # the gate from the constructed negatives (unless an ablation lets both paths move them)
        shown = self.gate_paths == "shown"
        wide_easy = wide if self.wide_paths == "both" else wide.detach()
        gate_easy = None if gate is None else gate.detach() if shown else gate
        gate_hard = None if gate is None else gate if self.gate_paths == "both" else gate.detach()
        args = (batch.group, positive)
        easy = contrastive_path_loss(combine(wide_easy, preference, gate_easy), *args, mask(easy_codes),
                                     batch.n_groups, self.temperature, count=n_easy)
        hard = contrastive_path_loss(combine(wide, preference, gate_hard), *args, mask(hard_codes), batch.n_groups,
                                     self.temperature, count=n_hard)
        if shown and gate is not None:  # the gate learns "was shown" (every exposed item) against the constructed
            easy = easy + F.binary_cross_entropy_with_logits(gate, exposed.to(gate.dtype), reduction="sum") / total
        if self.residual_l2 > 0:  # shrink the learned residual towards the wide part on real-label items
            hard = hard + self.residual_l2 * (preference[exposed] ** 2).sum() / n_exposed
        x_loss = contrastive_path_loss(x, batch.group[hard_rows], positive[hard_rows], mask(hard_codes)[hard_rows],
                                       batch.n_groups, self.temperature, count=n_x)
        # every gradient of the step, then their sums over the ranks (one reduction), then the step
        raw_easy, raw_hard = path_gradients(self.light, easy, hard)
        if counter is not None:  # the tier's counters model: its own real-label softmax, as the counters arm,
            # applied beside the harmonized paths (it would otherwise loosen the cap on the easy path)
            loss = contrastive_path_loss(counter, *args, mask(REAL_NEGATIVE), batch.n_groups, count=n_counter)
            self.light.counter.zero_grad()
            if loss.requires_grad:
                loss.backward(inputs=list(self.light.counter.parameters()))
        self.expressive.zero_grad()
        x_loss.backward()
        light, sparse = _parameters(self.light)
        grads = self.reducer.sum_gradients(light + light, [*raw_easy, *raw_hard], sparse + sparse)
        self._sum_gradients(*([self.light.counter] if counter is not None else []), self.expressive)
        g_easy, g_hard, rows = flat_gradients(self.light, grads[:len(light)], grads[len(light):])
        if self.harmonize_gradients:
            combined, cosine = harmonize(g_easy, g_hard)
        else:
            combined, cosine = g_easy + g_hard, _cosine(g_easy, g_hard)
        self.sampler.update(cosine)
        counter_grads = [p.grad for p in self.light.counter.parameters()] if counter is not None else []
        set_gradients(self.light, combined, rows)
        for param, grad in zip(self.light.counter.parameters() if counter is not None else (), counter_grads,
                               strict=True):
            if grad is not None:
                param.grad = grad
        losses = self.reducer.sum(torch.stack([easy.detach(), hard.detach(), x_loss.detach()])).tolist()
        self._apply()
        return StepReport(
            len(batch.label), dict(zip(("easy", "hard", "expressive"), losses, strict=True)),
            cosine, {"easy": float(g_easy.norm()), "hard": float(g_hard.norm())}, self.sampler.share,
        )

    def _apply(self) -> None:
        for tier in (self.light, self.expressive):
            for name in tier.embeddings:
                grad = tier.get_parameter(name).grad
                if grad is not None:
                    # rows looked up but outside every loss (dropped by sampling) carry zeros: they do not move
                    grad = grad.coalesce() if grad.is_sparse else grad
                    rows = (grad.indices()[0][grad.values().abs().sum(1) > 0] if grad.is_sparse
                            else torch.nonzero(grad.abs().sum(1))[:, 0])
                    self.touched[tier.name].setdefault(name, set()).update(rows.tolist())
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad()

    def take_touched(self) -> dict[str, dict[str, np.ndarray]]:
        """Embedding rows changed since the previous call, per tier (then forgotten)."""
        out = {t: {n: np.fromiter(sorted(r), np.int64) for n, r in rows.items()} for t, rows in self.touched.items()}
        self.touched = {"light": {}, "expressive": {}}
        return out

    def tiers(self) -> dict[str, Tier]:
        return {"light": self.light, "expressive": self.expressive}

    def reset_optimizers(self) -> None:
        """Start every optimizer afresh (no moments, no accumulators): for weights that replaced
        those the state belonged to."""
        for opt in self.optimizers:
            fresh = type(opt)([{"params": group["params"]} for group in opt.param_groups], **opt.defaults)
            opt.load_state_dict(fresh.state_dict())


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when a GPU is visible, else the CPU; ``"cpu"`` and ``"cuda[:n]"`` as given.

    >>> resolve_device("cpu").type
    'cpu'
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is visible (use 'cpu' or 'auto')")
    return resolved


def _optimizers(model: Tier, lr: float, emb_lr: float) -> list[torch.optim.Optimizer]:
    emb = [p for n, p in model.named_parameters() if n.endswith("emb.weight")]
    dense = [p for n, p in model.named_parameters() if not n.endswith("emb.weight")]
    return [torch.optim.Adagrad(emb, lr=emb_lr), torch.optim.Adam(dense, lr=lr)]


def _parameters(*modules: torch.nn.Module) -> tuple[list[torch.Tensor], list[bool]]:
    """The parameters of ``modules`` and, for each, whether it is an id table (sparse gradients)."""
    params, sparse = [], []
    for module in modules:
        tables = getattr(module, "embeddings", ())
        for name, param in module.named_parameters():
            params.append(param)
            sparse.append(name in tables)
    return params, sparse


def path_gradients(tier: Tier, *losses: torch.Tensor) -> list[list[torch.Tensor | None]]:
    """Each loss's gradients over ``tier``'s parameters (``None`` for a parameter it does not use)."""
    params = list(tier.parameters())
    return [list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)) for loss in losses]


def flat_gradients(tier: Tier, *grads: list[torch.Tensor | None]) -> tuple[torch.Tensor, ...]:
    """Each list of gradients over ``tier``'s parameters (:func:`path_gradients`) flattened over the
    same coordinates, and the rows those coordinates cover (last; ``None`` for a dense parameter).

    A dense parameter is taken whole; an id table (``tier.embeddings``, sparse gradients) only
    at the rows some list touches. Every other row has a zero gradient in every list, so norms,
    dot products and combinations are those of the full flat gradients, at a cost that grows
    with the batch rather than with the tables.
    """
    names, params = zip(*tier.named_parameters(), strict=True)
    rows: list[torch.Tensor | None] = []
    for i, name in enumerate(names):
        if name not in tier.embeddings:
            rows.append(None)
            continue
        touched = [g[i].coalesce().indices()[0] for g in grads if g[i] is not None]
        rows.append(torch.cat(touched).unique() if touched else torch.empty(0, dtype=torch.long,
                                                                            device=params[i].device))
    flats = [torch.cat([_flat_part(g, p, r) for g, p, r in zip(gs, params, rows, strict=True)]) for gs in grads]
    return (*flats, rows)


def _flat_part(grad: torch.Tensor | None, param: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    if rows is None:
        return (grad if grad is not None else torch.zeros_like(param)).reshape(-1)
    block = torch.zeros(len(rows), param.shape[1], dtype=param.dtype, device=param.device)
    if grad is not None:
        grad = grad.coalesce()
        block[torch.searchsorted(rows, grad.indices()[0])] = grad.values()
    return block.reshape(-1)


def set_gradients(tier: Tier, flat: torch.Tensor, rows: list[torch.Tensor | None]) -> None:
    """Set ``tier``'s gradients from a vector laid out as :func:`path_gradients` lays them."""
    offset = 0
    for p, r in zip(tier.parameters(), rows, strict=True):
        if r is None:
            p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        else:
            size = len(r) * p.shape[1]
            values = flat[offset: offset + size].view(len(r), p.shape[1])
            p.grad = torch.sparse_coo_tensor(r[None], values, p.shape, check_invariants=False,
                                             is_coalesced=True) if len(r) else None  # r: unique, sorted
            offset += size


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else 0.0
