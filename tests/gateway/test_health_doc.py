"""docs/health.md renders the health transition table; this keeps it in step with the code."""

from __future__ import annotations

from pathlib import Path

from sipedge.gateway.health import TRANSITIONS, Health, Rule, Signal, Streak

DOC = Path(__file__).parents[2] / "docs" / "health.md"


def _cell(state: Health, rule: Rule) -> str:
    parts = []
    if rule.hold:
        parts.append("hold-down")
    if rule.streak is not None:
        threshold = "up_after" if rule.streak is Streak.SUCCESS else "down_after"
        count = "successes" if rule.streak is Streak.SUCCESS else "failures"
        if rule.target is None:
            parts.append(f"count {count}")
        else:
            parts.append(f"→ {rule.target.name} at {threshold} {count}")
    elif rule.target is not None and rule.target is not state:
        parts.append(f"→ {rule.target.name}")
    return ", ".join(parts) or "—"


def render_table() -> str:
    """The markdown table of ``TRANSITIONS``: one row per state, one column per signal."""
    lines = [
        "| state | " + " | ".join(s.name for s in Signal) + " |",
        "|---|" + "---|" * len(Signal),
    ]
    for state in Health:
        cells = [_cell(state, TRANSITIONS[(state, sig)]) for sig in Signal]
        lines.append(f"| {state.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def test_doc_renders_the_current_table() -> None:
    text = DOC.read_text("utf-8")
    table = render_table()
    assert table in text, "docs/health.md is stale; paste:\n" + table


if __name__ == "__main__":  # python tests/gateway/test_health_doc.py → the table to paste
    print(render_table(), end="")
