"""The side-by-side report of ``orders-journey`` (Markdown, printed and written as is)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orders_ops.journey import Journey

DB_VARS = ("DATABASE_URL", "PASSWORD", "DB_")


def _yes(flag: bool) -> str:
    return "**yes**" if flag else "no"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(title: str, intro: list[str], *columns: str) -> list[str]:
    """A section's heading, its introduction and the head of its table."""
    return [
        title,
        "",
        *intro,
        *([""] if intro else []),
        _row(*columns),
        _row(*["---"] * len(columns)),
    ]


def _login(step: dict[str, Any] | None) -> str:
    if step is None:
        return "(step did not run)"
    if not step.get("exists"):
        return f"`{step['login']}` (dropped since)"
    group = ", ".join(step["groups"]) or "no group role"
    expires = step["valid_until"]
    expires = expires if expires == "never expires" else f"valid until {expires}"
    return f"`{step['login']}` ({group}; {expires})"


def _sessions(by_login: dict[str, int]) -> str:
    names = ", ".join(f"`{name}`" for name in sorted(by_login)) if len(by_login) == 1 else ""
    logins = names or f"{len(by_login)} distinct logins"
    return f"{sum(by_login.values())} sessions as {logins}"


def _logins(bad: dict[str, Any], good: dict[str, Any]) -> list[str]:
    by_step = {s["activity"]: s for s in good["logins"]}
    lines = _table(
        "## (a) The database login that ran each step's SQL",
        [
            "From PostgreSQL itself: the audit column each step's row got from `current_user`",
            "(a column default or trigger), then that login in `pg_roles` / `pg_auth_members`.",
        ],
        "step",
        "INSECURE",
        "secured (Vault database role -> login)",
    )
    for step in bad["logins"]:
        other = by_step.pop(step["activity"], None)
        vault = f"{other['vault_role']} -> {_login(other)}" if other else "(step did not run)"
        lines.append(_row(step["activity"], _login(step), vault))
    for step in by_step.values():
        lines.append(_row(step["activity"], "(step did not run)", _login(step)))
    lines += [
        "",
        "Open sessions in `pg_stat_activity` while the workers ran: INSECURE "
        f"{_sessions(bad['sessions'])}; secured {_sessions(good['sessions'])}.",
        "",
    ]
    return lines


def _history(bad: dict[str, Any], good: dict[str, Any]) -> list[str]:
    hb, hg = bad["history"], good["history"]
    lines = [
        *_table(
            "## (b) What Temporal history holds (fetched without codec)",
            [],
            "",
            "INSECURE",
            "secured",
        ),
        _row("events", hb["events"], hg["events"]),
        _row(
            "payload encodings",
            ", ".join(f"{k} x{v}" for k, v in hb["payload_encodings"].items()),
            ", ".join(f"{k} x{v}" for k, v in hg["payload_encodings"].items()),
        ),
    ]
    for field, clear in hb["in_the_clear"].items():
        lines.append(_row(f"{field} in the clear", _yes(clear), _yes(hg["in_the_clear"][field])))
    view = good.get("codec_view", {})
    shown = {
        k: (v[:30] + "..." if isinstance(v, str) and len(v) > 40 else v)
        for k, v in view.get("order", {}).items()
    }
    lines += [
        "",
        f"What the codec server shows an authorised reader, {view.get('reader')}: the order,",
        "its sensitive fields still sealed:",
        "",
        "```json",
        json.dumps(shown, indent=1),
        "```",
        "",
        "Which identity opens which sealed field (each of the six services and the client "
        "tried, at Vault): "
        + "; ".join(f"{f}: {', '.join(who) or 'nobody'}" for f, who in good["who_opens"].items())
        + ".",
        "",
    ]
    return lines


def _env_cell(env: dict[str, Any]) -> str:
    if not env.get("running"):
        return "NOT RUNNING"
    held = env["held_in"]
    shown = [f"`{k}={env['variables'][k]}`" for k in held]
    db = [k for k in env["variables"] if any(m in k for m in DB_VARS) and k not in held]
    password = (
        f"**password present** in {', '.join(shown)}" if held else "no password, no static secret"
    )
    rest = f"; database settings: {', '.join(db)}" if db else ""
    where = f"pid {env['pid']}, user {env['user']}, {len(env['variables'])} variables"
    return f"{password}{rest} ({where})"


