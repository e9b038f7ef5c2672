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


def pipeline_preset(preset: str, settings: list[str], pipeline: str, bench: str, example: str):
    """The preset named `preset` with the `--set` overrides `settings` applied and
    checked; ValueError when it does not run `pipeline` (naming `bench` and an
    `example` preset that does)."""
    from launch.flags import apply_setting, checked
    from launch.presets import get_preset

    cfg = get_preset(preset)
    for item in settings:
        cfg = apply_setting(cfg, item)
    cfg = checked(cfg)
    if cfg.pipeline != pipeline:
        raise ValueError(f"--preset={preset} runs the {cfg.pipeline!r} pipeline; {bench} "
                         f"needs a preset of the {pipeline!r} pipeline, such as {example}")
    return cfg
