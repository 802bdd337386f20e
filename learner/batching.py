"""Turn sample groups into one flat training batch (items of all groups, with a group index).

Examples
--------
>>> from streams.contract.schemas import SampleGroup, SampleItem
>>> g = SampleGroup("g", "r", "u", 0, 0, [SampleItem("a", "exp_pos", 1, 0, 0, "video"),
...                                       SampleItem("b", "gn", 0, None, None, "news")])
>>> b = Batch.from_groups([g])
>>> b.source.tolist(), b.label.tolist(), b.group.tolist()
([0, 4], [1.0, 0.0], [0, 0])
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from feature_store.featurize import featurize_items, featurize_user
from learner.models import Tensors, item_tensors, user_tensors
from streams.contract.schemas import SOURCES, SampleGroup

SOURCE_CODE = {s: i for i, s in enumerate(SOURCES)}
EASY = (SOURCE_CODE["gn"], SOURCE_CODE["prn"])
HARD = (SOURCE_CODE["exp_neg"], SOURCE_CODE["rn"])


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    users: Tensors
    items: Tensors
    group: torch.Tensor  # (N,) row of each item's request
    source: torch.Tensor  # (N,) index into SOURCES
    label: torch.Tensor  # (N,) float 0/1
    rank_pos: np.ndarray  # (N,) ranking-stage position, -1 where the item never reached ranking
    n_groups: int
    touched: dict[str, np.ndarray]  # hashed ids seen: {"item": ..., "user": ...}

    @classmethod
    def from_groups(cls, groups: list[SampleGroup]) -> Batch:
        users = [featurize_user(g.user_id, g.user_features) for g in groups]
        items = [it for g in groups for it in g.items]
        feats = featurize_items([i.item_id for i in items], [i.content_type for i in items],
                                [i.features for i in items])
        group = np.repeat(np.arange(len(groups)), [len(g.items) for g in groups])
        user_t = user_tensors(users)
        hist = user_t["history"].numpy()
        return cls(
            users=user_t,
            items=item_tensors(feats),
            group=torch.as_tensor(group, dtype=torch.long),
            source=torch.as_tensor([SOURCE_CODE[i.source] for i in items], dtype=torch.long),
            label=torch.as_tensor([float(i.label) for i in items]),
            rank_pos=np.array([-1 if i.rank_pos is None else i.rank_pos for i in items], dtype=np.int64),
            n_groups=len(groups),
            touched={"item": np.union1d(feats.item_idx, hist[hist > 0]),
                     "user": np.unique(user_t["user_idx"].numpy())},
        )

    def mask(self, codes: tuple[int, ...]) -> torch.Tensor:
        return torch.isin(self.source, torch.as_tensor(codes, device=self.source.device))

    def to(self, device: torch.device) -> Batch:
        """The batch with its tensors on ``device`` (copied asynchronously from pinned memory on CUDA)."""
        if self.group.device == device:
            return self
        cuda = device.type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            return (t.pin_memory() if cuda else t).to(device, non_blocking=cuda)

        return dataclasses.replace(
            self, users={k: move(v) for k, v in self.users.items()}, items={k: move(v) for k, v in self.items.items()},
            group=move(self.group), source=move(self.source), label=move(self.label),
        )
