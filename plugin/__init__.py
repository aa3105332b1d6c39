"""dreamcam.plugin: the app (sources, sinks, runner, control, OBS bridge, tray, CLI)."""
