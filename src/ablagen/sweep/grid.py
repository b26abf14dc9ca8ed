"""The sweep's grid as data: one :class:`Point` per (arm, sigma, learning rate).

Each point is one generated script (its learning rate and noise baked into the
config block, so ``python SCRIPT --seed S`` reruns it); the orchestrator runs it
once per seed. Ids and file names are derived here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

SWEEP_KIND = "sweep"  # manifest entry kind of a sweep script


def _num(value: float) -> str:
    return format(value, "g")


@dataclass(frozen=True)
class Point:
    arm: str
    sigma: float  # 0.0 for plain
    lr: float

    @property
    def series(self) -> str:
        """The plot line this point belongs to: ``plain`` or ``perturbed sigma=0.01``."""
        return series_label(self.arm, self.sigma)

    @property
    def variant_id(self) -> str:
        if self.arm == "plain":
            return f"plain:lr={_num(self.lr)}"
        return f"{self.arm}:sigma={_num(self.sigma)}:lr={_num(self.lr)}"

    @property
    def script(self) -> str:
        token = self.variant_id.replace(":", "__").replace("=", "_")
        return token.replace(".", "p").replace("-", "m") + ".py"

    def extra(self) -> dict[str, object]:
        """What the manifest records of the point (read back by the analysis)."""
        return {"arm": self.arm, "sigma": self.sigma, "lr": self.lr}


def series_label(arm: str, sigma: float) -> str:
    return arm if arm == "plain" else f"{arm} sigma={_num(sigma)}"


def grid(series: list[tuple[str, float]], lrs: tuple[float, ...]) -> list[Point]:
    return [Point(arm, sigma, lr) for arm, sigma in series for lr in sorted(lrs)]
