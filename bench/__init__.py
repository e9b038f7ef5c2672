"""Benchmarks: each module prints JSON lines (README, "Benchmarks")."""


def named(flag: str, value: str, choices) -> list[str]:
    """The comma-separated names given to --flag, each checked against `choices` before
    anything is measured; an unknown one exits with an error naming it."""
    names = value.split(",")
    for name in names:
        if name not in choices:
            raise SystemExit(f"error: --{flag} names unknown {name!r}; "
                             f"choose from {', '.join(choices)}")
    return names
