"""`retrain` subcommands: rollout.

``retrain rollout MODEL [--json]``: the rollout in progress (or the latest one):
phase, stage and share, the figures so far, and what the next step needs.
``retrain promote MODEL --confirm``: pass the manual gate (rollout.manual_gate)
of the current step; taken at once when its criteria are met, else as soon as
they are.
"""

from __future__ import annotations

from typing import Any

from retrain.cli.commands.common import _ctx, _out, _publish_outbox, with_json

__all__ = ["register", "cmd_rollout", "cmd_promote", "render_rollout"]


def _when(t: Any) -> str:
    return f"{t:%Y-%m-%d %H:%M}" if t is not None else "-"


def render_rollout(d: dict[str, Any]) -> str:
    """The text view of :func:`retrain.steps.rollout_step.describe_rollout`."""
    stages = " -> ".join(f"{s:g}%" for s in d["stages_pct"])
    if d["phase"] == "shadow":
        where = "shadow (scored on live traffic, serves nothing)"
    elif d["phase"] == "canary":
        where = f"canary stage {d['stage']} of {len(d['stages_pct'])}: {d['share_pct']:g}% of traffic"
    else:
        where = f"ended: {d['phase']}" + (f" at {_when(d['finished_at'])}" if d["finished_at"] else "")
    lines = [
        f"{d['model']}: candidate {d['candidate']} vs production {d['production']} (run {d['run_id'][:8]})",
        f"  {where}",
        f"  stages {stages}; started {_when(d['started_at'])}, this step since {_when(d['stage_started_at'])}",
    ]
    f = d.get("figures") or {}
    if d["phase"] == "shadow" or "rows" in f:
        lines.append(f"  shadow: {f.get('metric', '?')} {_num(f.get('candidate'))} vs {_num(f.get('production'))} "
                     f"({_pct(f.get('relative'))}) on {f.get('rows', 0)} paired rows; only-candidate-right "
                     f"{f.get('candidate_only', 0)} vs only-production-right {f.get('production_only', 0)}; "
                     f"McNemar p {_num(f.get('p_better'))} (alpha {_num(f.get('alpha'))})")
    elif "canary_n" in f:
        lines.append(f"  canary: {f.get('metric', '?')} {_num(f.get('canary'))} on {f.get('canary_n')} labelled vs "
                     f"production {_num(f.get('production'))} on {f.get('production_n')} ({_pct(f.get('relative'))}); "
                     f"p(worse) {_num(f.get('p_worse'))}; rollback at -{f.get('rollback_degradation', 0):.0%}")
    if d["phase"] in ("shadow", "canary"):
        lines.append(f"  next: {d['next']}")
        for need in d["needs"]:
            lines.append(f"    needs {need}")
        if d.get("gate"):
            lines.append(f"  gate: {d['gate']}" + (f" by {d['gate_by']}" if d.get("gate_by") else ""))
    elif d.get("outcome"):
        lines.append(f"  outcome: {d['outcome']}")
    for h in d.get("history") or []:
        hf = h.get("figures") or {}
        what = "shadow" if h.get("phase") == "shadow" else f"{h.get('share_pct', 0):g}%"
        n = hf.get("rows", hf.get("canary_n", ""))
        lines.append(f"  - {what:<7} {h.get('started_at', '')[:16]} -> {h.get('ended_at', '')[:16]}  "
                     f"{h.get('action')}  n={n} rel={_pct(hf.get('relative'))}")
    return "\n".join(lines)


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else "n/a"


def _pct(x: Any) -> str:
    return f"{x:+.1%}" if isinstance(x, (int, float)) else "n/a"


def cmd_rollout(args) -> int:
    from retrain.steps.rollout_step import describe_rollout

    ctx = _ctx()
    data = describe_rollout(ctx, args.model)
    if data is None:
        _out(args, None, f"{args.model} has had no shadow or staged rollout yet")
        return 0
    _out(args, data, render_rollout(data))
    return 0


def cmd_promote(args) -> int:
    from retrain.steps.rollout_step import confirm_rollout, describe_rollout

    ctx = _ctx()
    res = confirm_rollout(ctx, args.model, actor=args.actor, reason=args.reason or "")
    _publish_outbox(ctx)
    if res.action in ("wait", "hold", "gate"):
        d = describe_rollout(ctx, args.model)
        needs = "; ".join(n for n in (d["needs"] if d else []) if not n.startswith("confirmation"))
        print(f"{args.model}: confirmed by {args.actor}; the step is taken as soon as it is due"
              + (f" (still needs {needs})" if needs else ""))
    else:
        print(f"{args.model}: confirmed by {args.actor}: {res.action} -> {res.phase}"
              + (f" at {res.share_pct:g}%" if res.phase == "canary" else "") + f" ({res.detail})")
    return 0


def register(sub) -> None:
    """Add this area's subcommands to the parser."""
    ro = with_json(sub.add_parser("rollout",
                                  help="a model's shadow or staged rollout: stage, figures, what the next step needs"))
    ro.add_argument("model", help="a configured model")
    ro.set_defaults(fn=cmd_rollout)

    pr = sub.add_parser("promote", help="confirm the next rollout step when rollout.manual_gate is set")
    pr.add_argument("model", help="a configured model")
    pr.add_argument("--confirm", action="store_true", required=True,
                    help="required: confirms the step (a person's decision, audited)")
    pr.add_argument("--actor", default="operator", help="who confirms (audited)")
    pr.add_argument("--reason", default="", help="why (audited)")
    pr.set_defaults(fn=cmd_promote)
