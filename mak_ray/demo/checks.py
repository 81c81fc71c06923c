"""The demo's expected outcomes, MAK against random, checked on a run's report numbers."""

from __future__ import annotations

from typing import Any


def demo_checks(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """The demo's expected outcomes, MAK against random, stated as they came out (true, false or unknown)."""
    sels, acc = numbers["selections"], numbers["accuracy"]
    if "mak" not in sels or "random" not in sels:
        return []

    def check(claim: str, mak: float | None, rnd: float | None, higher: bool) -> dict[str, Any]:
        holds = None if mak is None or rnd is None else (mak > rnd if higher else mak < rnd)
        return {"claim": claim, "mak": mak, "random": rnd, "holds": holds}

    checks = [
        check(
            "MAK picks a larger share of tail-class images than random",
            sels["mak"]["tail_share"],
            sels["random"]["tail_share"],
            True,
        ),
        check(
            "MAK picks a smaller share of OOD images than random",
            sels["mak"]["ood_share"],
            sels["random"]["ood_share"],
            False,
        ),
    ]
    for setting, name in (("full", "linear"), ("few_shot", "few-shot")):
        mak = acc.get("mak", {}).get(setting, {}).get("few")
        rnd = acc.get("random", {}).get(setting, {}).get("few")
        checks.append(
            check(
                f"few-group {name} accuracy after retraining is higher with MAK than with random",
                mak,
                rnd,
                True,
            )
        )
    return checks
