"""`twinv2 experiment`: one command from data to report (config.py: settings and presets; run.py: the stages)."""
