"""The mtp-edge command (cli), the main job (demo), the quality report (evaluate) and how their reports are printed."""
