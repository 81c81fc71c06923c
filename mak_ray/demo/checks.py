"""The demo's expected outcomes, the recommended selection method against random, checked on a run's report
numbers."""

from __future__ import annotations

from typing import Any

# the recommended methods, most recommended first: the label-free gated MAK when the run has it, else the paper's
RECOMMENDED = ("mak_gated", "mak")


def recommended_method(methods: list[str] | dict[str, Any]) -> str | None:
    """The method whose outcomes the demo states: the first of ``RECOMMENDED`` among ``methods``."""
    return next((m for m in RECOMMENDED if m in methods), None)


def demo_checks(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """The demo's expected outcomes, the recommended method against random, stated as they came out (true,
    false or unknown). Each check names the method (``method``) and holds its value under ``value`` and
    random's under ``random``."""
    sels, acc = numbers["selections"], numbers["accuracy"]
    method = recommended_method(sels)
    if method is None or "random" not in sels:
        return []

    def check(claim: str, value: float | None, rnd: float | None, higher: bool) -> dict[str, Any]:
        holds = None if value is None or rnd is None else (value > rnd if higher else value < rnd)
        return {"claim": claim, "method": method, "value": value, "random": rnd, "holds": holds}

    checks = [
        check(
            f"{method} picks a larger share of tail-class images than random",
            sels[method]["tail_share"],
            sels["random"]["tail_share"],
            True,
        ),
        check(
            f"{method} picks a smaller share of OOD images than random",
            sels[method]["ood_share"],
            sels["random"]["ood_share"],
            False,
        ),
    ]
    for setting, name in (("full", "linear"), ("few_shot", "few-shot")):
        value = acc.get(method, {}).get(setting, {}).get("few")
        rnd = acc.get("random", {}).get(setting, {}).get("few")
        checks.append(
            check(
                f"few-group {name} accuracy after retraining is higher with {method} than with random",
                value,
                rnd,
                True,
            )
        )
    return checks