def _environments(bad: dict[str, Any], good: dict[str, Any]) -> list[str]:
    secured = {e["worker"]: e for e in good["environment"]}
    lines = _table(
        "## (c) What a worker's environment holds",
        ["Read from `/proc/<pid>/environ` of each running worker; values redacted."],
        "worker",
        "INSECURE",
        "secured",
    )
    for env in bad["environment"]:
        lines.append(_row(env["worker"], _env_cell(env), _env_cell(secured[env["worker"]])))
    return [*lines, ""]


def _reach(r: dict[str, Any]) -> str:
    return f"**yes** ({r['value']})" if r["allowed"] else f"denied ({r['error']})"


def _stolen(bad: dict[str, Any], good: dict[str, Any]) -> list[str]:
    sb, sg = bad["stolen"], good["stolen"]
    after = sg["after_revoke"]
    return [
        *_table(
            "## (d) What one stolen credential reaches",
            [],
            "",
            "INSECURE: the static password",
            f"secured: {sg['service']}'s Vault-issued login",
        ),
        _row("login", f"`{sb['role']['login']}`", f"`{sg['role']['login']}` ({sg['vault_role']})"),
        _row(
            "group roles",
            ", ".join(sb["role"]["groups"]) or "none: privileges on every table",
            ", ".join(sg["role"]["groups"]),
        ),
        _row(
            "expires",
            sb["role"]["valid_until"],
            f"lease TTL {sg['lease_ttl_s']} s; valid until {sg['role']['valid_until']}",
        ),
        _row("reads app.payments (rows)", _reach(sb["payments"]), _reach(sg["payments"])),
        _row(
            "reads customer emails (rows)",
            _reach(sb["customer_emails"]),
            _reach(sg["customer_emails"]),
        ),
        _row("this order's email", _reach(sb["this_order_email"]), _reach(sg["this_order_email"])),
        _row(
            "after revoking its lease",
            "no lease: works until someone changes the password everywhere",
            f"login refused ({after['login']}); role in pg_roles: {_yes(after['role']['exists'])}",
        ),
        "",
    ]


def render(j: Journey, base: Path, images: Path) -> str:
    """The report; image links relative to ``base`` (the folder the file is written to)."""
    bad, good = j.facts["insecure"], j.facts["secured"]
    ok = sum(1 for _, good_, _ in j.checks if good_)
    lines = [
        "# The before/after journey",
        "",
        "The same order run twice on the real local stack by `make journey` (`orders-journey`):",
        "first in the usual **INSECURE** setup (one static PostgreSQL login "
        "`orders_insecure_static`, its password in every worker's environment, no payload "
        "codec, no field sealing, six worker processes), then by the product's six workers.",
        "",
        f"Orders: `{bad['order_id']}` (INSECURE: {bad.get('status')}, "
        f"{' -> '.join(bad.get('path', []))}) and `{good['order_id']}` "
        f"(secured: {good.get('status')}, {' -> '.join(good.get('path', []))}).",
        "",
        *_logins(bad, good),
        *_history(bad, good),
        *_environments(bad, good),
        *_stolen(bad, good),
    ]
    if j.screenshots:
        lines += ["## The Temporal UI, same order", ""]
        for shot in j.screenshots:
            rel = os.path.relpath(Path(shot["file"]).resolve(), base.resolve())
            lines += [f"**{shot['title']}**", "", f"![{shot['title']}]({rel})", ""]
    lines += [f"## Verdict: {ok} of {len(j.checks)} checks ok", ""]
    lines += [
        f"- [{'ok' if good_ else 'FAILED'}] {name}" + (f" ({d})" if d else "")
        for name, good_, d in j.checks
    ]
    lines += [f"- note: {n}" for n in j.notes]
    return "\n".join(lines) + "\n"
