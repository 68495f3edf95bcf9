"""lib/ensemble.py: reward models read as one (Coste et al. 2024), re-exported by common.py.

A directory with ensemble.json, {"members": [their directories, relative to it], "combine":
"mean", "min" or "uwo", and optionally "sd": each member's sd on π_SFT's samples}, is read by
common.load_reward_model as a RewardEnsemble, whose reward common.reward combines from its
members'. RLOO, GRPO and DPO's judge read it as r_φ; PPO cannot (its critic starts from one
reward model).
"""
import os

import torch

from lib.process import die
from lib.results import read_json

COMBINES = ("mean", "min", "uwo")


def ensemble_reward(rewards, combine, lam=0.5):
    """Coste et al. (2024): the members' rewards (M, B) → one (B,): their mean, their minimum
    (worst-case optimisation, WCO: a response is only as good as the least convinced member), or
    uncertainty-weighted (UWO): mean − λ·(unbiased) variance over the members."""
    if combine == "uwo":
        return rewards.mean(0) - lam * rewards.var(0)
    return rewards.mean(0) if combine == "mean" else rewards.min(0).values


class RewardEnsemble(torch.nn.Module):
    """Reward models read as one (common.reward combines them, each member divided by its sd)."""

    def __init__(self, members, combine, sd=None):
        super().__init__()
        self.members, self.combine = torch.nn.ModuleList(members), combine
        self.sd = torch.ones(len(members)) if sd is None else torch.tensor(sd, dtype=torch.float)


def read_ensemble(rm_dir):
    """rm_dir's ensemble.json, checked: (its members' directories, combine, sds), or None where
    rm_dir holds none; a wrong combine or sd stops with one line."""
    path = os.path.join(rm_dir, "ensemble.json")
    if not os.path.exists(path):
        return None
    spec = read_json(path, members=list, combine=str)
    sd = spec.get("sd", [1.0] * len(spec["members"]))
    if spec["combine"] not in COMBINES:
        die(f"{path}: combine is {spec.get('combine')!r}; give mean, min or uwo")
    if len(sd) != len(spec["members"]) or not all(isinstance(v, (int, float)) and v > 0
                                                  for v in sd):
        die(f"{path}: sd must give one positive number per member; rewrite it")
    return [os.path.join(rm_dir, m) for m in spec["members"]], spec["combine"], sd
